"""Ahead-of-time plan of a config's train step on a TPU slice, compiled on this (CPU) machine.

    python -m experiments.scaling.aot_plan --config=configs/umt/stage1.py:model=L16 \
      --topology=v5p-512 [--mesh=data:N,fsdp:M,tensor:K] [--global_batch=B] \
      [--config.model.dtype=bfloat16 ...] [--out=plan.json]

Before paying for a pod: does the config fit, and how fast should it run?
The REAL train step (`vfm_jax.train.build_program`: the config's task,
optimizer, logical-axis shardings and mesh) is compiled by libtpu for a
compile-only topology (`jax.experimental.topologies`), from shapes alone: the
state comes from `jax.eval_shape`, no array is allocated and no data is read
(the batch shapes come from the data config, see `ShapeSource`).

Printed and written as JSON (experiments/scaling/README.md says what each
number is worth):
- memory: libtpu's per-chip `memory_analysis()` (arguments, outputs, aliased
  by donation, temps, generated code) against the chip's HBM (`CHIPS`); libtpu
  refuses a program over its usable HBM, which is a plan too (`fits: false`).
- FLOPs per step: `vfm_jax.train.flops_per_train_step`, the number the train
  loop logs (XLA's count of the unrolled program, rematted blocks' recompute
  included). libtpu's own count of the compiled program is kept too; it
  counts a scanned layer stack's body once.
- step time: libtpu's `optimal_seconds` where it is a time (positive, for an
  unrolled program), and always the roofline max(FLOPs / (chips x peak bf16),
  libtpu's HBM bytes / bandwidth), whose HBM term is a lower bound for a
  scanned program; the implied MFU of each; a rough ICI floor.
- collectives: every all-gather / reduce-scatter / all-reduce / all-to-all /
  collective-permute of the compiled HLO, static count and the count executed
  per step (ops inside a scanned stack run once per layer), with their bytes.

`attention_impl='auto'` resolves from the platform of the mesh in context,
so the plan compiles the Mosaic flash kernel a TPU would run (per shard,
inside `shard_map`); `attention_impl=xla` plans XLA's unfused attention.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from collections import defaultdict

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags
from jax.experimental import topologies
from jax.sharding import NamedSharding
from ml_collections import config_flags

from vfm_jax import cli, sharding, train
from vfm_jax.input import make_source
from vfm_jax.tasks import build_task

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip, from the Cloud TPU system-architecture pages (cloud.google.com/tpu/docs/v5e,
    /v5p, /v6e): peak bf16 FLOP/s, HBM capacity and bandwidth, ICI bandwidth.

    The pages give HBM in "GB"; the runtime's limits are GiB-sized (libtpu's out-of-memory
    message gives a v5e "15.75G" of available HBM), so the capacities here are GiB.
    """

    generation: str
    device_kind: str  # what libtpu's devices call it
    cores_per_chip: int  # the N of "v5p-N" counts TensorCores
    hbm_bytes: int
    peak_bf16_flops: float
    hbm_bytes_per_s: float
    ici_bytes_per_s: float  # bidirectional, per chip
    gcloud_name: str  # accelerator-type prefix, e.g. v5litepod-16
    slice_shapes: dict  # chips -> ICI shape of the standard slices


_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_SHAPES_3D = {
    4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
    512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16",
}
CHIPS = {
    "v5e": Chip("v5e", "TPU v5 lite", 1, 16 * GiB, 197e12, 819e9, 400e9, "v5litepod", _SHAPES_2D),
    "v5p": Chip("v5p", "TPU v5", 2, 95 * GiB, 459e12, 2765e9, 600e9, "v5p", _SHAPES_3D),
    "v6e": Chip("v6e", "TPU v6 lite", 1, 32 * GiB, 918e12, 1638e9, 800e9, "v6e", _SHAPES_2D),
}

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")


# --------------------------------------------------------------------------- topology

