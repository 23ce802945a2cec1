"""UMT fine-tuned classifier: converter vs the official code's golden outputs, and convert -> evaluate."""
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from conftest import ROOT, run_module
from vfm_jax.converters import umt
from vfm_jax.models import build_model
from vfm_jax.tools.check_fixture import check

FIXTURE = pathlib.Path(ROOT) / "tests" / "fixtures" / "umt_finetune"


def test_fixture_parity_in_process():
    errors = check(FIXTURE)
    assert set(errors) == {"logits", "pooled_features", "tokens", "embed_tokens"}
    assert max(errors.values()) <= 1e-4, errors


def test_check_fixture_cli_passes_and_fails(tmp_path):
    proc = run_module("vfm_jax.tools.check_fixture", str(FIXTURE))
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("max abs error ") and float(last.split()[-1]) <= 1e-4

    broken = tmp_path / "umt_finetune"
    shutil.copytree(FIXTURE, broken)
    weights = dict(np.load(broken / "state_dict.npz"))
    weights["blocks.1.attn.v_bias"] = weights["blocks.1.attn.v_bias"] + 0.01
    np.savez(broken / "state_dict.npz", **weights)
    proc = run_module("vfm_jax.tools.check_fixture", str(broken))
    assert proc.returncode != 0
    assert float(proc.stdout.strip().splitlines()[-1].split()[-1]) > 1e-4


def _fixture_weights():
    return dict(np.load(FIXTURE / "state_dict.npz"))


def test_unexpected_and_missing_keys_fail():
    weights = _fixture_weights()
    with pytest.raises(ValueError, match="not mapped.*blocks.0.attn.k_bias"):
        umt.convert_classifier({**weights, "blocks.0.attn.k_bias": np.zeros(64)}, num_heads=4)
    del weights["fc_norm.bias"]
    with pytest.raises(KeyError, match="fc_norm.bias"):
        umt.convert_classifier(weights, num_heads=4)


def test_scanned_and_unrolled_layouts_agree():
    config = json.loads((FIXTURE / "config.json").read_text())
    video = np.transpose(np.load(FIXTURE / "inputs.npz")["video"], (0, 2, 3, 4, 1))
    outs = []
    for scan in (True, False):
        spec, variables = umt.convert_classifier(
            _fixture_weights(), num_heads=config["constructor_kwargs"]["num_heads"], scan_layers=scan
        )
        assert spec["pos_embedding"] == "learned" and spec["depth"] == 2 and spec["num_classes"] == 10
        outs.append(np.asarray(build_model(spec).apply(variables, video)))
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)


@pytest.mark.parity
def test_convert_then_evaluate_a_tiny_random_model(tmp_path):
    """A torch-saved state dict shaped like the quickstart model -> convert CLI -> evaluate CLI."""
    import torch

    from configs.quickstart import get_config

    model = get_config().model
    width, depth, classes, patch = model.width, model.depth, model.num_classes, model.patch_size
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    state = {"patch_embed.proj.weight": rand(width, 3, 1, patch, patch), "patch_embed.proj.bias": rand(width)}
    for i in range(depth):
        p = f"blocks.{i}."
        state.update({
            p + "norm1.weight": 1 + rand(width), p + "norm1.bias": rand(width),
            p + "attn.qkv.weight": rand(3 * width, width), p + "attn.q_bias": rand(width),
            p + "attn.v_bias": rand(width), p + "attn.proj.weight": rand(width, width),
            p + "attn.proj.bias": rand(width), p + "norm2.weight": 1 + rand(width),
            p + "norm2.bias": rand(width), p + "mlp.fc1.weight": rand(4 * width, width),
            p + "mlp.fc1.bias": rand(4 * width), p + "mlp.fc2.weight": rand(width, 4 * width),
            p + "mlp.fc2.bias": rand(width),
        })
    state.update({"fc_norm.weight": 1 + rand(width), "fc_norm.bias": rand(width),
                  "head.weight": rand(classes, width), "head.bias": rand(classes)})
    torch.save({"model": state, "epoch": 3}, tmp_path / "tiny.pth")

    out = tmp_path / "converted"
    proc = run_module("vfm_jax.convert", "--model=umt_classifier", f"--src={tmp_path / 'tiny.pth'}",
                      f"--out={out}", f"--num_heads={model.num_heads}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_module("vfm_jax.evaluate", "--config=configs/quickstart.py", f"--checkpoint={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "val_top1=" in proc.stdout.strip().splitlines()[-1]

    import vfm_jax

    loaded, variables = vfm_jax.load_pretrained(out)  # the written checkpoint round-trips
    spec, direct = umt.convert_classifier({k: v.numpy() for k, v in state.items()}, num_heads=model.num_heads)
    assert loaded.pos_embedding == "sinusoid" and loaded.depth == depth
    video = np.random.default_rng(0).normal(size=(1, 8, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(loaded.apply(variables, video)), np.asarray(build_model(spec).apply(direct, video))
    )


@pytest.mark.parametrize("converter, weights", [("umt_pretrain", "student_state_dict.npz"),
                                                ("clip_visual", "teacher_state_dict.npz")])
def test_convert_cli_for_stage1_checkpoints(tmp_path, converter, weights):
    """The stage-1 student and the CLIP teacher through `python -m vfm_jax.convert`, loaded back."""
    import vfm_jax
    from vfm_jax.convert import CONVERTERS
    from vfm_jax.converters.torch_io import load_weights

    src = pathlib.Path(ROOT) / "tests" / "fixtures" / "umt_pretrain" / weights
    proc = run_module("vfm_jax.convert", f"--model={converter}", f"--src={src}", f"--out={tmp_path}",
                      "--num_heads=4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    model, variables = vfm_jax.load_pretrained(tmp_path)
    _, direct = CONVERTERS[converter](load_weights(src), num_heads=4)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(direct)):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert model.num_heads == 4
