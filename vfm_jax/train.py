"""The one train loop: `python -m vfm_jax.train --config=configs/<file>.py[:variant] --workdir=DIR`.

`train_and_evaluate` reads top-down: config checks -> mesh -> the program
(`build_program`: optimizer, sharded state layout from the params' logical
axes, train step) -> workdir, writers, data and the state (restored or
created sharded) -> compiled step -> loop with metrics, evals, checkpoints and
SIGTERM handling. Nothing is written to the workdir before the whole program
has been built from shapes, so a bad config fails first.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from clu import metric_writers
from etils import epath
from jax.experimental import multihost_utils
import ml_collections
from ml_collections import config_flags

from data.pipeline import SourceMix, train_iter
from vfm_jax import checkpointing, cli, optim, sharding
from vfm_jax.evaluators import build_evaluators, run_evaluators
from vfm_jax.input import make_source
from vfm_jax.tasks import build_task


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    model_state: Any  # variable collections other than params (e.g. batch_stats)
    opt_state: Any
    rng: jax.Array


# --------------------------------------------------------------------------- checkpoint metadata

def metadata(config, mesh, step: int) -> dict:
    return {
        "config_name": config.name,
        "task": config.task.name,
        "model": config.model.to_dict(),
        "scan_layers": bool(config.model.get("scan_layers", True)),
        "scan_layers_by_module": scan_layout(config),
        "param_dtype": "float32",
        "compute_dtype": config.model.get("dtype", "float32"),
        "step": int(step),
        "mesh": dict(zip(mesh.axis_names, map(int, mesh.devices.shape))),
        "process_count": jax.process_count(),
        "jax_version": jax.__version__,
    }


def scan_layout(config) -> dict[str, bool]:
    """Every `scan_layers` under `config.model` and `config.task`, by path (`model.vision`, `task.teacher`).

    The top-level `scan_layers` alone cannot say how a composite model (a
    video encoder and a text encoder, a frozen teacher) lays out each part.
    """
    found = {}

    def walk(node, path):
        for key, value in node.items():
            if key == "scan_layers":
                found[path] = bool(value)
            elif isinstance(value, ml_collections.ConfigDict):
                walk(value, f"{path}.{key}")

    walk(config.model, "model")
    walk(config.task, "task")
    return found


# --------------------------------------------------------------------------- SIGTERM

class _StopRequest:
    """SIGTERM (a preemption notice) while training: the loop saves at the current step and returns.

    One process: a Python handler sets `requested`; the previous handler is put
    back on exit (signals only reach the main thread). Several processes must
    all save the same step, whichever of them got the signal: JAX's preemption
    service (started by `jax.distributed.initialize`) catches SIGTERM, tells
    every process through the coordination service, and they agree on the
    first step all can still reach (`reached_preemption_sync_point`). A Python
    handler would replace the service's, so none is installed then.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def reached(self, step: int) -> bool:
        """Whether to save `step` and stop; every process calls this at the same steps.

        JAX's sync manager picks one past the largest step the processes last
        reported (Orbax reports the same absolute steps when it saves). The
        loop reports its start step before compiling: a notice that came
        before any report would put the save at step 1, which a resumed run
        never reaches.
        """
        if not self.requested and multihost_utils.reached_preemption_sync_point(step):
            self.requested = True
        return self.requested

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True


# --------------------------------------------------------------------------- the program

@dataclasses.dataclass(frozen=True)
class Program:
    """What the loop runs: the state layout and the functions that create and step it."""

    create_state: Callable[[jax.Array], TrainState]
    train_step: Callable[[TrainState, dict], tuple[TrainState, dict]]
    state_shardings: TrainState
    abstract_state: TrainState  # ShapeDtypeStructs carrying the shardings
    abstract_batch: dict


