"""ViCLIP: golden outputs of the official code, CLIP text vs transformers, token drop, converter, presets."""
import json
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, run_module
from vfm_jax.converters import clip, viclip
from vfm_jax.models import build_model, get_model
from vfm_jax.layers.embeddings import resize_positional_embedding
from vfm_jax.models.viclip import temporal_embedding
from vfm_jax.tools.check_fixture import check

FIXTURE = pathlib.Path(ROOT) / "tests" / "fixtures" / "viclip"
OUTPUTS = {
    "video_embeds", "video_embeds_norm", "text_embeds", "text_embeds_norm", "sims", "label_probs",
    "vision_ln_pre_out", "vision_ln_post_out", "text_ln_final_out",
}
AXES = {"batch", "length", "frames", "embed", "mlp", "heads", "head_dim", "kv", "vocab", "layers", "conv_in", None}


def _weights():
    return dict(np.load(FIXTURE / "state_dict.npz"))


def _convert(weights=None, **kwargs):
    config = json.loads((FIXTURE / "config.json").read_text())
    return viclip.convert_viclip(
        _weights() if weights is None else weights, num_heads=config["vision_encoder_ctor"]["heads"],
        text_num_heads=config["text_encoder_ctor"]["transformer_heads"], **kwargs,
    )


def _video():
    return np.transpose(np.load(FIXTURE / "inputs.npz")["video"], (0, 1, 3, 4, 2))  # -> (B, T, H, W, C)


def test_fixture_parity_in_process(tmp_path):
    errors = check(FIXTURE)
    assert set(errors) == OUTPUTS
    assert max(errors.values()) <= 1e-4, errors

    broken = tmp_path / "viclip"
    shutil.copytree(FIXTURE, broken)
    weights = _weights()
    weights["vision_encoder.temporal_positional_embedding"][0, 1, :8] += 0.05  # not uniform: ln_pre would cancel it
    np.savez(broken / "state_dict.npz", **weights)
    assert max(check(broken).values()) > 1e-4


def test_check_fixture_cli():
    proc = run_module("vfm_jax.tools.check_fixture", str(FIXTURE))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert {line.split(":")[0] for line in lines[:-1]} == OUTPUTS
    assert lines[-1].startswith("max abs error ") and float(lines[-1].split()[-1]) <= 1e-4


def test_converter_rejects_unexpected_and_missing_keys():
    weights = _weights()
    with pytest.raises(ValueError, match="not mapped.*vision_encoder.transformer.resblocks.0.attn.k_bias"):
        _convert({**weights, "vision_encoder.transformer.resblocks.0.attn.k_bias": np.zeros(32)})
    with pytest.raises(ValueError, match="not mapped.*logit_scale"):
        _convert({**weights, "logit_scale": np.zeros(())})
    del weights["text_encoder.ln_final.bias"]
    with pytest.raises(KeyError, match="ln_final.bias"):
        _convert(weights)
    with pytest.raises(KeyError, match="temp"):
        _convert({k: v for k, v in _weights().items() if k != "temp"})


def test_convert_cli_reads_a_torch_checkpoint(tmp_path):
    """`{'model': state_dict}` saved by torch -> `python -m vfm_jax.convert --model viclip` -> load_pretrained."""
    import torch

    import vfm_jax

    weights = _weights()
    torch.save({"model": {k: torch.from_numpy(v) for k, v in weights.items()}, "epoch": 9}, tmp_path / "v.pth")
    out = tmp_path / "converted"
    proc = run_module("vfm_jax.convert", "--model=viclip", f"--src={tmp_path / 'v.pth'}", f"--out={out}",
                      "--num_heads=4", "--text_num_heads=4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    model, variables = vfm_jax.load_pretrained(out)
    spec, direct = _convert()
    assert spec["vision"]["num_frames"] == 4 and spec["text"]["context_length"] == 32 and spec["embed_dim"] == 16
    assert model.vision["num_heads"] == 4 and model.text["num_heads"] == 4
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(direct)):
        np.testing.assert_array_equal(np.asarray(a), b)


def _hf_text_to_openai(hf: dict, depth: int) -> dict:
    """transformers CLIPTextModelWithProjection state dict -> OpenAI text-tower names."""
    t = "text_model."
    state = {
        "token_embedding.weight": hf[t + "embeddings.token_embedding.weight"],
        "positional_embedding": hf[t + "embeddings.position_embedding.weight"],
        "ln_final.weight": hf[t + "final_layer_norm.weight"],
        "ln_final.bias": hf[t + "final_layer_norm.bias"],
        "text_projection": hf["text_projection.weight"].T,
    }
    for i in range(depth):
        h, o = f"{t}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            state[f"{o}attn.in_proj_{p}"] = np.concatenate([hf[f"{h}self_attn.{n}_proj.{p}"] for n in "qkv"])
            for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                 ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                state[f"{o}{ours}.{p}"] = hf[f"{h}{theirs}.{p}"]
    assert len(state) == len(hf) - 4 * depth  # every HF weight used once (q/k/v packed: 6 -> 2)
    return state


