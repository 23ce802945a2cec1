"""The one-command GPU benchmark suite: attention kernels, GroupNorm+SiLU kernels, training steps.

    python -m experiments.bench.gpu_suite --out experiments/results/gpu_suite_<machine>.json
    python -m experiments.bench.gpu_suite --out /tmp/gpu_suite_smoke.json --smoke   # CPU, tiny, ~1 min

One process, under 6 minutes on one H100 or H200, one JSON written after every case
(so a timeout still leaves what was measured); every case is wrapped so that
one failure (a kernel that does not lower, an OOM) is recorded as
`{"error": "<type>: <msg>"}` and loses nothing else. A short table is printed
at the end. Sections:

1. `attention`: forward and forward+backward TFLOP/s of
   `kernels.attention.dot_product_attention` for impl pallas / cudnn / xla,
   bf16, at the video shapes of the models here (full B/16 and L/14 videos, a
   head-dim-128 case, the tokens left after UMT/ViCLIP masking with and
   without ragged key lengths, the U-Net temporal attention). FLOPs:
   4 B H Lq Lk D forward (dense), backward 2.5x forward; `useful_tflops`
   counts only the keys inside `key_lengths`. Each result carries its error
   against an fp32 XLA reference on the same bf16 inputs (output and the
   three input gradients, max |err| / max |ref|), so a fast wrong kernel shows.
2. `groupnorm`: `kernels.groupnorm.group_norm_silu` pallas vs xla, bf16, with
   scale/shift, at U-Net shapes (B, T, H, W, C); GB/s of the bytes that must
   move (forward: read x, write y; backward: read x and dy, write dx; plus
   the small params).
3. `train`: clips/s and MFU of a full training step (AdamW, params fp32,
   bf16 compute, random weights, synthetic inputs) for UMT-B/16 stage 1 and
   ViCLIP-B/16, in JAX (this repo's models, attention_impl 'auto') and in
   PyTorch on the same device (`experiments.bench.torch_models`, transformers
   modules, bf16 autocast + SDPA, run as a subprocess). MFU = analytic model
   FLOPs (`umt_flops` / `viclip_flops`) / step time / the device's dense bf16
   peak (`PEAK_BF16_FLOPS`); XLA's cost-analysis FLOPs are recorded too.

It imports only what the GPU image has (jax, flax, optax, numpy; torch and
transformers only in the subprocess): not grain, clu, ml_collections,
tensorflow, tensorflow_datasets, av or PIL. That is why it builds the models
and steps itself instead of going through `vfm_jax.train`. `--smoke` runs every code path on CPU
with tiny shapes (Pallas in interpret mode, cuDNN recorded as skipped, PyTorch
in fp32) so that CI keeps the suite working.
"""
from __future__ import annotations

import os

# JAX must not take 75% of the GPU up front: the PyTorch subprocess shares the device.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

from data.masking import attention_guided_mask, gather_visible, num_visible  # noqa: E402
from experiments.bench import report  # noqa: E402
from kernels.attention import dot_product_attention  # noqa: E402
from vfm_jax.layers.transformer import last_layers  # noqa: E402
from vfm_jax.models.clip import CLIPVision  # noqa: E402
from vfm_jax.models.umt import UMTStudent  # noqa: E402

# Dense bf16 tensor-core peak (no sparsity), matched by substring of jax's device_kind, first match wins.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
)


def peak_flops(device_kind: str) -> float | None:
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_kind.lower():
            return flops
    return None


# ---------------------------------------------------------------------------
# Shapes.

# (name, B, L, H, D, key lengths drawn uniformly in [lo, hi] or None), most important first.
ATTENTION_CASES = (
    ("b16_video", 8, 1568, 12, 64, None),  # UMT / ViCLIP-B/16 full clip: 8 frames x 196 patches
    ("b16_video_lengths", 8, 1568, 12, 64, (940, 1568)),
    ("b16_masked_ragged", 64, 205, 12, 64, (160, 205)),  # tokens left after masking, ragged
    ("b16_masked", 64, 205, 12, 64, None),
    ("l14_video", 4, 2048, 16, 64, None),  # ViCLIP-L/14: 8 x 256 (+ CLS)
    ("l14_masked", 64, 206, 16, 64, None),  # L/14 with 90% drop: 205 visible + CLS
    ("d128_video", 4, 2048, 8, 128, None),
    ("unet_temporal", 2048, 16, 8, 64, None),  # 16-frame temporal attention at 2 x 32 x 32 positions
    ("l14_video_lengths", 4, 2048, 16, 64, (1228, 2048)),
    ("d128_video_lengths", 4, 2048, 8, 128, (1228, 2048)),
    ("l14_masked_ragged", 64, 206, 16, 64, (124, 206)),
)
ATTENTION_SMOKE = (
    ("tiny_lengths", 2, 40, 2, 32, (24, 40)),
    ("tiny_temporal", 16, 4, 2, 32, None),
)
ATTENTION_IMPLS = ("pallas", "cudnn", "xla")

