"""The AOT pod planner: slice names, batch shapes, the HLO collective count, and real plans for a v5e.

The `tpu_aot` cases compile the quickstart train step for a v5e 2x2 slice
through libtpu (no TPU needed): the command line in a subprocess, as a
researcher runs it, and `plan` in-process as the kernel AOT tests compile.
Their checks come from outside the planner: the parameter count and the mesh
(state bytes per chip, gradient bytes summed by DP), the analytic matmul
FLOPs of a ViT step, and XLA's own unrolled program (the executed count of a
scanned stack's collectives).
"""
import json

import ml_collections
import numpy as np
import pytest

from conftest import run_module
from data.pipeline import first_example
from data.sources import VideoClassification, VideoText
from data.synthetic import VOCAB_FILE
from data.tokenizers import fixed_length, load_tokenizer
from experiments.scaling.aot_plan import ShapeSource, collectives, parse_mesh, parse_topology

DEPTH, BATCH = 2, 16  # the tiny quickstart of the tpu_aot cases: width 64, mlp 256, 8 frames of 32 px, patch 8


@pytest.mark.parametrize("name, libtpu, chips", [
    ("v5e-256", "v5e:16x16", 256),
    ("v5litepod-8", "v5e:2x4", 8),
    ("v5p-512", "v5p:4x8x8", 256),  # v5p-N counts TensorCores, two per chip
    ("v5p-8", "v5p:2x2x1", 4),
    ("v6e-256", "v6e:16x16", 256),
    ("v5e:2x2", "v5e:2x2", 4),
])
def test_slice_names(name, libtpu, chips):
    """Accelerator types map to the ICI shapes of the Cloud TPU docs; libtpu's names pass through."""
    slice_ = parse_topology(name)
    assert (slice_.topology, slice_.chips) == (libtpu, chips)


@pytest.mark.parametrize("name", ["v5p-6", "v5e-3", "v4-8", "tpu", "v6e:4"])
def test_bad_slice_names_raise(name):
    with pytest.raises(ValueError, match="topology"):
        parse_topology(name)


def test_mesh_flag():
    assert parse_mesh("fsdp:-1,tensor:4") == {"data": 1, "fsdp": -1, "tensor": 4}
    with pytest.raises(ValueError, match="mesh"):
        parse_mesh("model:4")


_HLO = """\
HloModule step

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

%cond (p: (s32[], bf16[16,8])) -> pred[] {
  %p = (s32[], bf16[16,8]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[]{:T(128)} constant(24)
  ROOT %lt = pred[]{:T(512)} compare(%i, %n), direction=LT
}

%gather_fusion (param_0: bf16[16,8]) -> bf16[64,8] {
  %param_0 = bf16[16,8]{1,0} parameter(0)
  ROOT %ag = bf16[64,8]{1,0:T(8,128)(2,1)} all-gather(%param_0), dimensions={0}, metadata={op_name="jit(step)/encoder/w"}
}

%body (p.1: (s32[], bf16[16,8])) -> (s32[], bf16[16,8]) {
  %p.1 = (s32[], bf16[16,8]{1,0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%p.1), index=0
  %w = bf16[16,8]{1,0} get-tuple-element(%p.1), index=1
  %full = bf16[64,8]{1,0} fusion(%w), kind=kCustom, calls=%gather_fusion
  %rs = bf16[16,8]{1,0} reduce-scatter(%full), dimensions={0}, to_apply=%add
  ROOT %t = (s32[], bf16[16,8]{1,0}) tuple(%i.1, %rs)
}

ENTRY %main (a: f32[1024], b: f32[8], w.1: bf16[16,8]) -> (f32[1024], f32[8]) {
  %a = f32[1024]{0} parameter(0)
  %b = f32[8]{0} parameter(1)
  %w.1 = bf16[16,8]{1,0} parameter(2)
  %ar = (f32[1024]{0}, f32[8]{0}) all-reduce(%a, %b), to_apply=%add
  %zero = s32[] constant(0)
  %init = (s32[], bf16[16,8]{1,0}) tuple(%zero, %w.1)
  %loop = (s32[], bf16[16,8]{1,0}) while(%init), condition=%cond, body=%body
  ROOT %out = (f32[1024]{0}, f32[8]{0}) tuple(%ar)
}
"""