@dataclasses.dataclass(frozen=True)
class Slice:
    name: str  # as asked: v5p-512 or v5p:4x8x8
    chip: Chip
    topology: str  # libtpu's name, v5p:4x8x8
    chips: int


def parse_topology(name: str) -> Slice:
    """'v5e-256' / 'v5litepod-256' / 'v5p-512' (TensorCores) / 'v6e-256', or libtpu's 'v5e:16x16'."""
    match = re.fullmatch(r"(v\w+?)(?:-(\d+)|:(\d+(?:x\d+)+))", name)
    generation = match and {"v5litepod": "v5e"}.get(match.group(1), match.group(1))
    if not match or generation not in CHIPS:
        raise ValueError(f"--topology={name!r}: expected e.g. v5e-256, v5p-512, v6e-256 or v5e:2x2 ({sorted(CHIPS)})")
    chip = CHIPS[generation]
    if match.group(3):
        shape = match.group(3)
        return Slice(name, chip, f"{generation}:{shape}", math.prod(map(int, shape.split("x"))))
    cores = int(match.group(2))
    chips = cores // chip.cores_per_chip
    if cores % chip.cores_per_chip or chips not in chip.slice_shapes:
        raise ValueError(
            f"--topology={name!r}: {generation}-N takes N in "
            f"{sorted(c * chip.cores_per_chip for c in chip.slice_shapes)}; or name the shape, e.g. {generation}:2x2"
        )
    return Slice(name, chip, f"{generation}:{chip.slice_shapes[chips]}", chips)


def tpu_devices(slice_: Slice) -> list:
    """Compile-only devices of the slice (libtpu; no TPU needed)."""
    # Compiling needs no chip: let libtpu load while another process holds its lock, and name
    # the accelerator and workers, which silences libtpu's warnings about the missing TPU VM.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    cores = slice_.chips * slice_.chip.cores_per_chip
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{slice_.chip.gcloud_name}-{cores}")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    devices = topologies.get_topology_desc(platform="tpu", topology_name=slice_.topology).devices
    if devices[0].device_kind != slice_.chip.device_kind:
        raise ValueError(
            f"{slice_.topology} gave {devices[0].device_kind!r} devices, expected {slice_.chip.device_kind!r}"
        )
    return list(devices)


def parse_mesh(text: str) -> dict[str, int]:
    """'data:4,fsdp:64' -> {'data': 4, 'fsdp': 64, 'tensor': 1} (unnamed axes are 1; -1 takes the rest)."""
    sizes = dict.fromkeys(sharding.MESH_AXES, 1)
    for item in filter(None, text.split(",")):
        axis, _, size = item.partition(":")
        if axis not in sizes or not re.fullmatch(r"-?\d+", size):
            raise ValueError(f"--mesh={text!r}: expected axis:size pairs over {sharding.MESH_AXES}")
        sizes[axis] = int(size)
    return sizes


def strategy(mesh_sizes: dict[str, int]) -> str:
    """DP / FSDP / FSDP+TP / DP+FSDP... as sharding.py names the strategies."""
    parts = [name for axis, name in (("data", "DP"), ("fsdp", "FSDP"), ("tensor", "TP")) if mesh_sizes[axis] > 1]
    return "+".join(parts) or "single chip"


# --------------------------------------------------------------------------- shapes of the data

class ShapeSource:
    """One training example of `config.data` as zeros, shaped as `data.sources` loads it; reads no file.

    `moving_shapes` is generated, so its own source is used; the file-backed
    datasets give `video` (frames, size, size, 3) uint8 plus their targets
    (`label`; or `text_ids` int32 / `text_mask` bool of `max_text_length`).
    """

    def __init__(self, cfg):
        example = {
            "video": np.zeros((cfg.frames, cfg.size, cfg.size, 3), np.uint8),
            "index": np.int32(0),
            "failed_reads": np.int32(0),
        }
        if cfg.name == "video_classification":
            example["label"] = np.int32(0)
        elif cfg.name == "video_text":
            example["text_ids"] = np.zeros((cfg.max_text_length,), np.int32)
            example["text_mask"] = np.arange(cfg.max_text_length) < 2
        else:
            raise ValueError(f"config.data.name={cfg.name!r} has no shape source")
        self.example = example

    def __len__(self):
        return 1

    def __getitem__(self, index):
        return self.example


