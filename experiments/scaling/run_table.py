"""Regenerate the pod-plan table of experiments/scaling/README.md, one `aot_plan` compile per row.

    python -m experiments.scaling.run_table [--only=umt] [--force] [--table_only]

Each row is one `python -m experiments.scaling.aot_plan ...` command (kept in
its JSON as `command`), run one at a time in a subprocess, writing
`experiments/results/aot_plans/<model>_<slice>_<strategy>.json`; a row whose
JSON exists is kept unless `--force`, so an interrupted run resumes. The
README table between its markers is then rewritten from all the JSONs.

All three slices have 256 chips (v5p-512 counts TensorCores). Compute runs in
bf16 (`model.dtype`; the configs default to float32 for CPU parity) and
attention is XLA's (`attention_impl=xla`) except in the `flash` rows, which
plan the Mosaic flash-attention kernels (`attention_impl=auto`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "experiments", "results", "aot_plans")
README = os.path.join(ROOT, "experiments", "scaling", "README.md")
BEGIN, END = "<!-- aot-table:begin -->", "<!-- aot-table:end -->"

# name -> (config, global batch, overrides)
MODELS = {
    "umt_l16_stage1": ("configs/umt/stage1.py:model=L16", 2048, (
        "--config.model.dtype=bfloat16", "--config.task.teacher.dtype=bfloat16",
        "--config.model.attention_impl=xla", "--config.task.teacher.attention_impl=xla",
    )),
    "viclip_l14": ("configs/viclip/pretrain.py", 16384, (
        "--config.model.dtype=bfloat16", "--config.model.attention_impl=xla",
    )),
    "uniformerv2_l14": ("configs/uniformerv2/finetune.py:exp=k710_l14_f8x224", 512, (
        "--config.model.dtype=bfloat16", "--config.model.attention_impl=xla",
    )),
}
SLICES = ("v5e-256", "v5p-512", "v6e-256")
MESHES = {"dp": "data:-1", "fsdp": "fsdp:-1", "fsdp_tp4": "fsdp:-1,tensor:4", "fsdp_tp2": "fsdp:-1,tensor:2"}
GRID_MESHES = ("dp", "fsdp", "fsdp_tp4")
# Rows off the grid: (model, slice, strategy, global batch, file-name label, more overrides).
EXTRA = (
    ("umt_l16_stage1", "v5p-128", "dp", 2048, "", ()),  # a quarter of the chips
    ("viclip_l14", "v5p-512", "dp", 32768, "b32768", ()),  # the official batch
    ("viclip_l14", "v5e-256", "dp", 32768, "b32768", ()),
    ("uniformerv2_l14", "v5e-256", "dp", 512, "remat", ("--config.model.remat_policy=full",)),
    ("uniformerv2_l14", "v5e-256", "fsdp_tp2", 512, "", ()),  # its 710 classes do not split 4 ways
    # The Mosaic flash-attention kernels instead of XLA's attention, at the recommended slice.
    ("umt_l16_stage1", "v5p-512", "dp", 2048, "flash",
     ("--config.model.attention_impl=auto", "--config.task.teacher.attention_impl=auto")),
    ("viclip_l14", "v5p-512", "dp", 16384, "flash", ("--config.model.attention_impl=auto",)),
    ("uniformerv2_l14", "v5p-512", "dp", 512, "flash", ("--config.model.attention_impl=auto",)),
    ("umt_l16_stage1", "v5p-512", "dp", 2048, "flash_unrolled",
     ("--config.model.attention_impl=auto", "--config.task.teacher.attention_impl=auto",
      "--config.model.scan_layers=False", "--config.task.teacher.scan_layers=False")),
    ("viclip_l14", "v5p-512", "dp", 16384, "flash_unrolled",
     ("--config.model.attention_impl=auto", "--config.model.scan_layers=False")),
    # libtpu's full HBM count (it counts a scanned body once), at ~3x the compile time.
    *(("umt_l16_stage1", slice_, "dp", 2048, "unrolled",
       ("--config.model.scan_layers=False", "--config.task.teacher.scan_layers=False")) for slice_ in SLICES),
    *(("viclip_l14", slice_, "dp", 16384, "unrolled", ("--config.model.scan_layers=False",)) for slice_ in SLICES),
)

_ONLY = flags.DEFINE_string("only", "", "Run only rows whose file name contains this.")
_FORCE = flags.DEFINE_bool("force", False, "Recompile rows whose JSON exists.")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "Only rewrite the README table from the JSONs.")


def rows():
    """(row name, JSON path, aot_plan arguments) of every row: the grid, then EXTRA."""
    grid = [(model, slice_, strategy, MODELS[model][1], "", ())
            for model in MODELS for slice_ in SLICES for strategy in GRID_MESHES]
    for model, slice_, strategy, batch, label, more in grid + list(EXTRA):
        config, _, overrides = MODELS[model]
        out = os.path.join(RESULTS, "_".join(filter(None, (model, slice_, strategy, label))) + ".json")
        by_flag = {o.split("=")[0]: o for o in (*overrides, *more)}  # a row's own setting replaces the model's
        yield f"{model} {label}".strip(), out, [
            "-m", "experiments.scaling.aot_plan", f"--config={config}", f"--topology={slice_}",
            f"--mesh={MESHES[strategy]}", f"--global_batch={batch}", *by_flag.values(),
            f"--out={os.path.relpath(out, ROOT)}",
        ]


def run(out: str, args: list[str]):
    print("python", " ".join(args), flush=True)
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if proc.returncode:  # kept as a row: a plan that cannot be built is a result too
        with open(out, "w") as f:
            json.dump({"command": "python " + " ".join(args), "error": proc.stderr[-3000:]}, f, indent=2)
    print(proc.stdout, proc.stderr[-2000:] if proc.returncode else "", flush=True)


def _gib(x):
    return f"{x / 2**30:.1f}"


def table() -> str:
    lines = [
        "| model | global batch | slice | strategy (data, fsdp, tensor) | HBM/chip GiB (fits?) | "
        "PFLOPs/step | compute at peak, ms | HBM ≥ ms | all-gather / reduce-scatter / all-reduce GiB per chip | "
        "ICI floor ms | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, path, _ in rows():
        if not os.path.exists(path):
            continue
        with open(path) as f:
            r = json.load(f)
        if "error" in r:
            raised = [line for line in r["error"].splitlines() if "Error" in line] or ["see the JSON"]
            reason = ("..." + raised[-1][-150:]).replace("|", "/")
            lines.append(f"| {model} | | {r['command'].split('--topology=')[1].split()[0]} | "
                         f"{r['command'].split('--mesh=')[1].split()[0]} | failed: {reason} | | | | | | |")
            continue
        mem, st, mesh = r["memory_per_chip"], r["step_time"], r["mesh"]
        strategy = f"{r['strategy']} ({mesh['data']}, {mesh['fsdp']}, {mesh['tensor']})"
        head = f"| {model} | {r['global_batch']} | {r['topology']['asked']} | {strategy} | "
        flops = f"{r['flops']['per_step'] / 1e15:.2f} | {st['roofline_compute_s'] * 1e3:.0f}"
        if "libtpu_error" in mem:
            lines.append(head + f"does not fit (libtpu) | {flops} | | | | {r['compile_seconds']:.0f} |")
            continue
        moved = " / ".join(_gib(r["collectives"]["by_kind"][k]["bytes_per_step"])
                           for k in ("all-gather", "reduce-scatter", "all-reduce"))
        lines.append(
            head + f"{_gib(mem['total_bytes'])} ({'yes' if mem['fits'] else 'NO'}) | {flops} | "
            f"{st['roofline_hbm_s'] * 1e3:.0f} | {moved} | {st['ici_s'] * 1e3:.0f} | {r['compile_seconds']:.0f} |"
        )
    return "\n".join(lines)


def write_table():
    with open(README) as f:
        text = f.read()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    with open(README, "w") as f:
        f.write(text[:start] + "\n" + table() + "\n" + text[end:])


def main(argv):
    del argv
    os.makedirs(RESULTS, exist_ok=True)
    if not _TABLE_ONLY.value:
        for _, out, args in rows():
            if _ONLY.value in os.path.basename(out) and (_FORCE.value or not os.path.exists(out)):
                run(out, args)
                write_table()  # partial tables survive an interrupted run
    write_table()


if __name__ == "__main__":
    app.run(main)
