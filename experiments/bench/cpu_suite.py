"""The figures a CPU can give: JAX vs PyTorch step time, compile time vs depth, remat memory.

    python -m experiments.bench.cpu_suite --out experiments/results/cpu_suite_<machine>.json
    python -m experiments.bench.cpu_suite --out /tmp/cpu_suite_smoke.json --smoke   # tiny, ~30 s

One JSON, rewritten after every case (errors recorded per case, as in
`gpu_suite`, whose model steps, harness and PyTorch subprocess it reuses).
Sections:

1. `train`: training-step time in fp32 of the same scaled-down models in JAX
   (this repo's UMT stage-1 student + frozen CLIP teacher, and ViCLIP) and
   PyTorch (`experiments.bench.torch_models`: transformers `VideoMAEModel` +
   `CLIPVisionModel`, and `CLIPVisionModel` + `CLIPTextModelWithProjection`),
   identical shapes and batch (`UMT_CPU`, `VICLIP_CPU`: B/16's layout at half
   width and depth and 112 px), AdamW, random weights and inputs.
2. `compile`: trace (`lower`) and XLA compile seconds of the UMT stage-1
   train step at depths 2, 4, 8, 16 (student and teacher), with
   `scan_layers` on and off: scanned stacks compile in about constant time.
3. `memory`: XLA's `compiled.memory_analysis()` of the UMT stage-1 train step
   per `remat_policy` (`vfm_jax.layers.transformer.REMAT_POLICIES`): temp
   bytes are the activation memory a step needs beyond params and optimizer
   state.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import time

import jax
import jax.numpy as jnp

from experiments.bench import gpu_suite as suite
from experiments.bench import report

UMT_CPU = dict(
    batch=8, frames=8, image_size=112, mask_ratio=0.8, return_layers=3,
    student=dict(width=384, depth=6, num_heads=6, patch_size=16),
    teacher=dict(width=384, depth=6, num_heads=6, patch_size=16, output_dim=256),
)
VICLIP_CPU = dict(
    batch=16, frames=8, image_size=112, drop_ratio=0.9, embed_dim=256,
    vision=dict(width=384, depth=6, num_heads=6, patch_size=16),
    text=dict(width=256, depth=6, num_heads=4, context=32, vocab_size=49408),
)
DEPTHS = (2, 4, 8, 16)
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")

SMOKE_DEPTHS = (2,)  # UMT_TINY's depth: its scanned step is the memory section's remat 'none'
SMOKE_REMAT = ("none", "full")


def with_depth(spec: dict, depth: int) -> dict:
    """A UMT spec with student and teacher `depth` blocks deep (returning min(K, depth) layers)."""
    return {
        **spec, "return_layers": min(spec["return_layers"], depth),
        "student": {**spec["student"], "depth": depth}, "teacher": {**spec["teacher"], "depth": depth},
    }


def _umt_step_args(spec: dict, **model_kw):
    """(step, args) of the UMT stage-1 train step at `spec`, for lowering; args are shape structs."""
    init, loss_fn, example = suite.umt_stage1(spec, **model_kw)
    tx, step = suite.train_step(loss_fn)
    params, frozen = jax.eval_shape(init, jax.random.key(0))
    opt_state = jax.eval_shape(tx.init, params)
    batch = jax.eval_shape(example, jax.random.key(1))
    return step, (params, opt_state, frozen, batch, jax.random.key(2))


# Compiled steps by (spec, scan_layers, remat_policy): the memory section reuses the compile section's.
_COMPILED = {}


def _key(spec, scan, policy):
    return json.dumps(spec, sort_keys=True), scan, policy


def compile_case(spec: dict, depth: int, scan: bool) -> dict:
    spec = with_depth(spec, depth)
    step, args = _umt_step_args(spec, dtype=jnp.float32, scan_layers=scan)
    t0 = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=(0, 1)).lower(*args)
    lower_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _COMPILED[_key(spec, scan, "none")] = lowered.compile()
    compile_s = time.perf_counter() - t0
    return {"depth": depth, "scan_layers": scan, "lower_s": lower_s, "compile_s": compile_s,
            "total_s": lower_s + compile_s}


def memory_case(spec: dict, policy: str) -> dict:
    compiled = _COMPILED.get(_key(spec, True, policy))
    if compiled is None:
        step, args = _umt_step_args(spec, dtype=jnp.float32, remat_policy=policy)
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*args).compile()
    memory = suite._memory(compiled)
    if memory is None:
        raise RuntimeError("compiled.memory_analysis() is not available on this backend")
    return {"remat_policy": policy, **memory, "temp_mib": memory["temp_size_in_bytes"] / 2**20}


def summary(data: dict) -> str:
    lines = [f"cpu_suite on {data['machine']['cpus']} CPUs, jax {jax.__version__}, "
             f"{data.get('elapsed_s', 0):.0f} s{' [smoke]' if data['smoke'] else ''}"]
    sections = data["sections"]
    for case, r in sections.get("train", {}).items():
        if "step_time_ratio" in r:
            lines.append(f"  train/{case:12s} {r['step_time_ratio']:.2f}x")
        elif "error" in r or "skipped" in r:
            lines.append(f"  train/{case}: {r.get('error') or r.get('skipped')}"[:150])
        else:
            lines.append(f"  train/{case:12s} {r['step_time_ms']:9.1f} ms/step  {r['clips_per_sec']:7.2f} clips/s")
    for case, r in sections.get("compile", {}).items():
        if "error" in r or "skipped" in r:
            lines.append(f"  compile/{case}: {r.get('error') or r.get('skipped')}"[:150])
        else:
            lines.append(f"  compile/{case:14s} lower {r['lower_s']:6.2f} s  compile {r['compile_s']:6.2f} s")
    for case, r in sections.get("memory", {}).items():
        if "error" in r or "skipped" in r:
            lines.append(f"  memory/{case}: {r.get('error') or r.get('skipped')}"[:150])
        else:
            lines.append(f"  memory/{case:14s} temp {r['temp_mib']:9.1f} MiB")
    return "\n".join(lines)


SECTIONS = ("train", "compile", "memory")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="JSON file, rewritten after every case")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, every code path")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 5; 2 with --smoke)")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {SECTIONS}")
    smoke = args.smoke
    umt, viclip = (suite.UMT_TINY, suite.VICLIP_TINY) if smoke else (UMT_CPU, VICLIP_CPU)
    warmup, steps = (1, args.steps or 2) if smoke else (2, args.steps or 5)
    clock = suite.Clock(math.inf)
    results = suite.Results(args.out, {
        "benchmark": "cpu_suite",
        "smoke": smoke,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backend": jax.default_backend(),
        "versions": suite._versions(),
        "specs": {"umt": umt, "viclip": viclip},
        "timing": {"train_warmup": warmup, "train_steps": steps},
        "machine": report.machine(),
    })
    results.save()
    for section in sections:
        t0 = time.perf_counter()
        results.data["sections"].setdefault(section, {})
        if section == "train":
            for name, spec in (("umt", umt), ("viclip", viclip)):
                suite.run_case(results, clock, "train", f"{name}_jax", suite.jax_train_case, name, spec,
                               warmup=warmup, steps=steps, peak=None, dtype=jnp.float32)
            torch_results = suite.torch_train_cases({"umt": umt, "viclip": viclip}, warmup=warmup, steps=steps,
                                                    timeout=1800)
            for name in ("umt", "viclip"):
                results.set("train", f"{name}_torch", torch_results[name])
                print(f"[{clock.elapsed():6.1f}s] train/{name}_torch: {suite._short(torch_results[name])}", flush=True)
            for name in ("umt", "viclip"):
                jx, pt = results.data["sections"]["train"][f"{name}_jax"], torch_results[name]
                if "step_time_ms" in jx and "step_time_ms" in pt:
                    results.data["sections"]["train"][f"{name}_torch_over_jax"] = {
                        "step_time_ratio": pt["step_time_ms"] / jx["step_time_ms"]}
        elif section == "compile":
            for depth in SMOKE_DEPTHS if smoke else DEPTHS:
                for scan in (True, False):
                    suite.run_case(results, clock, "compile", f"depth{depth}_{'scan' if scan else 'unrolled'}",
                                   compile_case, umt, depth, scan)
        else:
            for policy in SMOKE_REMAT if smoke else REMAT_POLICIES:
                suite.run_case(results, clock, "memory", f"remat_{policy}", memory_case, umt, policy)
        results.data.setdefault("section_wall_s", {})[section] = round(time.perf_counter() - t0, 2)
        results.data["elapsed_s"] = round(clock.elapsed(), 2)
        results.save()
    print(summary(results.data), flush=True)


if __name__ == "__main__":
    main()