# (name, (B, T, H, W, C), groups): the video U-Net ResBlock norms at 16 frames.
GROUPNORM_CASES = (
    ("unet_64px_320", (2, 16, 64, 64, 320), 32),
    ("unet_32px_640", (2, 16, 32, 32, 640), 32),
    ("unet_16px_1280", (2, 16, 16, 16, 1280), 32),
)
GROUPNORM_SMOKE = (("tiny", (1, 2, 8, 8, 64), 8),)
GROUPNORM_IMPLS = ("pallas", "xla")

# Training steps: one spec per model, shared with the PyTorch side (experiments.bench.torch_models).
UMT_B16 = dict(
    batch=32, frames=8, image_size=224, mask_ratio=0.8, return_layers=6,
    student=dict(width=768, depth=12, num_heads=12, patch_size=16),
    teacher=dict(width=768, depth=12, num_heads=12, patch_size=16, output_dim=512),
)
VICLIP_B16 = dict(
    batch=64, frames=8, image_size=224, drop_ratio=0.9, embed_dim=512,
    vision=dict(width=768, depth=12, num_heads=12, patch_size=16),
    text=dict(width=512, depth=12, num_heads=8, context=32, vocab_size=49408),
)
UMT_TINY = dict(
    batch=2, frames=2, image_size=32, mask_ratio=0.8, return_layers=2,
    student=dict(width=64, depth=2, num_heads=2, patch_size=8),
    teacher=dict(width=64, depth=2, num_heads=2, patch_size=8, output_dim=32),
)
VICLIP_TINY = dict(
    batch=4, frames=2, image_size=32, drop_ratio=0.9, embed_dim=32,
    vision=dict(width=64, depth=2, num_heads=2, patch_size=8),
    text=dict(width=64, depth=2, num_heads=2, context=8, vocab_size=1000),
)


# ---------------------------------------------------------------------------
# Analytic model FLOPs (for MFU).


def blocks_flops(tokens: int, width: int, depth: int, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs of `depth` pre-LN blocks on one sequence of `tokens`.

    2 x (matmul params) per token (qkv 3D^2, out D^2, MLP 2 r D^2) plus the
    attention products 4 L^2 D (QK^T and PV over all heads), dense.
    """
    dense = 2 * tokens * (4 * width * width + 2 * mlp_ratio * width * width)
    return depth * (dense + 4 * tokens * tokens * width)


def umt_flops(spec: dict) -> dict:
    """UMT stage 1 per step: frozen teacher forward + student forward/backward (3x forward)."""
    s, t = spec["student"], spec["teacher"]
    b, frames, size, k = spec["batch"], spec["frames"], spec["image_size"], spec["return_layers"]
    out = t["output_dim"]
    patches = (size // s["patch_size"]) ** 2
    t_patches = (size // t["patch_size"]) ** 2
    visible = frames * num_visible(patches, spec["mask_ratio"])
    teacher = b * frames * (
        blocks_flops(1 + t_patches, t["width"], t["depth"])
        + 2 * t_patches * 3 * t["patch_size"] ** 2 * t["width"]  # patch conv
        + k * 2 * t_patches * t["width"] * out  # projections of the K returned layers
    )
    student = b * (
        blocks_flops(visible, s["width"], s["depth"])
        + 2 * frames * patches * 3 * s["patch_size"] ** 2 * s["width"]
        + k * 2 * visible * s["width"] * out  # the K alignment heads
    )
    return {"teacher_forward": teacher, "student_forward_backward": 3 * student, "total": teacher + 3 * student}


def viclip_flops(spec: dict) -> dict:
    """ViCLIP per step: vision (after the token drop) + text + logits, forward and backward (3x forward)."""
    v, t = spec["vision"], spec["text"]
    b, frames, size, e = spec["batch"], spec["frames"], spec["image_size"], spec["embed_dim"]
    tokens = frames * (size // v["patch_size"]) ** 2
    kept = tokens - int(spec["drop_ratio"] * tokens)
    vision = b * (
        blocks_flops(1 + kept, v["width"], v["depth"])
        + 2 * tokens * 3 * v["patch_size"] ** 2 * v["width"]
        + 2 * v["width"] * e
    )
    text = b * (blocks_flops(t["context"], t["width"], t["depth"]) + 2 * t["width"] * e)
    logits = 2 * b * b * e
    return {"vision": 3 * vision, "text": 3 * text, "total": 3 * (vision + text + logits)}


# ---------------------------------------------------------------------------
# Harness.


class Results:
    """The suite's JSON, rewritten (atomically) after every case."""

    def __init__(self, path: str | None, header: dict):
        self.path = path
        self.data = {**header, "sections": {}}

    def set(self, section: str, case: str, value):
        self.data["sections"].setdefault(section, {})[case] = value
        self.save()

    def save(self):
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=2, default=_json_default)
            f.write("\n")
        os.replace(tmp, self.path)


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return str(x)