@pytest.mark.parity
def test_clip_text_matches_transformers():
    """Causal blocks, EOT pooling and projection vs HF (its eos_token_id pooling = argmax when EOT is the top id)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    vocab, depth, context = 64, 2, 16
    config = CLIPTextConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=128, num_hidden_layers=depth, num_attention_heads=4,
        max_position_embeddings=context, projection_dim=16, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=0, attn_implementation="eager",
    )
    torch.manual_seed(0)
    hf = CLIPTextModelWithProjection(config).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            param.copy_(base + 0.2 * torch.randn_like(param))
    # L = 12 < context: the position table is sliced. SOT, content, EOT, then zero padding.
    eot = np.array([3, 7, 11])
    rng = np.random.default_rng(0)
    ids = rng.integers(1, vocab - 2, (3, 12))
    ids[:, 0] = vocab - 2
    ids[np.arange(3), eot] = vocab - 1
    ids[np.arange(12)[None] > eot[:, None]] = 0
    with torch.no_grad():
        want = hf(input_ids=torch.from_numpy(ids))
    state = _hf_text_to_openai({k: v.numpy() for k, v in hf.state_dict().items() if "position_ids" not in k}, depth)
    spec, variables = clip.convert_clip_text(state, num_heads=4)
    assert spec["context_length"] == context and spec["vocab_size"] == vocab
    model = build_model(spec)
    got = model.apply(variables, ids)
    hidden = want.last_hidden_state.numpy()
    errors = {
        "tokens": np.abs(got["tokens"] - hidden).max(),
        "pooled": np.abs(got["pooled"] - hidden[np.arange(3), eot]).max(),
        "embedding": np.abs(got["embedding"] - want.text_embeds.numpy()).max(),
    }
    assert max(errors.values()) <= 1e-4, errors
    # Explicit positions pool there (for tokenizers whose EOT is not the largest id).
    other = model.apply(variables, ids, eot_positions=jnp.array([1, 2, 5]))["pooled"]
    np.testing.assert_allclose(other, hidden[np.arange(3), [1, 2, 5]], atol=1e-4)


def test_token_drop_in_training_only():
    """Train: int(0.9 * T*N) patch tokens leave before ln_pre (CLS kept); rngs pick different ones; eval keeps all."""
    spec, variables = _convert()
    model = build_model(spec)
    video = _video()
    b, t = video.shape[:2]
    n = (video.shape[2] // spec["vision"]["patch_size"]) ** 2
    kept = t * n - int(0.9 * t * n)

    @jax.jit
    def train_step(seed):
        return model.apply(
            variables, video, method=lambda m, v: m.vision_encoder(v, train=True), mutable=["intermediates"],
            rngs={"masking": jax.random.key(seed), "droppath": jax.random.key(seed)},
        )

    def run(train, seed=0):
        if train:
            return train_step(seed)
        return model.apply(variables, video, method=lambda m, v: m.vision_encoder(v), mutable=["intermediates"])

    (evaluated, state) = run(False)
    assert evaluated["tokens"].shape == (b, 1 + t * n, 32)
    assert "kept_indices" not in state["intermediates"]["vision_encoder"]
    full = state["intermediates"]["vision_encoder"]["ln_pre_out"][0]

    picks = []
    for seed in (0, 0, 1):
        out, state = run(True, seed)
        inter = state["intermediates"]["vision_encoder"]
        assert out["tokens"].shape == (b, 1 + kept, 32) and out["embedding"].shape == (b, 16)
        idx = np.asarray(inter["kept_indices"][0])
        assert idx.shape == (b, kept) and np.all(np.diff(idx, axis=1) > 0)
        # ln_pre is per token, so the encoder input is the full sequence at CLS + the kept positions.
        rows = np.concatenate([np.zeros((b, 1), int), 1 + idx], axis=1)
        np.testing.assert_allclose(inter["ln_pre_out"][0], np.take_along_axis(full, rows[..., None], 1), atol=1e-5)
        picks.append(idx)
    np.testing.assert_array_equal(picks[0], picks[1])
    assert not np.array_equal(picks[0], picks[2])
    assert not np.array_equal(picks[0][0], picks[0][1])  # each video draws its own tokens


def test_single_frame_is_a_clip_image_tower_with_the_mean_temporal_embedding():
    """T = 1: the official forward adds the temporal table's mean; otherwise it is CLIP's image encoder."""
    weights = _weights()
    spec, variables = _convert(weights)
    frame = _video()[:, :1]
    ours = build_model(spec).apply(variables, frame, method=lambda m, v: m.vision_encoder(v))

    vision = {k[len("vision_encoder."):]: v for k, v in weights.items() if k.startswith("vision_encoder.")}
    temporal = vision.pop("temporal_positional_embedding")[0]
    vision["positional_embedding"] = vision["positional_embedding"] + np.concatenate(
        [np.zeros((1, temporal.shape[1]), np.float32), np.broadcast_to(temporal.mean(0), (16, temporal.shape[1]))]
    )
    clip_spec, clip_vars = clip.convert_clip_visual(vision, num_heads=4)
    theirs = build_model(clip_spec).apply(clip_vars, frame[:, 0])
    np.testing.assert_allclose(ours["embedding"], theirs["embedding"], atol=1e-5)


@pytest.mark.parity
def test_temporal_embedding_follows_the_official_loader():
    import torch
    import torch.nn.functional as F

    table = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    for frames in (5, 8, 11):
        want = F.interpolate(torch.from_numpy(table.T)[None], frames, mode="linear")[0].T.numpy()
        np.testing.assert_allclose(temporal_embedding(jnp.asarray(table), frames), want, atol=1e-6)
    np.testing.assert_array_equal(temporal_embedding(jnp.asarray(table), 3), table[:3])
    np.testing.assert_allclose(temporal_embedding(jnp.asarray(table), 1), table.mean(0, keepdims=True), atol=1e-6)


def test_other_resolution_and_frame_count():
    """48x48 inputs with a 32x32 table and 6 frames with a 4-frame table run; the class row is not resized."""
    spec, variables = _convert()
    table = variables["params"]["vision_encoder"]["positional_embedding"]
    assert resize_positional_embedding(table, (4, 4)) is table
    resized = resize_positional_embedding(jnp.asarray(table), (6, 6))
    assert resized.shape == (37, 32)
    np.testing.assert_array_equal(resized[0], table[0])
    video = np.random.default_rng(0).standard_normal((1, 6, 48, 48, 3)).astype(np.float32)
    out = build_model(spec).apply(variables, video, method=lambda m, v: m.vision_encoder(v))
    assert out["tokens"].shape == (1, 1 + 36 * 6, 32) and np.all(np.isfinite(out["embedding"]))


def test_call_embeddings_and_temperature():
    spec, variables = _convert()
    model = build_model(spec)
    ids = np.load(FIXTURE / "inputs.npz")["text_ids"]
    out = jax.jit(model.apply)(variables, _video(), ids)
    np.testing.assert_allclose(np.linalg.norm(out["video_embedding"], axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out["text_embedding"], axis=-1), 1.0, atol=1e-6)
    assert out["video_embedding"].shape == (2, 16) and out["text_embedding"].shape == (3, 16)
    np.testing.assert_allclose(out["temperature"], 0.01, rtol=1e-6)
    low = jax.tree.map(lambda x: x, variables)
    low["params"]["temp"] = np.float32(0.001)
    assert float(model.apply(low, method=model.temperature)) == pytest.approx(0.01)  # clamped at temp_min


@pytest.mark.parametrize("name, width, patch, embed, text_width", [
    ("viclip_b16", 768, 16, 512, 512), ("viclip_l14", 1024, 14, 768, 768),
])
def test_presets_build(name, width, patch, embed, text_width):
    model = get_model(name)
    video = jax.ShapeDtypeStruct((1, 8, 224, 224, 3), jnp.float32)
    ids = jax.ShapeDtypeStruct((1, 32), jnp.int32)
    boxed = jax.eval_shape(model.init, jax.random.key(0), video, ids)["params"]
    leaves = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), where
        assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= AXES, where
    params = nn.unbox(boxed)
    vision, text = params["vision_encoder"], params["text_encoder"]
    assert vision["conv1"]["kernel"].shape == (patch, patch, 3, width)
    assert vision["positional_embedding"].shape == ((224 // patch) ** 2 + 1, width)
    assert vision["temporal_positional_embedding"].shape == (8, width)
    assert vision["proj"].shape == (width, embed)
    assert text["token_embedding"]["embedding"].shape == (49408, text_width)
    assert text["positional_embedding"].shape == (32, text_width)
    assert text["text_projection"].shape == (text_width, embed)
    assert params["temp"].shape == ()