def build_program(config, task, mesh, train_source) -> Program:
    """Optimizer, sharded state layout (from the params' logical axes) and the train step."""
    repl = sharding.replicated(mesh)
    abstract_batch = abstract_train_batch(train_source, task, config.batch_size, mesh)
    example = sharding.zeros_like_batch(sharding.example_batch(train_source, task.input_keys))
    abstract_vars, var_shardings = sharding.variables_layout(task, example, mesh)
    tx, lr_schedule = optim.make_optimizer(
        config.optim, config.total_steps, abstract_vars["params"],
        layer_ids_fn=getattr(task.model, "layer_ids", None),
        num_layers=getattr(task.model, "num_layers", None),
    )
    opt_shardings = optax.tree_utils.tree_map_params(
        tx, lambda _, s: s, jax.eval_shape(tx.init, abstract_vars["params"]),
        var_shardings["params"], transform_non_params=lambda _: repl,
    )
    state_shardings = TrainState(
        step=repl,
        params=var_shardings["params"],
        model_state={k: v for k, v in var_shardings.items() if k != "params"},
        opt_state=opt_shardings,
        rng=repl,
    )

    def create_state(rng):
        params_rng, train_rng = jax.random.split(rng)
        variables = dict(nn.unbox(task.init(params_rng, example)))
        params = variables.pop("params")
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
            opt_state=tx.init(params), rng=train_rng,
        )

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            return task.loss_fn(params, state.model_state, batch, rng)

        (_, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if hasattr(task, "constrain_params"):  # projected step, e.g. ViCLIP's temperature clamp
            params = task.constrain_params(params)
        metrics = {**metrics, "grad_norm": optax.global_norm(grads), "lr": lr_schedule(state.step)}
        new_state = state.replace(
            step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state
        )
        return new_state, metrics

    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        abstract_state = checkpointing.abstract_with_shardings(
            jax.eval_shape(create_state, jax.random.PRNGKey(0)), state_shardings
        )
    return Program(create_state, train_step, state_shardings, abstract_state, abstract_batch)


def abstract_train_batch(source, task, batch_size: int, mesh) -> dict:
    """ShapeDtypeStructs (with the batch sharding) of one global batch of `source`."""
    batch_sharding = sharding.batch_sharding(mesh)
    return checkpointing.abstract_with_shardings(
        sharding.example_batch(source, task.input_keys, batch_size),
        {k: batch_sharding for k in task.input_keys},
    )


def flops_per_train_step(config, train_source, abstract_batches: dict[str, dict]) -> dict[str, float]:
    """XLA's FLOP count of one global train step on each of `abstract_batches`.

    Taken from the unrolled program (every `scan_layers` set False) before
    compilation: XLA's cost analysis counts a scanned loop's body once, which
    would understate a scanned stack by its depth. Attention is XLA's
    (`attention_impl` set 'xla': the analysis cannot see into a fused
    kernel's custom call) and the program is lowered for one CPU device: the
    count of the global step does not depend on the mesh, and GPU plugins
    (PJRT C API) have no cost analysis of a lowered program.
    """
    unrolled = config.copy_and_resolve_references()

    def count_as_xla(node):
        for key, value in node.items():
            if key == "scan_layers":
                node[key] = False
            elif key == "attention_impl":
                node[key] = "xla"
            elif isinstance(value, ml_collections.ConfigDict):
                count_as_xla(value)

    with unrolled.unlocked():
        count_as_xla(unrolled)
    host = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices("cpu")[:1])
    program = build_program(unrolled, build_task(unrolled), host, train_source)
    flops = {}
    with jax.set_mesh(host), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        for name, batch in abstract_batches.items():
            batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
            cost = jax.jit(program.train_step).lower(program.abstract_state, batch).cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            flops[name] = float((cost or {}).get("flops", 0.0))
    return flops


MAIN_SOURCE = "data"  # config.data's name among the train sources


def extra_train_sources(config) -> dict[str, tuple[Any, int]]:
    """`config.extra_train_data` -> {name: (train source, global batch size)}.

    Further training corpora whose whole batches alternate with
    `config.data`'s, as UMT's MetaLoader alternates image and video batches
    (`data.pipeline.SourceMix`); each entry is a data config plus its
    `batch_size`. Evaluation uses `config.data` only.
    """
    sources = {}
    for name, cfg in (config.get("extra_train_data") or {}).items():
        if name == MAIN_SOURCE:
            raise ValueError(f"extra_train_data cannot be named {MAIN_SOURCE!r}")
        if "batch_size" not in cfg:
            raise ValueError(f"extra_train_data.{name} needs a batch_size")
        data = ml_collections.ConfigDict({k: v for k, v in cfg.items() if k != "batch_size"})
        sources[name] = (make_source(data, "train"), cfg.batch_size)
    return sources


