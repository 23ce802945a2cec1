"""Run a config's evaluators on a checkpoint.

    python -m vfm_jax.evaluate --config=configs/<file>.py[:variant] --checkpoint=DIR

DIR is a training workdir, its `checkpoints/` folder, one step folder, or a
converted-weights folder (a checkpoint with the `params` item only). The
params are restored onto this machine's mesh, whatever mesh wrote them.
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from vfm_jax import checkpointing, cli, sharding
from vfm_jax.evaluators import build_evaluators, run_evaluators
from vfm_jax.input import make_source
from vfm_jax.tasks import build_task


def restore_variables(config, path, mesh):
    """The model variables of `config` from `path`, sharded over `mesh` by the logical rules.

    Entries of the checkpoint the evaluated model does not have (training-only
    heads, a frozen teacher) are ignored; every entry it needs must be there.
    """
    task = build_task(config)
    # An evaluation-only config (total_steps = 0, e.g. zero-shot retrieval) has no training
    # split; its first evaluator's split gives the input shapes.
    split = "train" if config.total_steps else next(iter(config.evals.values())).split
    example = sharding.zeros_like_batch(
        sharding.example_batch(make_source(config.data, split), task.input_keys)
    )
    abstract, shardings = sharding.variables_layout(task, example, mesh)
    target = checkpointing.abstract_with_shardings(abstract, shardings)
    return task, checkpointing.load_variables(path, target, partial=True)


def evaluate(config, path, devices=None) -> dict[str, float]:
    mesh = sharding.make_mesh(config.mesh, devices)
    task, variables = restore_variables(config, path, mesh)
    return run_evaluators(build_evaluators(config, task, mesh), variables, mesh)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if flags.FLAGS.checkpoint is None:
        raise app.UsageError("--checkpoint is required")
    cli.initialize_distributed()
    cli.setup_logging()
    config = flags.FLAGS.config
    results = evaluate(config, flags.FLAGS.checkpoint)
    cli.print_results(config.name, dict(sorted(results.items())))


if __name__ == "__main__":
    # Flags are defined here, not at import, so that train and evaluate can be imported together.
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_string("checkpoint", None, "Checkpoint directory to evaluate.")
    cli.define_distributed_flags()
    flags.mark_flag_as_required("config")
    app.run(main)