def train_shapes(cfg):
    return make_source(cfg, "train") if cfg.name == "moving_shapes" else ShapeSource(cfg)


# --------------------------------------------------------------------------- the compiled step

def on_mesh(tree, mesh):
    """ShapeDtypeStructs with the same PartitionSpecs on another mesh, refitted to its axis sizes
    (`sharding.fitted_spec`: a dimension an axis does not divide is replicated along it)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=NamedSharding(mesh, sharding.fitted_spec(x.sharding.spec, x.shape, mesh))
        ),
        tree,
    )


@dataclasses.dataclass
class CompiledStep:
    program: train.Program
    mesh: jax.sharding.Mesh
    flops: float  # per global step
    compiled: jax.stages.Compiled | None  # None when libtpu found it does not fit
    error: str  # libtpu's out-of-memory message, if so
    seconds: float  # compile time


def compile_train_step(config, devices, mesh_sizes) -> CompiledStep:
    """The config's train step compiled for `devices`, as `vfm_jax.train` compiles it.

    `build_program` makes concrete arrays (a PRNG key) under its mesh, which
    compile-only devices cannot hold; it runs on a one-CPU mesh with the
    same axis names (a layout depends on the names only), and its shardings
    move to the TPU mesh for lowering. libtpu refuses to compile a program
    larger than the chip's HBM: that is a plan too (`error`).
    """
    shape = sharding.mesh_shape(mesh_sizes, len(devices))
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh {dict(zip(sharding.MESH_AXES, shape))} does not use all {len(devices)} chips")
    mesh = sharding.make_mesh(mesh_sizes, devices)
    host = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices("cpu")[:1])
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.batch_size % batch_shards:
        raise ValueError(f"global batch {config.batch_size} must split evenly over data*fsdp={batch_shards} chips")

    task = build_task(config)
    source = train_shapes(config.data)
    program = train.build_program(config, task, host, source)
    flops = train.flops_per_train_step(config, source, {"data": program.abstract_batch})["data"]
    abstract_state = on_mesh(program.abstract_state, mesh)
    state_shardings = jax.tree.map(lambda x: x.sharding, abstract_state)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        step = jax.jit(program.train_step, out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
        lowered = step.lower(abstract_state, on_mesh(program.abstract_batch, mesh))
        start = time.perf_counter()
        try:
            compiled, error = lowered.compile(), ""
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            compiled, error = None, str(e).strip()
    return CompiledStep(program, mesh, flops, compiled, error, time.perf_counter() - start)


# --------------------------------------------------------------------------- collectives in the HLO

_DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
    "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1,
}
_ARRAY = re.compile(r"\b([a-z]\w*)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
_CALLEES = re.compile(r"\b(?:body|condition|to_apply|calls)=%([\w.\-]+)|branch_computations=\{([^}]*)\}")


def _split_instruction(rhs: str) -> tuple[str, str, list[str]]:
    """'(f32[2]{0}, bf16[3]{0}) all-reduce(%a, %b), ...' -> (result type, 'all-reduce', ['a', 'b'])."""
    if rhs.startswith("("):
        depth = 0
        for end, ch in enumerate(rhs):
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                break
        type_text, rest = rhs[: end + 1], rhs[end + 1:].lstrip()
    else:
        type_text, _, rest = rhs.partition(" ")
    opcode, _, args = rest.partition("(")
    return type_text, opcode, re.findall(r"%([\w.\-]+)", args.split(")", 1)[0])


def _bytes(type_text: str) -> int:
    return sum(
        _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
        for dtype, dims in _ARRAY.findall(type_text) if dtype in _DTYPE_BYTES
    )


def _trip_count(condition: list[str]) -> int | None:
    """A scan's loop condition is `counter < N`: N is its one s32 constant."""
    constants = [int(m) for line in condition for m in re.findall(r"= s32\[\]\S* constant\((\d+)\)", line)]
    return constants[0] if len(constants) == 1 else None