def init_params_from(state: TrainState, cfg, abstract_state: TrainState) -> TrainState:
    """Start from another checkpoint's weights: the param subtrees named in `cfg.subtrees`.

    How a model fine-tunes from pre-training (e.g. `patch_embed` and `encoder`
    of a converted UMT stage-1 student; the head stays freshly initialised).
    A subtree is a '/'-separated path (`vision_encoder/encoder`), the same in
    both trees. Shapes must match exactly, except that `cfg.class_rows` (if set)
    first selects output classes of the `cfg.class_subtree` (default 'head')
    along its leaves' last axis: 'first:N' (UMT's K710 head cut to K400, whose
    classes come first in the K710 list) or a JSON file of source class
    indices, one per target class (UniFormerV2's `label_mixto{N}.json`).
    """
    loaded = checkpointing.load_variables(cfg.checkpoint)["params"]
    params = flax.traverse_util.flatten_dict(state.params, sep="/")
    rows = class_rows(cfg.get("class_rows", ""))
    class_subtree = cfg.get("class_subtree") or "head"
    if rows is not None and class_subtree not in cfg.subtrees:
        raise ValueError(f"init_from.class_rows is set but class_subtree {class_subtree!r} is not among {list(cfg.subtrees)}")
    for key in cfg.subtrees:
        source, target = _subtree(loaded, key, cfg.checkpoint), _subtree(abstract_state.params, key, "the model")
        if key == class_subtree and rows is not None:
            source = jax.tree.map(lambda x: _take_classes(x, rows, cfg.checkpoint), source)
        got, want = jax.tree.map(lambda x: x.shape, source), jax.tree.map(lambda x: x.shape, target)
        if got != want:
            raise ValueError(f"init_from: params[{key!r}] of {cfg.checkpoint} has shapes {got}, the model {want}")
        values = jax.tree.map(lambda x, t: jax.device_put(jnp.asarray(x, t.dtype), t.sharding), source, target)
        flat = flax.traverse_util.flatten_dict(values, sep="/") if isinstance(values, Mapping) else {"": values}
        params.update({f"{key}/{k}".rstrip("/"): v for k, v in flat.items()})
    logging.info("initialised params %s from %s", list(cfg.subtrees), cfg.checkpoint)
    return state.replace(params=flax.traverse_util.unflatten_dict(params, sep="/"))


def class_rows(spec: str) -> np.ndarray | None:
    """`init_from.class_rows` -> source class indices: '' (none), 'first:N', or a JSON list file."""
    if not spec:
        return None
    if spec.startswith("first:"):
        count = int(spec.removeprefix("first:"))
        if count < 1:
            raise ValueError(f"init_from.class_rows={spec!r}: N must be >= 1")
        return np.arange(count)
    path = epath.Path(spec)
    if not path.exists():
        raise ValueError(f"init_from.class_rows={spec!r} is neither 'first:N' nor an existing JSON file")
    rows = json.loads(path.read_text())
    if isinstance(rows, dict):  # {"target index": source index}
        rows = [rows[k] for k in sorted(rows, key=int)]
    rows = np.asarray(rows)
    if rows.ndim != 1 or rows.dtype.kind not in "iu" or (rows < 0).any():
        raise ValueError(f"init_from.class_rows file {spec} must hold a list of non-negative class indices")
    return rows


def _take_classes(x, rows: np.ndarray, where: str):
    if rows.max() >= x.shape[-1]:
        raise ValueError(f"init_from.class_rows index {rows.max()} is out of range for {where}'s {x.shape[-1]} classes")
    return np.take(np.asarray(x), rows, axis=-1)


def _subtree(tree, path: str, where: str):
    node = tree
    for part in path.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            have = sorted(node) if isinstance(node, Mapping) else []
            raise ValueError(f"init_from: {where} has no params[{path!r}] ({part!r} not among {have})")
        node = node[part]
    return node