class Clock:
    """The suite's deadline and per-section budgets: cases that would start too late are skipped."""

    def __init__(self, deadline_s: float):
        self.start = time.perf_counter()
        self.deadline_s = deadline_s
        self.section_start = self.start
        self.section_budget = math.inf

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def begin_section(self, budget_s: float):
        self.section_start = time.perf_counter()
        self.section_budget = budget_s

    def skip_reason(self) -> str | None:
        if self.elapsed() > self.deadline_s:
            return f"skipped: suite deadline ({self.deadline_s:.0f} s) passed"
        if time.perf_counter() - self.section_start > self.section_budget:
            return f"skipped: section budget ({self.section_budget:.0f} s) spent"
        return None


def _error(e: BaseException) -> dict:
    msg = str(e).strip().splitlines()
    return {
        "error": f"{type(e).__name__}: {msg[0][:500] if msg else ''}",
        "traceback_tail": traceback.format_exc()[-1500:],
    }


def run_case(results: Results, clock: Clock, section: str, case: str, fn, *args, **kwargs):
    """fn(*args) -> dict recorded under sections[section][case]; skipped past budgets, errors recorded."""
    reason = clock.skip_reason()
    if reason:
        results.set(section, case, {"skipped": reason})
        return None
    t0 = time.perf_counter()
    try:
        value = fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - one failing case must not lose the others
        value = _error(e)
    value["wall_s"] = round(time.perf_counter() - t0, 3)
    results.set(section, case, value)
    print(f"[{clock.elapsed():6.1f}s] {section}/{case}: {_short(value)}", flush=True)
    return value


def _short(value: dict) -> str:
    """One progress line: per-impl fwd|fwd_bwd figures for kernel cases, scalars otherwise."""
    if "error" in value:
        return value["error"][:160]
    kernels = {k: v for k, v in value.items() if k in ATTENTION_IMPLS + GROUPNORM_IMPLS}
    if kernels:
        def figure(entry):
            if not isinstance(entry, dict) or "error" in entry:
                return "ERR"
            return _num(entry.get("useful_tflops", entry.get("gb_per_s"))) + ("" if entry.get("ok") else "!")

        return "  ".join(
            f"{impl} {'skip' if 'skipped' in e else figure(e.get('fwd')) + '|' + figure(e.get('fwd_bwd'))}"
            for impl, e in kernels.items()
        ) + f"  ({value.get('wall_s', 0):.1f} s)"
    return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items() if not isinstance(v, (dict, list)))[:200]


def _error_lines(tree, path="") -> list[str]:
    out = []
    if isinstance(tree, dict):
        if "error" in tree:
            out.append(f"{path}: {tree['error']}")
        for key, value in tree.items():
            out += _error_lines(value, f"{path}/{key}" if path else key)
    return out


