"""The benchmark suites run end to end (`--smoke`), and the GPU suite imports without the data stack.

Times are never asserted: only that every section and case is there and
nothing failed (cuDNN, GPU-only, is recorded as skipped on CPU).
"""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, run_module, subprocess_env

# Not on the GPU image (or not needed there): importing any of them must fail the GPU suite.
BLOCKED = ("grain", "clu", "ml_collections", "tensorflow", "tensorflow_datasets", "av", "PIL")

_RUN_BLOCKED = """
import importlib.abc, runpy, sys
BLOCKED = set(sys.argv[1].split(","))
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"import of {name} blocked: not on the GPU image", name=name)
        return None
sys.meta_path.insert(0, Blocker())
sys.argv = [sys.argv[2], *sys.argv[3:]]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _errors(tree, path=""):
    """Paths of every dict with an "error" or "skipped" entry, except cuDNN's GPU-only skip."""
    found = []
    if isinstance(tree, dict):
        if "error" in tree:
            found.append(f"{path}: {tree['error']}")
        if "skipped" in tree and not (path.endswith("/cudnn") and tree["skipped"] == "needs GPU"):
            found.append(f"{path}: {tree['skipped']}")
        for key, value in tree.items():
            found += _errors(value, f"{path}/{key}")
    return found


def _check(proc, out):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    with open(out) as f:
        return json.load(f)


@pytest.mark.slow
def test_gpu_suite_smoke_without_data_stack(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_BLOCKED, ",".join(BLOCKED), "experiments.bench.gpu_suite",
         "--smoke", "--out", str(out)],
        cwd=ROOT, env=subprocess_env(1), capture_output=True, text=True, timeout=900,
    )
    data = _check(proc, out)
    assert data["smoke"] and data["backend"] == "cpu"
    sections = data["sections"]
    assert set(sections) == {"attention", "groupnorm", "train"}
    assert _errors(sections) == []
    for case in sections["attention"].values():
        assert case["cudnn"] == {"skipped": "needs GPU"}
        for impl in ("pallas", "xla"):
            assert set(case[impl]) == {"fwd", "fwd_bwd", "wall_s"}
            for mode in ("fwd", "fwd_bwd"):
                assert case[impl][mode]["tflops"] > 0
        # The harness itself: XLA in bf16 agrees with the fp32 reference.
        assert case["xla"]["fwd"]["ok"] and case["xla"]["fwd_bwd"]["ok"]
    for case in sections["groupnorm"].values():
        for impl in ("pallas", "xla"):
            assert case[impl]["fwd"]["gb_per_s"] > 0 and case[impl]["fwd_bwd"]["gb_per_s"] > 0
        assert case["xla"]["fwd"]["ok"] and case["xla"]["fwd_bwd"]["ok"]
    train = sections["train"]
    assert set(train) == {"umt_jax", "viclip_jax", "umt_torch", "viclip_torch"}
    for name, r in train.items():
        assert r["finite"] and r["clips_per_sec"] > 0 and r["model_tflop_per_step"] > 0, name
    # XLA's count (lowered for CPU, as on a GPU host) is within a fifth of the analytic model FLOPs.
    for name in ("umt_jax", "viclip_jax"):
        assert train[name]["xla_tflop_per_step"] == pytest.approx(train[name]["model_tflop_per_step"], rel=0.2)
    # Same models on both sides: the trainable parameter counts agree.
    assert train["umt_jax"]["params"] == train["umt_torch"]["trainable_params"]
    assert train["viclip_jax"]["params"] == train["viclip_torch"]["trainable_params"]
    assert "gpu_suite on cpu" in proc.stdout  # the summary table is printed


@pytest.mark.slow
def test_cpu_suite_smoke(tmp_path):
    out = tmp_path / "cpu.json"
    proc = run_module("experiments.bench.cpu_suite", "--smoke", "--out", str(out), timeout=900)
    data = _check(proc, out)
    sections = data["sections"]
    assert set(sections) == {"train", "compile", "memory"}
    assert _errors(sections) == []
    assert {"umt_jax", "viclip_jax", "umt_torch", "viclip_torch"} <= set(sections["train"])
    assert {r["scan_layers"] for r in sections["compile"].values()} == {True, False}
    memory = sections["memory"]
    assert memory["remat_full"]["temp_size_in_bytes"] <= memory["remat_none"]["temp_size_in_bytes"]


def test_flop_counts():
    from experiments.bench import gpu_suite

    # One B/16 block over 197 tokens: 24 D^2 L + 4 L^2 D.
    assert gpu_suite.blocks_flops(197, 768, 1) == 24 * 768**2 * 197 + 4 * 197**2 * 768
    umt = gpu_suite.umt_flops(gpu_suite.UMT_B16)
    assert umt["total"] == umt["teacher_forward"] + umt["student_forward_backward"]
    # 80% masking: the student's blocks see 320 of 1568 tokens; the teacher costs more than the student forward.
    assert umt["teacher_forward"] > umt["student_forward_backward"] / 3
    viclip = gpu_suite.viclip_flops(gpu_suite.VICLIP_B16)
    assert viclip["total"] > viclip["vision"] + viclip["text"]
    assert gpu_suite.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_suite.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_suite.peak_flops("cpu") is None


def test_umt_bench_step_is_the_task_step():
    """The suite's UMT stage-1 loss (built without the task module) equals UMTStage1Task.loss_fn."""
    from configs.umt.stage1 import get_config
    from experiments.bench import gpu_suite
    from vfm_jax.tasks.common import normalize_video
    from vfm_jax.tasks.umt import UMTStage1Task

    spec = gpu_suite.UMT_TINY
    config = get_config("model=tiny")
    s, t = spec["student"], spec["teacher"]
    config.model.update(width=s["width"], depth=s["depth"], num_heads=s["num_heads"], patch_size=s["patch_size"],
                        clip_output_dim=t["output_dim"], clip_return_layers=spec["return_layers"],
                        drop_path_rate=0.0)
    config.task.teacher.update(width=t["width"], depth=t["depth"], num_heads=t["num_heads"],
                               patch_size=t["patch_size"], image_size=spec["image_size"], output_dim=t["output_dim"])
    task = UMTStage1Task(config)
    raw = np.random.default_rng(0).integers(0, 256, (2, spec["frames"], spec["image_size"], spec["image_size"], 3))
    batch = {"video": jnp.asarray(raw, jnp.uint8)}
    variables = task.init(jax.random.key(0), batch)
    rng = jax.random.key(3)
    expected, _ = task.loss_fn(variables["params"], {"teacher": variables["teacher"]}, batch, rng)

    _, loss_fn, _ = gpu_suite.umt_stage1(spec, dtype=jnp.float32)
    video = normalize_video(batch["video"], config.task.normalization)
    got = loss_fn(variables["params"], variables["teacher"], video, rng)
    np.testing.assert_allclose(float(got), float(expected), rtol=1e-6)