def test_collectives_count_scanned_bodies_per_layer():
    """A 24-trip while body's ops (one inside a fusion) run 24 times; a variadic all-reduce sums its arrays."""
    found = collectives(_HLO)
    assert found["loops_with_unknown_trip_count"] == []
    kinds = found["by_kind"]
    assert kinds["all-reduce"] | {"largest": None} == {
        "ops_in_hlo": 1, "ops_per_step": 1, "bytes_per_step": (1024 + 8) * 4, "largest": None}
    # The gathered (64, 8) bf16 result; the reduce-scatter's (64, 8) operand.
    for kind in ("all-gather", "reduce-scatter"):
        assert (kinds[kind]["ops_in_hlo"], kinds[kind]["ops_per_step"], kinds[kind]["bytes_per_step"]) == (
            1, 24, 24 * 64 * 8 * 2)
    assert kinds["all-gather"]["largest"][0]["op_name"] == "jit(step)/encoder/w"
    assert kinds["all-to-all"]["ops_in_hlo"] == kinds["collective-permute"]["ops_in_hlo"] == 0


def _shapes(example):
    return {k: (np.shape(v), np.asarray(v).dtype) for k, v in example.items()}


@pytest.mark.parametrize("name", ["video_text", "video_classification"])
def test_shape_source_matches_the_loader(name):
    """ShapeSource's example has the keys, shapes and dtypes the real loader yields (in-memory frames, no file)."""
    cfg = ml_collections.ConfigDict(dict(name=name, frames=4, size=32, max_text_length=16))
    record = {"path": "in-memory", "frames": np.zeros((12, 40, 48, 3), np.uint8), "fps": 10.0,
              "label": 3, "captions": ("a red square moves left",)}
    clips = dict(train=True, frames=4, size=32, sampler="tsn", crop="multiscale")
    if name == "video_text":
        encode = fixed_length(load_tokenizer("bert", VOCAB_FILE), 16)
        loader = VideoText([record], encode_text=encode, **clips)
    else:
        loader = VideoClassification([record], **clips)
    assert _shapes(first_example(ShapeSource(cfg))) == _shapes(first_example(loader))


# ----------------------------------------------------------------------------
# Real plans for a v5e 2x2 (libtpu AOT)
# ----------------------------------------------------------------------------

def _matmul_flops() -> float:
    """Analytic FLOPs of the tiny ViT's matmuls in one train step (forward x 3), at batch BATCH.

    Per clip: 8 x (32/8)^2 = 128 tokens; per block qkv + out (4 w^2), mlp (2 w * 4w) and the
    two attention products (2 L^2 w); the patch embedding (8*8*3 -> w) and the 4-way head.
    """
    w, tokens = 64, 8 * 16
    per_token = DEPTH * (4 * w * w + 2 * w * 4 * w) + 8 * 8 * 3 * w
    forward = 2 * (tokens * per_token + DEPTH * 2 * tokens * tokens * w + w * 4)
    return 3 * forward * BATCH