def _num(v) -> str:
    return "-" if v is None else (f"{v:.1f}" if abs(v) >= 1 else f"{v:.3g}")


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def compile_fn(fn, *args, donate=()):
    """(compiled, compile seconds) for jit(fn) at args."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def time_compiled(compiled, args, *, reps: int, min_s: float, max_iters: int = 100):
    """Median seconds per call: `reps` repetitions of `iters` back-to-back calls, blocked at the end.

    `iters` is chosen so a repetition lasts about `min_s` (small kernels would
    otherwise measure dispatch). Returns (seconds, last output).
    """
    out = jax.block_until_ready(compiled(*args))  # warm-up
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    single = time.perf_counter() - t0
    iters = max(1, min(max_iters, math.ceil(min_s / max(single, 1e-6))))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(iters):
            out = compiled(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / iters)
    return statistics.median(times), out


@jax.jit
def _error_stats(x, ref):
    x32, ref32 = x.astype(jnp.float32), ref.astype(jnp.float32)
    return jnp.max(jnp.abs(x32 - ref32)), jnp.max(jnp.abs(ref32)), jnp.all(jnp.isfinite(x32))


def relative_error(outputs, references) -> dict:
    """max |x - ref| / max |ref| over the pairs (worst pair), and whether everything is finite."""
    worst, finite, abs_err = 0.0, True, 0.0
    for x, ref in zip(jax.tree.leaves(outputs), jax.tree.leaves(references)):
        err, scale, ok = (float(a) for a in _error_stats(x, ref))
        finite &= bool(ok)
        abs_err = max(abs_err, err)
        worst = max(worst, err / max(scale, 1e-30))
    return {"max_abs_err": abs_err, "rel_err": worst if finite else None, "finite": finite}


def _highest_precision():
    """fp32 matmuls in full precision (no TF32) for references; a no-op where the option is gone."""
    ctx = getattr(jax, "default_matmul_precision", None)
    return ctx("highest") if ctx is not None else contextlib.nullcontext()


def _on_gpu() -> bool:
    return jax.default_backend() == "gpu"


# ---------------------------------------------------------------------------
# 1. Attention.

ATTENTION_TOLERANCE = {"fwd": 2e-2, "fwd_bwd": 4e-2}  # rel_err vs the fp32 reference, bf16 inputs


def _attention_fns(impl: str):
    def fwd(q, k, v, lengths, do):
        del do
        return dot_product_attention(q, k, v, key_lengths=lengths, impl=impl)

    def fwd_bwd(q, k, v, lengths, do):
        _, vjp = jax.vjp(lambda q, k, v: dot_product_attention(q, k, v, key_lengths=lengths, impl=impl), q, k, v)
        return vjp(do)

    return {"fwd": fwd, "fwd_bwd": fwd_bwd}


def attention_case(b, length, heads, dim, lengths_range, *, impls, timing) -> dict:
    rng = np.random.default_rng(0)
    q, k, v, do = (jnp.asarray(rng.standard_normal((b, length, heads, dim)), jnp.bfloat16) for _ in range(4))
    lengths = None
    if lengths_range is not None:
        lengths = jnp.asarray(rng.integers(lengths_range[0], lengths_range[1] + 1, b), jnp.int32)
    dense_fwd = 4.0 * b * heads * length * length * dim
    useful_fwd = dense_fwd if lengths is None else 4.0 * heads * length * dim * float(np.sum(np.asarray(lengths)))
    flops = {"fwd": (dense_fwd, useful_fwd), "fwd_bwd": (3.5 * dense_fwd, 3.5 * useful_fwd)}
    args = (q, k, v, lengths, do)
    f32 = tuple(None if a is None else (a.astype(jnp.float32) if a.dtype == jnp.bfloat16 else a) for a in args)
    t0 = time.perf_counter()
    with _highest_precision():  # no TF32 in the reference
        reference = jax.block_until_ready({mode: jax.jit(fn)(*f32) for mode, fn in _attention_fns("xla").items()})
    out = {
        "reference_s": time.perf_counter() - t0,
        "shape": {"B": b, "L": length, "H": heads, "D": dim},
        "key_lengths": None if lengths is None else {"min": int(lengths.min()), "max": int(lengths.max()),
                                                     "mean": float(jnp.mean(lengths.astype(jnp.float32)))},
        "gflop": {"fwd": dense_fwd / 1e9, "fwd_useful": useful_fwd / 1e9},
    }
    for impl in impls:
        if impl == "cudnn" and not _on_gpu():
            out[impl] = {"skipped": "needs GPU"}
            continue
        entry, t0 = {}, time.perf_counter()
        for mode, fn in _attention_fns(impl).items():
            try:
                compiled, compile_s = compile_fn(fn, *args)
                seconds, result = time_compiled(compiled, args, **timing)
                dense, useful = flops[mode]
                err = relative_error(result, reference[mode])
                entry[mode] = {
                    "ms": seconds * 1e3,
                    "tflops": dense / seconds / 1e12,
                    "useful_tflops": useful / seconds / 1e12,
                    "compile_s": compile_s,
                    **err,
                    "ok": err["rel_err"] is not None and err["rel_err"] <= ATTENTION_TOLERANCE[mode],
                }
            except Exception as e:  # noqa: BLE001
                entry[mode] = _error(e)
        out[impl] = {**entry, "wall_s": time.perf_counter() - t0}
    return out


def section_attention(results: Results, clock: Clock, *, smoke: bool, timing: dict):
    for name, b, length, heads, dim, lengths in ATTENTION_SMOKE if smoke else ATTENTION_CASES:
        run_case(results, clock, "attention", name, attention_case, b, length, heads, dim, lengths,
                 impls=ATTENTION_IMPLS, timing=timing)


# ---------------------------------------------------------------------------
# 2. GroupNorm + SiLU.

GROUPNORM_TOLERANCE = {"fwd": 2e-2, "fwd_bwd": 4e-2}


def _groupnorm_fns(impl: str, groups: int):
    from kernels.groupnorm import group_norm_silu

    def norm(x, gamma, beta, scale, shift):
        return group_norm_silu(x, gamma, beta, num_groups=groups, scale=scale, shift=shift, impl=impl)

    def fwd(x, gamma, beta, scale, shift, dy):
        del dy
        return norm(x, gamma, beta, scale, shift)

    def fwd_bwd(x, gamma, beta, scale, shift, dy):
        _, vjp = jax.vjp(norm, x, gamma, beta, scale, shift)
        return vjp(dy)

    return {"fwd": fwd, "fwd_bwd": fwd_bwd}


def groupnorm_case(shape, groups, *, impls, timing) -> dict:
    rng = np.random.default_rng(0)
    b, c = shape[0], shape[-1]
    x = jnp.asarray(rng.standard_normal(shape) * 2 + 0.5, jnp.bfloat16)
    dy = jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)
    gamma = jnp.asarray(1 + 0.2 * rng.standard_normal(c), jnp.float32)
    beta = jnp.asarray(0.2 * rng.standard_normal(c), jnp.float32)
    scale = jnp.asarray(0.2 * rng.standard_normal((b, c)), jnp.bfloat16)
    shift = jnp.asarray(0.2 * rng.standard_normal((b, c)), jnp.bfloat16)
    args = (x, gamma, beta, scale, shift, dy)
    f32 = tuple(a.astype(jnp.float32) for a in args)
    with _highest_precision():
        reference = {mode: jax.jit(fn)(*f32) for mode, fn in _groupnorm_fns("xla", groups).items()}
    act = x.size * x.dtype.itemsize
    params = 2 * c * 4 + 2 * b * c * 2
    moved = {"fwd": 2 * act + params, "fwd_bwd": 2 * act + 3 * act + 2 * params}
    out = {"shape": list(shape), "groups": groups, "bytes_moved": moved,
           "bytes_note": "fwd: read x + write y; fwd_bwd adds read x, dy + write dx; + params"}
    for impl in impls:
        entry, t0 = {}, time.perf_counter()
        for mode, fn in _groupnorm_fns(impl, groups).items():
            try:
                compiled, compile_s = compile_fn(fn, *args)
                seconds, result = time_compiled(compiled, args, **timing)
                err = relative_error(result, reference[mode])
                entry[mode] = {
                    "ms": seconds * 1e3,
                    "gb_per_s": moved[mode] / seconds / 1e9,
                    "compile_s": compile_s,
                    **err,
                    "ok": err["rel_err"] is not None and err["rel_err"] <= GROUPNORM_TOLERANCE[mode],
                }
            except Exception as e:  # noqa: BLE001
                entry[mode] = _error(e)
        out[impl] = {**entry, "wall_s": time.perf_counter() - t0}
    return out


def section_groupnorm(results: Results, clock: Clock, *, smoke: bool, timing: dict):
    for name, shape, groups in GROUPNORM_SMOKE if smoke else GROUPNORM_CASES:
        run_case(results, clock, "groupnorm", name, groupnorm_case, shape, groups,
                 impls=GROUPNORM_IMPLS, timing=timing)


# ---------------------------------------------------------------------------
# 3. Training steps.


def umt_stage1(spec: dict, *, dtype=jnp.bfloat16, attention_impl="auto", scan_layers=True, remat_policy="none",
               drop_path_rate=0.0):
    """(init(rng) -> (params, frozen), loss_fn(params, frozen, video, rng), example video) for UMT stage 1.

    The step of `vfm_jax.tasks.umt.UMTStage1Task.loss_fn` built without the
    task (whose module imports the data pipeline): the frozen CLIP teacher
    draws the attention-guided mask and the targets of its last K layers, the
    student sees the visible tokens only, loss mean(2 - 2 <s, t>). The video
    is already normalised. No drop path by default (the PyTorch student has
    none); tests check that this loss equals the task's.
    """
    s, t = spec["student"], spec["teacher"]
    k = spec["return_layers"]
    common = dict(attention_impl=attention_impl, scan_layers=scan_layers, remat_policy=remat_policy, dtype=dtype)
    student = UMTStudent(
        width=s["width"], depth=s["depth"], num_heads=s["num_heads"], patch_size=s["patch_size"], tubelet_size=1,
        clip_output_dim=t["output_dim"], clip_return_layers=k, drop_path_rate=drop_path_rate, **common,
    )
    teacher = CLIPVision(
        width=t["width"], depth=t["depth"], num_heads=t["num_heads"], patch_size=t["patch_size"],
        image_size=spec["image_size"], output_dim=t["output_dim"], return_layers=last_layers(t["depth"], k),
        return_attention=True, **common,
    )
    frames, size = spec["frames"], spec["image_size"]
    patches = (size // s["patch_size"]) ** 2
    per_frame = num_visible(patches, spec["mask_ratio"])
    visible = frames * per_frame

    def init(rng):
        video = jnp.zeros((1, frames, size, size, 3), jnp.float32)
        mask = jnp.tile(jnp.arange(patches) >= per_frame, (1, frames))
        student_rng, teacher_rng = jax.random.split(rng)
        params = student.init({"params": student_rng}, video, mask, num_visible=visible)["params"]
        return params, teacher.init({"params": teacher_rng}, video)["params"]

    def loss_fn(params, frozen, video, rng):
        mask_rng, dropout_rng, droppath_rng = jax.random.split(rng, 3)  # as UMTStage1Task.outputs
        out = jax.lax.stop_gradient(teacher.apply({"params": frozen}, video))
        mask = attention_guided_mask(mask_rng, out["cls_attention"], spec["mask_ratio"])
        targets = jax.vmap(lambda f: gather_visible(f, mask, visible))(out["layer_features"])
        features = student.apply(
            {"params": params}, video, mask, num_visible=visible, train=True,
            rngs={"dropout": dropout_rng, "droppath": droppath_rng},
        )["features"]
        s_, t_ = features.astype(jnp.float32), targets.astype(jnp.float32)
        return jnp.mean(2.0 - 2.0 * jnp.sum(s_ * t_, axis=-1))

    def example(rng):
        return (jax.random.normal(rng, (spec["batch"], frames, size, size, 3), jnp.float32),)

    return init, loss_fn, example


def viclip(spec: dict, *, dtype="bfloat16", attention_impl="auto", scan_layers=True, remat_policy="none"):
    """(init, loss_fn, example) for ViCLIP contrastive training (symmetric InfoNCE, learned temperature)."""
    from vfm_jax.models import get_model

    v, t = spec["vision"], spec["text"]
    frames, size = spec["frames"], spec["image_size"]
    model = get_model(
        "viclip_b16", embed_dim=spec["embed_dim"], attention_impl=attention_impl, scan_layers=scan_layers,
        remat_policy=remat_policy, dtype=dtype if isinstance(dtype, str) else jnp.dtype(dtype).name,
        vision=dict(width=v["width"], depth=v["depth"], num_heads=v["num_heads"], patch_size=v["patch_size"],
                    image_size=size, num_frames=frames, drop_ratio=spec["drop_ratio"], drop_path_rate=0.0),
        text=dict(vocab_size=t["vocab_size"], width=t["width"], depth=t["depth"], num_heads=t["num_heads"],
                  context_length=t["context"]),
    )

    def init(rng):
        video = jnp.zeros((1, frames, size, size, 3), jnp.float32)
        ids = jnp.ones((1, t["context"]), jnp.int32)
        return model.init({"params": rng}, video, ids)["params"], {}

    def loss_fn(params, frozen, video, ids, rng):
        del frozen
        mask_rng, drop_rng = jax.random.split(rng)
        out = model.apply({"params": params}, video, ids, train=True,
                          rngs={"masking": mask_rng, "droppath": drop_rng, "dropout": drop_rng})
        logits = out["video_embedding"] @ out["text_embedding"].T / out["temperature"]
        labels = jnp.arange(logits.shape[0])
        v2t = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        t2v = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
        return (v2t + t2v) / 2

    def example(rng):
        video_rng, ids_rng = jax.random.split(rng)
        b, ctx, vocab = spec["batch"], t["context"], t["vocab_size"]
        video = jax.random.normal(video_rng, (b, frames, size, size, 3), jnp.float32)
        ids = jax.random.randint(ids_rng, (b, ctx), 1, vocab - 2)
        # <start> ... <end>: CLIPText pools at argmax(ids), the end token has the largest id.
        ids = ids.at[:, 0].set(vocab - 2).at[:, -1].set(vocab - 1)
        return video, ids

    return init, loss_fn, example


TRAIN_MODELS = {"umt": (umt_stage1, umt_flops), "viclip": (viclip, viclip_flops)}


def train_step(loss_fn):
    """AdamW step over `params`; `frozen` (the teacher) gets no gradient and no update."""
    tx = optax.adamw(1e-4, b1=0.9, b2=0.95, weight_decay=0.05)

    def step(params, opt_state, frozen, batch, rng):
        loss, grads = jax.value_and_grad(loss_fn)(params, frozen, *batch, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return tx, step


def _cost_flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return None if not cost or "flops" not in cost else float(cost["flops"])


def _memory(compiled) -> dict | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    fields = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
              "generated_code_size_in_bytes")
    return {f: int(getattr(m, f)) for f in fields if hasattr(m, f)}


def xla_flops_per_step(name: str, spec: dict, **model_kw) -> float | None:
    """XLA's FLOP count of the train step, from the lowered (not compiled) program.

    Built with every layer stack unrolled and attention_impl='xla': XLA's cost
    analysis counts a scanned loop's body once and does not see into custom
    calls (cuDNN, Pallas), so the executed program would be undercounted.
    The step is lowered for the CPU backend: the GPU plugin (PJRT C API) has
    no cost analysis of a lowered module, and compiling the unrolled step on
    the GPU only to count would cost a minute of device time.
    """
    build, _ = TRAIN_MODELS[name]
    init, loss_fn, example = build(spec, **{**model_kw, "scan_layers": False, "attention_impl": "xla"})
    tx, step = train_step(loss_fn)
    params, frozen = jax.eval_shape(init, jax.random.key(0))
    opt_state = jax.eval_shape(tx.init, params)
    batch = jax.eval_shape(example, jax.random.key(1))
    on_cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    args = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on_cpu),
                        (params, opt_state, frozen, batch, jax.eval_shape(jax.random.key, 2)))
    return _cost_flops(jax.jit(step).lower(*args))


def jax_train_case(name: str, spec: dict, *, warmup: int, steps: int, peak: float | None, **model_kw) -> dict:
    """Compile (timed) and run warm-up + timed steps of model `name` at `spec`; clips/s, MFU, XLA FLOPs."""
    build, flops_fn = TRAIN_MODELS[name]
    init, loss_fn, example = build(spec, **model_kw)
    t0 = time.perf_counter()
    params, frozen = jax.jit(init)(jax.random.key(0))
    batch = example(jax.random.key(1))
    tx, step = train_step(loss_fn)
    opt_state = jax.jit(tx.init)(params)
    jax.block_until_ready((params, frozen, batch, opt_state))
    init_s = time.perf_counter() - t0
    keys = [jax.random.key(100 + i) for i in range(warmup + steps)]
    compiled, compile_s = compile_fn(step, params, opt_state, frozen, batch, keys[0], donate=(0, 1))
    times, losses = [], []
    for i, key in enumerate(keys):
        t0 = time.perf_counter()
        params, opt_state, loss = compiled(params, opt_state, frozen, batch, key)
        loss = float(loss)  # blocks
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            losses.append(loss)
    median = statistics.median(times)
    model_flops = flops_fn(spec)
    try:
        xla_flops, xla_flops_error = xla_flops_per_step(name, spec, **model_kw), None
    except Exception as e:  # noqa: BLE001 - a missing count must not lose the timing
        xla_flops, xla_flops_error = None, f"{type(e).__name__}: {e}"[:300]
    return {
        "framework": f"jax {jax.__version__}",
        "batch": spec["batch"],
        "init_s": init_s,
        "compile_s": compile_s,
        "step_time_ms": median * 1e3,
        "step_times_ms": [x * 1e3 for x in times],
        "clips_per_sec": spec["batch"] / median,
        "model_tflop_per_step": model_flops["total"] / 1e12,
        "model_tflops_per_sec": model_flops["total"] / median / 1e12,
        "mfu": None if peak is None else model_flops["total"] / median / peak,
        "xla_tflop_per_step": None if xla_flops is None else xla_flops / 1e12,
        "xla_flops_note": "cost analysis of the step lowered for CPU, layers unrolled, XLA attention"
                          + (f"; failed: {xla_flops_error}" if xla_flops_error else ""),
        "attention_impl": model_kw.get("attention_impl", "auto"),
        "loss": losses[-1],
        "finite": bool(np.isfinite(losses).all()),
        "params": int(sum(x.size for x in jax.tree.leaves(params))),
        "memory": _memory(compiled),
    }


def torch_train_cases(specs: dict, *, warmup: int, steps: int, timeout: float, threads: int = 0) -> dict:
    """`experiments.bench.torch_models` in a subprocess for {name: spec}; its JSON (partial on timeout)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "torch.json")
        cmd = [sys.executable, "-m", "experiments.bench.torch_models", "--spec", json.dumps(specs), "--out", out,
               "--warmup", str(warmup), "--steps", str(steps), "--threads", str(threads)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
        error = None
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            if proc.returncode:
                error = f"torch subprocess exited {proc.returncode}: {proc.stderr.strip()[-1500:]}"
        except subprocess.TimeoutExpired:
            error = f"torch subprocess timed out after {timeout:.0f} s"
        data = {}
        if os.path.exists(out):
            with open(out) as f:
                data = json.load(f)
    for name in specs:
        if name not in data:
            data[name] = {"error": error or "no result"}
    return data


def _with_mfu(result: dict, flops: dict, peak: float | None) -> dict:
    if "step_time_ms" in result:
        seconds = result["step_time_ms"] / 1e3
        result["model_tflop_per_step"] = flops["total"] / 1e12
        result["model_tflops_per_sec"] = flops["total"] / seconds / 1e12
        result["mfu"] = None if peak is None else flops["total"] / seconds / peak
    return result


def section_train(results: Results, clock: Clock, *, smoke: bool, warmup: int, steps: int, peak: float | None):
    specs = {"umt": UMT_TINY, "viclip": VICLIP_TINY} if smoke else {"umt": UMT_B16, "viclip": VICLIP_B16}
    flops = {"umt": umt_flops, "viclip": viclip_flops}
    results.data["train_specs"] = specs
    results.data["model_flops"] = {name: flops[name](spec) for name, spec in specs.items()}
    for name, spec in specs.items():
        value = run_case(results, clock, "train", f"{name}_jax", jax_train_case, name, spec,
                         warmup=warmup, steps=steps, peak=peak)
        if value and "error" in value and not smoke:
            # One more try without the fused attention kernels (cuDNN under 'auto'), so a kernel
            # problem still leaves a JAX step time.
            run_case(results, clock, "train", f"{name}_jax_xla_attention", jax_train_case, name, spec,
                     warmup=warmup, steps=steps, peak=peak, attention_impl="xla")
    reason = clock.skip_reason()
    if reason:
        for name in specs:
            results.set("train", f"{name}_torch", {"skipped": reason})
        return
    # Started before the deadline, it may run a minute past it (about 30 s expected on an H100).
    timeout = 600 if smoke else max(45.0, clock.deadline_s - clock.elapsed() + 60.0)
    t0 = time.perf_counter()
    torch_results = torch_train_cases(specs, warmup=warmup, steps=steps, timeout=timeout)
    for name, spec in specs.items():
        value = _with_mfu(dict(torch_results.get(name, {"error": "no result"})), flops[name](spec), peak)
        results.set("train", f"{name}_torch", value)
        print(f"[{clock.elapsed():6.1f}s] train/{name}_torch: {_short(value)}", flush=True)
    results.data["torch_device"] = torch_results.get("device")
    results.data.setdefault("section_wall_s", {})["train_torch"] = round(time.perf_counter() - t0, 2)
    results.save()


# ---------------------------------------------------------------------------
# Summary table.


def summary(data: dict) -> str:
    lines = [f"gpu_suite on {data['device_kind']} ({data['backend']}), jax {data['versions']['jax']}, "
             f"{data.get('elapsed_s', 0):.0f} s{' [smoke]' if data['smoke'] else ''}"]
    sections = data["sections"]

    def cell(entry, key):
        if not isinstance(entry, dict):
            return "-"
        if "skipped" in entry:
            return "skip"
        if "error" in entry:
            return "ERR"
        return _num(entry.get(key)) + ("" if entry.get("ok", True) else "!")

    if "attention" in sections:
        lines.append("attention TFLOP/s fwd|fwd+bwd (useful with key lengths; ! = wrong vs fp32 reference)")
        lines.append(f"  {'case':22s}" + "".join(f"{impl:>18s}" for impl in ATTENTION_IMPLS))
        for case, r in sections["attention"].items():
            if "error" in r or "skipped" in r:
                lines.append(f"  {case:22s} {r.get('error') or r.get('skipped')}"[:150])
                continue
            row = f"  {case:22s}"
            for impl in ATTENTION_IMPLS:
                e = r.get(impl, {})
                if "skipped" in e:
                    row += f"{'skip':>18s}"
                    continue
                key = "useful_tflops" if r.get("key_lengths") else "tflops"
                row += f"{cell(e.get('fwd'), key) + '|' + cell(e.get('fwd_bwd'), key):>18s}"
            lines.append(row)
    if "groupnorm" in sections:
        lines.append("groupnorm+silu GB/s fwd|fwd+bwd")
        lines.append(f"  {'case':22s}" + "".join(f"{impl:>18s}" for impl in GROUPNORM_IMPLS))
        for case, r in sections["groupnorm"].items():
            if "error" in r or "skipped" in r:
                lines.append(f"  {case:22s} {r.get('error') or r.get('skipped')}"[:150])
                continue
            row = f"  {case:22s}"
            for impl in GROUPNORM_IMPLS:
                e = r.get(impl, {})
                row += f"{cell(e.get('fwd'), 'gb_per_s') + '|' + cell(e.get('fwd_bwd'), 'gb_per_s'):>18s}"
            lines.append(row)
    if "train" in sections:
        lines.append("train steps")
        for case, r in sections["train"].items():
            if "error" in r or "skipped" in r:
                lines.append(f"  {case:14s} {r.get('error') or r.get('skipped')}"[:150])
                continue
            mfu = r.get("mfu")
            lines.append(
                f"  {case:14s} batch {r['batch']:3d}  {r['step_time_ms']:8.1f} ms/step  "
                f"{r['clips_per_sec']:8.1f} clips/s  MFU {'-' if mfu is None else f'{100 * mfu:.1f}%'}"
                + (f"  compile {r['compile_s']:.0f} s" if "compile_s" in r else "")
            )
    errors = _error_lines(sections)
    if errors:
        lines.append(f"errors ({len(errors)}; full messages and tracebacks in the JSON):")
        lines += [f"  {e}"[:220] for e in errors[:20]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------


def _versions() -> dict:
    out = {"jax": jax.__version__, "python": sys.version.split()[0]}
    for pkg in ("jaxlib", "flax", "optax", "torch", "transformers", "triton"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


SECTIONS = ("attention", "groupnorm", "train")
# Seconds each section may start cases for on a GPU (the suite deadline applies on top).
SECTION_BUDGETS = {"attention": 260.0, "groupnorm": 45.0, "train": math.inf}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="JSON file, rewritten after every case")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, every code path")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="comma-separated subset of " + ",".join(SECTIONS))
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds after which no new case starts (default 400; none with --smoke)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 10; 2 with --smoke)")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {SECTIONS}")

    device = jax.devices()[0]
    peak = peak_flops(device.device_kind) if device.platform == "gpu" else None
    smoke = args.smoke
    deadline = args.deadline if args.deadline is not None else (math.inf if smoke else 400.0)
    clock = Clock(deadline)
    timing = {"reps": 2, "min_s": 0.0} if smoke else {"reps": 5, "min_s": 0.02}
    warmup, steps = (1, args.steps or 2) if smoke else (2, args.steps or 10)
    results = Results(args.out, {
        "benchmark": "gpu_suite",
        "smoke": smoke,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device_kind": device.device_kind,
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "versions": _versions(),
        "peak_bf16_flops": peak,
        "env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE", "JAX_PLATFORMS")},
        "timing": {**timing, "train_warmup": warmup, "train_steps": steps, "deadline_s": deadline},
        "machine": report.machine(),
    })
    results.save()
    print(f"gpu_suite: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"sections {sections}, deadline {deadline} s, out {args.out}", flush=True)
    for section in sections:
        clock.begin_section(math.inf if smoke else SECTION_BUDGETS[section])
        t0 = time.perf_counter()
        results.data["sections"].setdefault(section, {})
        if section == "attention":
            section_attention(results, clock, smoke=smoke, timing=timing)
        elif section == "groupnorm":
            section_groupnorm(results, clock, smoke=smoke, timing=timing)
        else:
            section_train(results, clock, smoke=smoke, warmup=warmup, steps=steps, peak=peak)
        results.data.setdefault("section_wall_s", {})[section] = round(time.perf_counter() - t0, 2)
        results.data["elapsed_s"] = round(clock.elapsed(), 2)
        results.save()
    print(summary(results.data), flush=True)


if __name__ == "__main__":
    main()
