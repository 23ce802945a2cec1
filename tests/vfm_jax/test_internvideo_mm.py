"""InternVideo-MM: golden outputs of the official code, converter, per-frame patch drop, text masking, presets."""
import argparse
import json
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, run_module
from vfm_jax.converters import internvideo_mm
from vfm_jax.layers.uniblocks import GlobalUniBlock
from vfm_jax.models import build_model, get_model
from vfm_jax.tools.check_fixture import check

FIXTURE = pathlib.Path(ROOT) / "tests" / "fixtures" / "internvideo_mm"
OUTPUTS = {
    "video_embeds", "text_embeds", "video_embeds_norm", "text_embeds_norm", "logits_per_video", "probs",
    "video_feats_pre_ln_post", "global_cls_token_out", "vision_ln_pre_out", "video_backbone_tokens",
    "text_tokens_ln_final",
}
AXES = {"batch", "length", "frames", "embed", "mlp", "heads", "head_dim", "kv", "vocab", "layers", "conv_in", None}


def _weights():
    return dict(np.load(FIXTURE / "state_dict.npz"))


def _convert(weights=None, **kwargs):
    return internvideo_mm.convert_internvideo_mm(
        _weights() if weights is None else weights, num_heads=4, text_num_heads=4, **kwargs
    )


def _video():
    return np.transpose(np.load(FIXTURE / "inputs.npz")["video"], (0, 2, 3, 4, 1))  # (B, C, T, H, W) -> (B, T, H, W, C)


def test_fixture_parity_and_a_perturbed_weight_fails(tmp_path):
    errors = check(FIXTURE)
    assert set(errors) == OUTPUTS
    assert max(errors.values()) <= 1e-4, errors

    broken = tmp_path / "internvideo_mm"
    shutil.copytree(FIXTURE, broken)
    weights = _weights()
    weights["visual.transformer.dpe.1.weight"][:, 0, 0, 1, 1] += 0.05  # a global block's DPE only
    np.savez(broken / "state_dict.npz", **weights)
    errors = check(broken)
    assert errors["video_embeds"] > 1e-4 and errors["text_embeds"] <= 1e-4


def test_check_fixture_cli():
    proc = run_module("vfm_jax.tools.check_fixture", str(FIXTURE))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert {line.split(":")[0] for line in lines[:-1]} == OUTPUTS
    assert float(lines[-1].split()[-1]) <= 1e-4


def test_spec_from_shapes_and_key_coverage():
    spec, _ = _convert()
    config = json.loads((FIXTURE / "config.json").read_text())["visual_backbone_ctor"]
    assert spec["vision"]["global_layers"] == config["return_list"]
    assert (spec["vision"]["depth"], spec["vision"]["image_size"], spec["embed_dim"]) == (6, 32, 16)
    assert spec["text"]["context_length"] == 77 and spec["text"]["vocab_size"] == 512
    weights = _weights()
    with pytest.raises(ValueError, match="not mapped.*visual.transformer.dec.0.attn.k_bias"):
        _convert({**weights, "visual.transformer.dec.0.attn.k_bias": np.zeros(32)})
    del weights["visual.transformer.dec.3.ln_3.bias"]
    with pytest.raises(KeyError, match="dec.3.ln_3.bias"):
        _convert(weights)


def test_convert_cli_reads_the_lightning_checkpoint(tmp_path):
    """{'state_dict': {'clip.*': ..., other modules}} as the release -> `python -m vfm_jax.convert` -> load_pretrained."""
    import torch

    import vfm_jax

    weights = {f"clip.{k}": torch.from_numpy(v) for k, v in _weights().items()}
    weights["mlm_head.weight"] = torch.zeros(3)  # not part of the CLIP model: dropped as the official loader does
    hyper = argparse.Namespace(lr=1e-4)  # Lightning keeps the run's hyper-parameters as objects
    torch.save({"state_dict": weights, "epoch": 4, "hyper_parameters": hyper}, tmp_path / "mm.ckpt")
    out = tmp_path / "converted"
    args = ["--model=internvideo_mm", f"--src={tmp_path / 'mm.ckpt'}", f"--out={out}", "--num_heads=4",
            "--text_num_heads=4"]
    proc = run_module("vfm_jax.convert", *args)
    assert proc.returncode != 0 and "Namespace" in proc.stderr
    proc = run_module("vfm_jax.convert", *args, "--allow_unknown_classes")
    assert proc.returncode == 0, proc.stderr[-2000:]
    model, variables = vfm_jax.load_pretrained(out)
    expected = np.load(FIXTURE / "outputs.npz")
    video = model.apply(variables, _video(), method="encode_video")
    np.testing.assert_allclose(video, expected["video_embeds_norm"], atol=1e-5)


def _train_apply(model, variables, video, seed, method):
    return model.apply(
        variables, video, method=method, mutable=["intermediates"],
        rngs={"masking": jax.random.key(seed), "dropout": jax.random.key(seed), "droppath": jax.random.key(seed)},
    )