def collectives(hlo: str) -> dict:
    """Per kind: ops in the compiled HLO text, ops executed per step, the bytes they move, the largest.

    A while body (a scanned layer stack) runs trip-count times; every other
    called computation (fusions, conditional branches) as often as its caller.
    An op's bytes are those of the whole array it works on: the gathered result
    of an all-gather, the operand of a reduce-scatter, the array of the others.
    libtpu emits collectives as synchronous ops (async ones sit inside fusions).
    """
    computations: dict[str, list[tuple[str, str, list[str], str]]] = {}
    types: dict[str, str] = {}
    entry, current = None, None
    for line in hlo.splitlines():
        header = _COMPUTATION.match(line)
        instruction = _INSTRUCTION.match(line)
        if header:
            current = computations.setdefault(header.group(1), [])
            entry = header.group(1) if line.startswith("ENTRY") else entry
        elif instruction and current is not None:
            type_text, opcode, operands = _split_instruction(instruction.group(2))
            types[instruction.group(1)] = type_text
            current.append((type_text, opcode, operands, line))

    runs: dict[str, int] = defaultdict(int)
    unknown_trips = []

    def visit(name: str, times: int):
        runs[name] += times
        for _, opcode, _, line in computations.get(name, []):
            for callee, branches in _CALLEES.findall(line):
                for callee in [callee] if callee else re.findall(r"%([\w.\-]+)", branches):
                    trips = 1
                    if opcode == "while" and f"body=%{callee}" in line:
                        condition = re.search(r"condition=%([\w.\-]+)", line).group(1)
                        trips = _trip_count([x[3] for x in computations.get(condition, [])])
                        if trips is None:
                            unknown_trips.append(callee)
                            trips = 1
                    visit(callee, times * trips)

    visit(entry, 1)
    found = {kind: {"ops_in_hlo": 0, "ops_per_step": 0, "bytes_per_step": 0, "largest": []} for kind in COLLECTIVES}
    for name, instructions in computations.items():
        for type_text, opcode, operands, line in instructions:
            if opcode not in found:
                continue
            size = max(_bytes(type_text), sum(_bytes(types.get(o, "")) for o in operands))
            where = re.search(r'op_name="([^"]*)"', line)
            entry_ = found[opcode]
            entry_["ops_in_hlo"] += 1
            entry_["ops_per_step"] += runs[name]
            entry_["bytes_per_step"] += runs[name] * size
            entry_["largest"].append({"bytes_per_step": runs[name] * size, "runs": runs[name],
                                      "op_name": where.group(1) if where else ""})
    for entry_ in found.values():
        entry_["largest"] = sorted(entry_["largest"], key=lambda x: -x["bytes_per_step"])[:3]
    return {"by_kind": found, "loops_with_unknown_trip_count": unknown_trips}


# --------------------------------------------------------------------------- the plan

def config_values(config, key: str) -> list:
    """Every value of `key` in the config's tree (a model's and its teacher's `scan_layers`, ...)."""
    def walk(node):
        for k, v in node.items():
            if k == key:
                yield v
            elif isinstance(v, dict):
                yield from walk(v)

    return list(walk(config.to_dict()))