def load_pretrained_part(state: TrainState, abstract_state: TrainState, destination: str, path: str) -> TrainState:
    """A task's converted weights: `destination` is a collection (a frozen `teacher`) or `params/<subtree>`.

    `path` is a folder written by `python -m vfm_jax.convert`, or
    `folder:name` for the top-level subtree `name` of its params (a tower of
    a whole model, e.g. `/ckpt/clip_b16:vision_encoder`). Every weight it
    holds must exist in the destination with the same shape; destination
    weights it lacks keep their initialisation and are logged (e.g. the
    cross-attention of BERT fusion layers started from HF `bert-base-uncased`).
    """
    collection, _, subtree = destination.partition("/")
    in_params = collection == "params"
    current = state.params[subtree] if in_params else state.model_state[collection]
    target = flax.traverse_util.flatten_dict(
        abstract_state.params[subtree] if in_params else abstract_state.model_state[collection], sep="/"
    )
    folder, name = checkpointing.split_subtree(path)
    params = checkpointing.load_variables(folder)["params"]
    if name and name not in params:
        raise ValueError(f"{folder} has no params subtree {name!r}; it has {sorted(params)}")
    loaded = flax.traverse_util.flatten_dict(params[name] if name else params, sep="/")
    unknown = sorted(k for k in loaded if k not in target or loaded[k].shape != target[k].shape)
    if unknown:
        shown = [f"{k} {loaded[k].shape} vs {target[k].shape if k in target else 'absent'}" for k in unknown[:10]]
        raise ValueError(f"{path} does not fit {destination}: {shown}")
    flat = flax.traverse_util.flatten_dict(current, sep="/")
    flat.update({k: jax.device_put(jnp.asarray(v, target[k].dtype), target[k].sharding) for k, v in loaded.items()})
    merged = flax.traverse_util.unflatten_dict(flat, sep="/")
    if in_params:
        state = state.replace(params={**state.params, subtree: merged})
    else:
        state = state.replace(model_state={**state.model_state, collection: merged})
    kept = sorted(set(target) - set(loaded))
    logging.info("initialised %s from %s%s", destination, path,
                 f"; {len(kept)} weights keep their initialisation: {kept[:20]}" if kept else "")
    return state


# --------------------------------------------------------------------------- loop