def test_patch_drop_keeps_the_same_count_per_frame_and_really_drops():
    """Training drops int(ratio * P) patches per frame at the frame's own positions; their pixels then do not matter."""
    spec, variables = _convert()
    spec["vision"] = {**spec["vision"], "drop_ratio": 0.75}
    model = build_model(spec)
    video = _video()
    b, t = video.shape[:2]
    p = spec["vision"]["patch_size"]
    n = (video.shape[2] // p) ** 2
    kept = n - int(0.75 * n)

    encode = jax.jit(lambda v, x, s: _train_apply(model, v, x, s, lambda m, x: m.vision_encoder(x, train=True)))
    out, state = encode(variables, video, 0)
    idx = np.asarray(state["intermediates"]["vision_encoder"]["kept_indices"][0])
    assert out["tokens"].shape == (b, t, 1 + kept, 32) and idx.shape == (b, t, kept)
    assert np.all(np.diff(idx, axis=-1) > 0)
    assert len({tuple(row) for row in idx.reshape(-1, kept)}) > 1  # frames draw their own positions

    # Overwrite every dropped patch's pixels: the embedding must not move.
    noisy = video.copy()
    g = video.shape[2] // p
    for bi in range(b):
        for ti in range(t):
            for patch in sorted(set(range(n)) - set(idx[bi, ti].tolist())):
                r, c = divmod(patch, g)
                noisy[bi, ti, r * p:(r + 1) * p, c * p:(c + 1) * p] = 9.0
    again, _ = encode(variables, noisy, 0)
    np.testing.assert_allclose(again["embedding"], out["embedding"], atol=1e-5)
    other, _ = encode(variables, noisy, 1)  # another draw sees some of the noise
    assert np.max(np.abs(other["embedding"] - out["embedding"])) > 1e-3

    evaluated = model.apply(variables, video, method=lambda m, x: m.vision_encoder(x))
    assert evaluated["tokens"].shape == (b, t, 1 + n, 32)  # no drop outside training


def test_global_block_with_every_patch_kept_is_the_full_block():
    """The scatter-conv-gather DPE for dropped tokens reduces to the plain DPE when nothing is dropped."""
    block = GlobalUniBlock(num_heads=4)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.normal(size=(2, 3, 1 + 16, 32)), jnp.float32)
    query = jnp.asarray(rng.normal(size=(2, 1, 32)), jnp.float32)
    variables = block.init(jax.random.key(0), query, tokens, grid=(4, 4))
    variables = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), variables)
    full = block.apply(variables, query, tokens, grid=(4, 4))
    kept = np.broadcast_to(np.arange(16), (2, 3, 16))
    np.testing.assert_allclose(block.apply(variables, query, tokens, grid=(4, 4), kept=kept), full, atol=1e-5)


def test_text_mask_embedding_replaces_masked_tokens():
    spec, variables = _convert()
    model = build_model(spec)
    ids = np.load(FIXTURE / "inputs.npz")["text_ids"]
    mask = np.zeros(ids.shape, bool)
    mask[:, 2] = True
    plain = model.apply(variables, ids, method="encode_text")
    masked = model.apply(variables, ids, token_mask=mask, method="encode_text")
    assert np.max(np.abs(masked - plain)) > 1e-3
    other = ids.copy()
    other[:, 2] = 7  # a different token under the mask gives the same result
    np.testing.assert_allclose(model.apply(variables, other, token_mask=mask, method="encode_text"), masked, atol=1e-6)
    np.testing.assert_allclose(model.apply(variables, ids, token_mask=np.zeros_like(mask), method="encode_text"),
                               plain, atol=1e-6)


@pytest.mark.parametrize("name, width, patch, embed, blocks", [
    ("internvideo_mm_b16", 768, 16, 512, 4), ("internvideo_mm_l14", 1024, 14, 768, 4),
])
def test_presets_build(name, width, patch, embed, blocks):
    model = get_model(name)
    video = jax.ShapeDtypeStruct((1, 8, 224, 224, 3), jnp.float32)
    ids = jax.ShapeDtypeStruct((1, 77), jnp.int32)
    boxed = jax.eval_shape(model.init, jax.random.key(0), video, ids)["params"]
    leaves = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), where
        assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= AXES, where
    params = nn.unbox(boxed)
    vision = params["vision_encoder"]
    assert vision["conv1"]["kernel"].shape == (patch, patch, 3, width)
    assert sorted(k for k in vision["global_blocks"] if k.startswith("block_")) == [f"block_{j}" for j in range(blocks)]
    assert vision["proj"].shape == (width, embed)
    assert params["text_mask_embedding"].shape == (params["text_encoder"]["positional_embedding"].shape[1],)


def test_depthwise_conv_is_the_grouped_conv():
    """The DPE's shifted multiply-adds equal a grouped nn.Conv with the same params (values and gradients)."""
    from vfm_jax.layers.uniblocks import DepthwiseConv3D

    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 3, 5, 6)), jnp.float32)
    ours = DepthwiseConv3D()
    variables = nn.unbox(ours.init(jax.random.key(0), x))
    variables = jax.tree.map(lambda v: v + 0.3, variables)  # a non-zero bias too
    grouped = nn.Conv(6, kernel_size=(3, 3, 3), padding=1, feature_group_count=6)
    f = lambda m: lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))  # noqa: E731
    np.testing.assert_allclose(ours.apply(variables, x), grouped.apply(variables, x), atol=1e-5)
    for a, b in zip(jax.tree.leaves(jax.grad(f(ours), argnums=(0, 1))(variables, x)),
                    jax.tree.leaves(jax.grad(f(grouped), argnums=(0, 1))(variables, x))):
        np.testing.assert_allclose(a, b, atol=1e-4)