def plan(config, slice_: Slice, devices, mesh_sizes) -> dict:
    step = compile_train_step(config, devices, mesh_sizes)
    chip, chips = slice_.chip, slice_.chips
    result = {
        "config": config.name,
        "topology": {"asked": slice_.name, "libtpu": slice_.topology, "chips": chips, "device_kind": chip.device_kind},
        "mesh": dict(step.mesh.shape),
        "strategy": strategy(dict(step.mesh.shape)),
        "global_batch": config.batch_size,
        "batch_per_chip": config.batch_size / chips,
        "params": int(sum(x.size for x in jax.tree.leaves(step.program.abstract_state.params))),
        "scan_layers": any(config_values(config, "scan_layers")),
        "attention_impl": sorted(set(config_values(config, "attention_impl"))),
        "compile_seconds": round(step.seconds, 1),
        "chip": {k: v for k, v in dataclasses.asdict(chip).items() if k != "slice_shapes"},
        "jax_version": jax.__version__,
    }
    compute_s = step.flops / (chips * chip.peak_bf16_flops)
    result["flops"] = {
        "per_step": step.flops,
        "per_chip": step.flops / chips,
        "source": "vfm_jax.train.flops_per_train_step: XLA's count of the unrolled global step "
                  "(what the train loop logs; rematted blocks' recompute included)",
    }
    if step.compiled is None:
        result["memory_per_chip"] = {"fits": False, "libtpu_error": step.error}
        result["step_time"] = {"roofline_compute_s": compute_s}
        return result

    memory = step.compiled.memory_analysis()
    used = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes)
    result["memory_per_chip"] = {
        "arguments_bytes": memory.argument_size_in_bytes,
        "outputs_bytes": memory.output_size_in_bytes,
        "aliased_bytes": memory.alias_size_in_bytes,
        "temps_bytes": memory.temp_size_in_bytes,
        "generated_code_bytes": memory.generated_code_size_in_bytes,
        "total_bytes": used,
        "hbm_bytes": chip.hbm_bytes,
        "fraction_of_hbm": used / chip.hbm_bytes,
        "fits": used <= chip.hbm_bytes,
        "formula": "arguments + outputs - aliased (the donated state) + temps + generated code",
    }

    cost = step.compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    once = " (a scanned stack's body counted once)" if result["scan_layers"] else ""
    result["flops"].update(
        libtpu_per_chip=float(cost.get("flops", 0.0)), libtpu_note="libtpu's cost analysis of the compiled step" + once,
    )
    hlo = step.compiled.as_text()
    # Mosaic kernels in the step (the flash-attention kernels under attention_impl='auto' or 'pallas').
    result["mosaic_kernels_in_hlo"] = hlo.count('custom_call_target="tpu_custom_call"')
    found = collectives(hlo)
    result["collectives"] = found
    hbm_traffic = float(cost.get("bytes accessed", 0.0))
    hbm_s = hbm_traffic / chip.hbm_bytes_per_s
    roofline_s = max(compute_s, hbm_s)
    xla_s = cost.get("optimal_seconds")
    usable = xla_s is not None and xla_s > 0 and not result["scan_layers"]
    ici_bytes = sum((2 if kind == "all-reduce" else 1) * v["bytes_per_step"] for kind, v in found["by_kind"].items())
    result["step_time"] = {
        "libtpu_optimal_seconds": xla_s,
        "libtpu_estimate_s": xla_s if usable else None,
        "libtpu_note": (
            "libtpu's cost analysis gives no time" if xla_s is None
            else f"libtpu's optimal_seconds is {xla_s:.4g}: not a time" if xla_s <= 0
            else "libtpu's optimal_seconds" + (" counts a scanned stack's body once: not the step" if once else "")
        ),
        "roofline_s": roofline_s,
        "roofline_compute_s": compute_s,
        "roofline_hbm_s": hbm_s,
        "roofline_note": "max(FLOPs per step / (chips x peak bf16), libtpu's HBM bytes per chip / HBM bandwidth)"
                         + (": the HBM term" + once + " is a lower bound" if once else "")
                         + "; collectives assumed hidden under compute",
        "mfu_at_roofline": compute_s / roofline_s,
        "mfu_at_libtpu_estimate": compute_s / xla_s if usable else None,
        "libtpu_hbm_bytes_per_chip": hbm_traffic,
        "ici_s": ici_bytes / chip.ici_bytes_per_s,
        "ici_note": "collective bytes per chip (all-reduce twice) / the chip's bidirectional ICI bandwidth: "
                    "a rough floor for the communication, not part of the roofline",
    }
    return result