def train_and_evaluate(config, workdir: str, devices=None) -> dict[str, float]:
    """Train `config` in `workdir`, resuming from its checkpoints if any.

    Returns the last logged metrics (`train_*`, throughput, `data_failed_reads`) and eval results.
    """
    # ---- Config checks: everything below raises on a bad key or value before a file is written.
    task = build_task(config)
    mesh = sharding.make_mesh(config.mesh, devices)
    evaluators = build_evaluators(config, task, mesh)
    missing = [r for r in config.report if not any(r.startswith(f"{n}_") for n in evaluators)]
    if missing:
        raise ValueError(f"config.report names {missing}, which no evaluator in config.evals produces")
    if config.get("init_from") and config.init_from.checkpoint and not epath.Path(config.init_from.checkpoint).exists():
        raise FileNotFoundError(f"init_from.checkpoint {config.init_from.checkpoint} does not exist")
    train_source = make_source(config.data, "train")
    sources = {MAIN_SOURCE: (train_source, config.batch_size), **extra_train_sources(config)}
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    for name, (_, batch_size) in sources.items():
        if batch_size % batch_shards or batch_size % jax.process_count():
            raise ValueError(
                f"{'batch_size' if name == MAIN_SOURCE else f'extra_train_data.{name}.batch_size'}={batch_size} "
                f"must split evenly over data*fsdp={batch_shards} devices and {jax.process_count()} processes"
            )
    program = build_program(config, task, mesh, train_source)
    state_shardings, abstract_state = program.state_shardings, program.abstract_state
    batch_sharding, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    abstract_batches = {MAIN_SOURCE: program.abstract_batch}
    abstract_batches.update({
        name: abstract_train_batch(source, task, batch_size, mesh)
        for name, (source, batch_size) in sources.items() if name != MAIN_SOURCE
    })
    flops_per_step = flops_per_train_step(config, train_source, abstract_batches)

    # ---- Workdir, writers, data, and the state: restored, or created sharded.
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    writer.write_hparams({k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str))})
    block, blocks = sharding.process_batch_block(mesh)
    iterators = {
        name: train_iter(
            source, global_batch_size=batch_size, seed=config.seed + i, keys=task.input_keys,
            num_workers=config.data.num_workers, process_index=block, process_count=blocks,
        )
        for i, (name, (source, batch_size)) in enumerate(sources.items())
    }
    if len(sources) == 1:
        data_iter = iterators[MAIN_SOURCE]
    else:
        data_iter = SourceMix(
            iterators, {name: max(len(source) // size, 1) for name, (source, size) in sources.items()}, config.seed,
        )
    ckpt = checkpointing.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        restored = ckpt.restore_latest(
            {"params": abstract_state.params, **abstract_state.model_state},
            {"step": abstract_state.step, "opt_state": abstract_state.opt_state, "rng": abstract_state.rng},
            data_iter,
        )
        if restored is None:
            state = jax.jit(program.create_state, out_shardings=state_shardings)(
                jax.random.PRNGKey(config.seed)
            )
            if config.get("init_from") and config.init_from.checkpoint:
                state = init_params_from(state, config.init_from, abstract_state)
            for destination, path in getattr(task, "pretrained", {}).items():
                state = load_pretrained_part(state, abstract_state, destination, path)
        else:
            variables, train = restored
            variables = dict(variables)
            state = TrainState(
                step=train["step"], params=variables.pop("params"), model_state=variables,
                opt_state=train["opt_state"], rng=train["rng"],
            )
        start_step = int(jax.device_get(state.step))
        # Tell JAX's preemption sync manager where this run starts before the minutes of compiling
        # (see `_StopRequest.reached`); it cannot ask for a save at a step that has not run yet.
        multihost_utils.reached_preemption_sync_point(start_step)
        step_fn = jax.jit(program.train_step, out_shardings=(state_shardings, repl), donate_argnums=0)
        compiled_steps = {name: step_fn.lower(abstract_state, batch).compile() for name, batch in abstract_batches.items()}

    def save(step):
        ckpt.save(
            step,
            variables={"params": state.params, **state.model_state},
            train={"step": state.step, "opt_state": state.opt_state, "rng": state.rng},
            data_iter=data_iter,
            config=config.to_dict(),
            metadata=metadata(config, mesh, step),
        )

    def evaluate(step) -> dict[str, float]:
        variables = {"params": state.params, **state.model_state}
        results = run_evaluators(evaluators, variables, mesh)
        writer.write_scalars(step, results)
        return results

    # ---- The loop.
    step = start_step
    logging.info(
        "training %s from step %d to %d on mesh %s; FLOPs/step %s",
        config.name, step, config.total_steps, dict(mesh.shape),
        {name: f"{flops:.3g}" for name, flops in flops_per_step.items()},
    )
    results: dict[str, float] = {}
    logged: dict[str, float] = {}
    last_step, last_time, pause = step, time.perf_counter(), 0.0
    window_examples, window_flops = 0, 0.0  # since the last log, over whichever sources ran
    failed_reads = 0  # unreadable media replaced by the loader since this process started
    with _StopRequest() as stop:
        while step < config.total_steps:
            name, local = next(data_iter) if len(sources) > 1 else (MAIN_SOURCE, next(data_iter))
            batch = {
                k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(local[k]))
                for k in task.input_keys
            }
            state, metrics = compiled_steps[name](state, batch)
            failed_reads += int(np.sum(local.get("failed_reads", 0)))
            window_examples += sources[name][1]
            window_flops += flops_per_step[name]
            step += 1
            final = step == config.total_steps
            if step % config.log_every == 0 or final:
                train_metrics = jax.device_get(metrics)  # waits for this step: dispatch is asynchronous
                seconds = max(time.perf_counter() - last_time - pause, 1e-9)
                steps_per_sec = (step - last_step) / seconds
                logged = {
                    **{f"train_{k}": float(v) for k, v in train_metrics.items()},
                    "steps_per_sec": steps_per_sec,
                    "examples_per_sec": window_examples / seconds,
                    "eta_sec": (config.total_steps - step) / max(steps_per_sec, 1e-9),
                    "flops_per_sec": window_flops / seconds,
                    "data_failed_reads": failed_reads,
                }
                writer.write_scalars(step, logged)
                last_step, last_time, pause = step, time.perf_counter(), 0.0
                window_examples, window_flops = 0, 0.0
            # Evals and checkpoints are timed apart so that throughput counts training only.
            io_start = time.perf_counter()
            if step % config.eval_every == 0 or final:
                results = evaluate(step)
            preempted = stop.reached(step)
            if step % config.checkpoint_every == 0 or final or preempted:
                save(step)
            pause += time.perf_counter() - io_start
            if preempted:
                logging.warning("SIGTERM: saving the checkpoint of step %d and exiting", step)
                break
    if not results and not stop.requested:
        results = evaluate(step)  # a finished run started again still reports its numbers
    ckpt.wait()
    ckpt.close()
    writer.flush()
    writer.close()
    return {**logged, **results}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if flags.FLAGS.workdir is None:
        raise app.UsageError("--workdir is required")
    cli.setup_logging()
    cli.initialize_distributed()
    config = flags.FLAGS.config
    results = train_and_evaluate(config, flags.FLAGS.workdir)
    if config.report and all(k in results for k in config.report):  # not after a SIGTERM stop
        cli.print_results(config.name, {k: results[k] for k in config.report})


if __name__ == "__main__":
    # Flags are defined here, not at import, so that train and evaluate can be imported together.
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints and summaries.")
    cli.define_distributed_flags()
    flags.mark_flag_as_required("config")
    app.run(main)