@pytest.mark.tpu_aot
def test_cli_plans_quickstart_dp(tmp_path):
    """The command writes a plan whose fields agree with the mesh, the parameter count and the model."""
    pytest.importorskip("libtpu")
    out = tmp_path / "plan.json"
    proc = run_module(
        "experiments.scaling.aot_plan", "--config=configs/quickstart.py", "--topology=v5e:2x2",
        f"--config.model.depth={DEPTH}", f"--global_batch={BATCH}", f"--out={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HBM per chip" in proc.stdout
    plan = json.loads(out.read_text())
    assert plan["topology"] == {"asked": "v5e:2x2", "libtpu": "v5e:2x2", "chips": 4, "device_kind": "TPU v5 lite"}
    assert plan["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1} and plan["strategy"] == "DP"
    assert plan["command"].startswith("python -m experiments.scaling.aot_plan --config=configs/quickstart.py")
    # attention_impl='auto' on a TPU mesh: the Mosaic flash kernels (forward, then dK/dV and dQ
    # backward; a scanned stack holds one copy) run per shard inside the partitioned step.
    assert plan["attention_impl"] == ["auto"] and plan["mosaic_kernels_in_hlo"] == 3

    params = plan["params"]
    mem = plan["memory_per_chip"]
    assert mem["total_bytes"] == (mem["arguments_bytes"] + mem["outputs_bytes"] - mem["aliased_bytes"]
                                  + mem["temps_bytes"] + mem["generated_code_bytes"]) > 0
    assert mem["fits"] and mem["total_bytes"] < mem["hbm_bytes"]
    # DP replicates the fp32 params and both Adam moments on every chip, and donates them.
    assert mem["arguments_bytes"] >= 12 * params and mem["aliased_bytes"] >= 12 * params

    flops = plan["flops"]
    assert flops["per_chip"] * 4 == pytest.approx(flops["per_step"])
    # XLA counts the matmuls and, on top, norms, softmax, GELU and the optimizer.
    assert _matmul_flops() <= flops["per_step"] <= 1.5 * _matmul_flops()
    time_ = plan["step_time"]
    assert time_["roofline_s"] >= time_["roofline_compute_s"] > 0
    assert time_["roofline_compute_s"] == pytest.approx(flops["per_step"] / (4 * 197e12))

    # Every fp32 gradient is summed over the 4 data shards; nothing is gathered.
    kinds = plan["collectives"]["by_kind"]
    assert kinds["all-reduce"]["ops_per_step"] > 0 and kinds["all-reduce"]["bytes_per_step"] >= 4 * params
    assert kinds["all-gather"]["ops_per_step"] == kinds["reduce-scatter"]["ops_per_step"] == 0


@pytest.mark.tpu_aot
def test_fsdp_and_unrolled_plans(tiny_config):
    """FSDP shards the state and gathers params; a scanned stack's collectives count as in XLA's unrolled step."""
    pytest.importorskip("libtpu")
    from experiments.scaling.aot_plan import plan, tpu_devices

    v5e = parse_topology("v5e:2x2")
    devices = tpu_devices(v5e)

    def plan_for(mesh, **overrides):
        config = tiny_config(**{"model.depth": DEPTH, "batch_size": BATCH, **overrides})
        return plan(config, v5e, devices, parse_mesh(mesh))

    dp, dp_unrolled, fsdp = plan_for("data:4"), plan_for("data:4", **{"model.scan_layers": False}), plan_for("fsdp:4")
    assert dp["scan_layers"] and not dp_unrolled["scan_layers"]
    assert dp["flops"]["per_step"] == pytest.approx(dp_unrolled["flops"]["per_step"])

    ar, ar_unrolled = (p["collectives"]["by_kind"]["all-reduce"] for p in (dp, dp_unrolled))
    assert ar["ops_per_step"] > ar["ops_in_hlo"]  # per-layer gradient sums inside the scanned backward
    assert ar["bytes_per_step"] == ar_unrolled["bytes_per_step"]

    # The donated state (fp32 params and two Adam moments): replicated by DP, split 4 ways by FSDP
    # (TPU tiles pad the small shards, so not down to a quarter of DP's).
    assert fsdp["strategy"] == "FSDP" and fsdp["memory_per_chip"]["fits"]
    state, sharded = dp["memory_per_chip"]["aliased_bytes"], fsdp["memory_per_chip"]["aliased_bytes"]
    assert 12 * dp["params"] <= state and 12 * dp["params"] / 4 <= sharded < state
    gathered = fsdp["collectives"]["by_kind"]["all-gather"]
    assert gathered["ops_per_step"] > 0 and gathered["bytes_per_step"] > 0