# --------------------------------------------------------------------------- CLI

def summary(result: dict) -> str:
    mem, flops, time_ = result["memory_per_chip"], result["flops"], result["step_time"]
    topology = result["topology"]
    lines = [
        f"{result['config']} on {topology['asked']} ({topology['libtpu']}, {topology['chips']} chips), "
        f"mesh {result['mesh']} = {result['strategy']}, global batch {result['global_batch']}, "
        f"{result['params'] / 1e6:.1f}M params, compiled in {result['compile_seconds']} s",
        f"FLOPs per step: {flops['per_step']:.4g} ({flops['per_chip']:.4g} per chip); "
        f"at peak bf16: {time_['roofline_compute_s'] * 1e3:.1f} ms",
    ]
    if "libtpu_error" in mem:
        return "\n".join(lines + [f"DOES NOT FIT: {mem['libtpu_error']}"])
    libtpu = (f"{time_['libtpu_estimate_s'] * 1e3:.1f} ms, MFU {time_['mfu_at_libtpu_estimate']:.0%}"
              if time_["libtpu_estimate_s"] else time_["libtpu_note"])
    moved = [f"{kind} {v['ops_per_step']} ({v['bytes_per_step'] / GiB:.2f} GiB)"
             for kind, v in result["collectives"]["by_kind"].items() if v["ops_in_hlo"]]
    return "\n".join(lines + [
        f"HBM per chip: {mem['total_bytes'] / GiB:.2f} of {mem['hbm_bytes'] / GiB:.0f} GiB: "
        f"{'fits' if mem['fits'] else 'DOES NOT FIT'} (arguments {mem['arguments_bytes'] / GiB:.2f}, "
        f"outputs {mem['outputs_bytes'] / GiB:.2f}, aliased {mem['aliased_bytes'] / GiB:.2f}, "
        f"temps {mem['temps_bytes'] / GiB:.2f}, code {mem['generated_code_bytes'] / GiB:.3f})",
        f"step time: roofline {time_['roofline_s'] * 1e3:.1f} ms (HBM {time_['roofline_hbm_s'] * 1e3:.1f}, "
        f"MFU <= {time_['mfu_at_roofline']:.0%}); libtpu: {libtpu}",
        f"collectives per step: {', '.join(moved) or 'none'}; ICI floor {time_['ici_s'] * 1e3:.1f} ms",
    ])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.setup_logging()
    config = flags.FLAGS.config
    with config.unlocked():
        if flags.FLAGS.mesh:
            config.mesh.update(parse_mesh(flags.FLAGS.mesh))
        if flags.FLAGS.global_batch:
            config.batch_size = flags.FLAGS.global_batch
    slice_ = parse_topology(flags.FLAGS.topology)
    result = {"command": " ".join(["python -m experiments.scaling.aot_plan", *sys.argv[1:]]),
              **plan(config, slice_, tpu_devices(slice_), dict(config.mesh))}
    print(summary(result), flush=True)
    if flags.FLAGS.out:
        os.makedirs(os.path.dirname(flags.FLAGS.out) or ".", exist_ok=True)
        with open(flags.FLAGS.out, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    jax.config.update("jax_platforms", "cpu")  # the host compiles; no device runs anything
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_string("topology", None, "TPU slice: v5e-256, v5p-512, v6e-256, or libtpu's v5e:2x2.")
    flags.DEFINE_string("mesh", "", "Mesh sizes data:N,fsdp:M,tensor:K (default: the config's).")
    flags.DEFINE_integer("global_batch", 0, "Global batch (default: the config's batch_size).")
    flags.DEFINE_string("out", "", "JSON file to write.")
    flags.mark_flags_as_required(["config", "topology"])
    app.run(main)
