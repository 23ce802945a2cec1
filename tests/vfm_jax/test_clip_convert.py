"""Full CLIP (OpenAI / OpenCLIP layout): converter vs transformers `CLIPModel`, context cut, layouts, CLI, subtrees."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_module
from vfm_jax.converters import clip
from vfm_jax.models import build_model, get_model

VISION = dict(width=32, depth=2, heads=4, image=24, patch=6)
TEXT = dict(vocab=64, width=48, depth=2, heads=4, context=16)
EMBED = 16
AXES = {"batch", "length", "frames", "embed", "mlp", "heads", "head_dim", "kv", "vocab", "layers", "conv_in", None}


def _hf_model(activation: str, seed: int = 0):
    """A tiny transformers CLIPModel, every weight random (LayerNorm scales around 1, logit_scale 3)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(
            vocab_size=TEXT["vocab"], hidden_size=TEXT["width"], intermediate_size=4 * TEXT["width"],
            num_hidden_layers=TEXT["depth"], num_attention_heads=TEXT["heads"],
            max_position_embeddings=TEXT["context"], hidden_act=activation, layer_norm_eps=1e-5,
            bos_token_id=TEXT["vocab"] - 2, eos_token_id=TEXT["vocab"] - 1, pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=VISION["width"], intermediate_size=4 * VISION["width"], num_hidden_layers=VISION["depth"],
            num_attention_heads=VISION["heads"], image_size=VISION["image"], patch_size=VISION["patch"],
            hidden_act=activation, layer_norm_eps=1e-5,
        ),
        projection_dim=EMBED, attn_implementation="eager",
    )
    torch.manual_seed(seed)
    hf = CLIPModel(config).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            param.copy_(base + 0.2 * torch.randn_like(param))
        hf.logit_scale.fill_(3.0)
    return hf


def _openai_layout(hf: dict) -> dict:
    """transformers CLIPModel state dict -> OpenAI CLIP names (`visual.*`, the text tower at the top level)."""
    v, t = "vision_model.", "text_model."
    state = {
        "visual.conv1.weight": hf[v + "embeddings.patch_embedding.weight"],
        "visual.class_embedding": hf[v + "embeddings.class_embedding"],
        "visual.positional_embedding": hf[v + "embeddings.position_embedding.weight"],
        "visual.proj": hf["visual_projection.weight"].T,
        "token_embedding.weight": hf[t + "embeddings.token_embedding.weight"],
        "positional_embedding": hf[t + "embeddings.position_embedding.weight"],
        "text_projection": hf["text_projection.weight"].T,
        "logit_scale": hf["logit_scale"],
    }
    norms = (("visual.ln_pre", v + "pre_layrnorm"), ("visual.ln_post", v + "post_layernorm"),
             ("ln_final", t + "final_layer_norm"))
    for ours, theirs in norms:
        for p in ("weight", "bias"):
            state[f"{ours}.{p}"] = hf[f"{theirs}.{p}"]
    towers = (("visual.", v, VISION["depth"]), ("", t, TEXT["depth"]))
    for prefix, hf_prefix, depth in towers:
        for i in range(depth):
            h, o = f"{hf_prefix}encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
            for p in ("weight", "bias"):
                state[f"{o}attn.in_proj_{p}"] = np.concatenate([hf[f"{h}self_attn.{n}_proj.{p}"] for n in "qkv"])
                for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                     ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                    state[f"{o}{ours}.{p}"] = hf[f"{h}{theirs}.{p}"]
    assert len(state) == len(hf) - 4 * (VISION["depth"] + TEXT["depth"])  # every HF weight used once
    return state


def _state(hf) -> dict:
    return _openai_layout({k: v.numpy() for k, v in hf.state_dict().items() if "position_ids" not in k})


def _inputs():
    """Images (N, H, W, 3) and ids: SOT, content, EOT (the largest id), zero padding; L = 12 < context."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, VISION["image"], VISION["image"], 3)).astype(np.float32)
    eot = np.array([3, 7, 11])
    ids = rng.integers(1, TEXT["vocab"] - 2, (3, 12))
    ids[:, 0] = TEXT["vocab"] - 2
    ids[np.arange(3), eot] = TEXT["vocab"] - 1
    ids[np.arange(12)[None] > eot[:, None]] = 0
    return images, ids


def _convert(state, **kwargs):
    return clip.convert_clip(state, num_heads=VISION["heads"], text_num_heads=TEXT["heads"], **kwargs)


@pytest.fixture(scope="module")
def state():
    return _state(_hf_model("quick_gelu"))


@pytest.mark.parity
@pytest.mark.parametrize("activation, layout", [("quick_gelu", "openai"), ("gelu", "open_clip")])
def test_clip_matches_transformers(activation, layout):
    """Both towers, normalised embeddings and logits vs HF CLIPModel; the other activation does not match.

    `openai`: float16 weights, a 0-d logit_scale and the sizes OpenAI's
    TorchScript files add, scanned layers. `open_clip`: float32, a (1,)
    logit_scale (`nonscalar_logit_scale`), one subtree per layer.
    """
    import torch

    hf = _hf_model(activation)
    if layout == "openai":
        with torch.no_grad():
            for param in hf.parameters():
                param.copy_(param.half().float())
    state = _state(hf)
    if layout == "openai":
        state = {k: v.astype(np.float16) for k, v in state.items()}
        state.update(input_resolution=np.array(VISION["image"]), context_length=np.array(TEXT["context"]),
                     vocab_size=np.array(TEXT["vocab"]))
    else:
        state["logit_scale"] = state["logit_scale"].reshape(1)
    images, ids = _inputs()
    with torch.no_grad():
        want = hf(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))

    spec, variables = _convert(state, activation=activation, scan_layers=layout == "openai")
    assert spec["activation"] == activation and spec["embed_dim"] == EMBED
    assert spec["vision"]["image_size"] == VISION["image"] and spec["text"]["context_length"] == TEXT["context"]
    model = build_model(spec)
    out = jax.jit(model.apply)(variables, images, ids)
    tokens = model.apply(variables, images, method=lambda m, x: m.vision_encoder(x)["tokens"])
    text_tokens = model.apply(variables, ids, method=lambda m, x: m.text_encoder(x)["tokens"])
    logits = out["image_embedding"] @ out["text_embedding"].T / out["temperature"]
    errors = {
        "vision_tokens": np.abs(tokens - want.vision_model_output.last_hidden_state.numpy()).max(),
        "text_tokens": np.abs(text_tokens - want.text_model_output.last_hidden_state.numpy()).max(),
        "image_embedding": np.abs(out["image_embedding"] - want.image_embeds.numpy()).max(),
        "text_embedding": np.abs(out["text_embedding"] - want.text_embeds.numpy()).max(),
        "logits": np.abs(logits - want.logits_per_image.numpy()).max(),
    }
    assert max(errors.values()) <= 1e-4, errors

    other = "gelu" if activation == "quick_gelu" else "quick_gelu"
    spec, variables = _convert(state, activation=other)
    wrong = build_model(spec).apply(variables, images, method="encode_image")
    assert np.abs(wrong - want.image_embeds.numpy()).max() > 1e-3


@pytest.mark.parity
def test_context_length_cut(state):
    """`context_length` keeps the first rows of the text position table; shorter ids give the same features."""
    ids = _inputs()[1][:, :8]
    ids[2, -1] = TEXT["vocab"] - 1  # its EOT was at 11
    full_spec, full = _convert(state)
    spec, cut = _convert(state, context_length=8)
    assert spec["text"]["context_length"] == 8
    table = cut["params"]["text_encoder"]["positional_embedding"]
    np.testing.assert_array_equal(table, state["positional_embedding"][:8])
    model = build_model(spec)
    got = model.apply(cut, ids, method="encode_text")
    np.testing.assert_allclose(got, build_model(full_spec).apply(full, ids, method="encode_text"), atol=1e-6)
    with pytest.raises(ValueError, match="L <= 8"):
        model.apply(cut, _inputs()[1], method="encode_text")

    text_state = {k: v for k, v in state.items() if not k.startswith("visual.") and k != "logit_scale"}
    text_spec, text = clip.convert_clip_text(text_state, num_heads=TEXT["heads"], context_length=8)
    assert text_spec["context_length"] == 8
    for a, b in zip(jax.tree.leaves(text["params"]), jax.tree.leaves(cut["params"]["text_encoder"])):
        np.testing.assert_array_equal(a, b)
    for bad in (0, TEXT["context"] + 1):
        with pytest.raises(ValueError, match=rf"context_length={bad} must be in \[1, {TEXT['context']}\]"):
            _convert(state, context_length=bad)


@pytest.mark.parity
def test_unsupported_layouts_fail_naming_keys(state):
    with pytest.raises(ValueError, match="custom text tower.*text.token_embedding.weight"):
        _convert({("text." + k if k == "token_embedding.weight" else k): v for k, v in state.items()})
    resnet = {k: v for k, v in state.items() if not k.startswith("visual.")}
    resnet["visual.layer1.0.conv1.weight"] = np.zeros((8, 8, 1, 1), np.float32)
    with pytest.raises(ValueError, match="not a CLIP ViT.*visual.layer1.0.conv1.weight"):
        _convert(resnet)
    with pytest.raises(ValueError, match="logit_bias.*SigLIP"):
        _convert({**state, "logit_bias": np.zeros(())})
    pool = {"visual.attn_pool.query": np.zeros((4, 32)), "visual.transformer.resblocks.0.ls_1.gamma": np.ones(32)}
    with pytest.raises(ValueError, match="not mapped.*visual.attn_pool.query.*resblocks.0.ls_1.gamma"):
        _convert({**state, **pool})
    with pytest.raises(ValueError, match="input_resolution=224 disagrees with its weights' 24"):
        _convert({**state, "input_resolution": np.array(224)})
    with pytest.raises(KeyError, match="logit_scale"):
        _convert({k: v for k, v in state.items() if k != "logit_scale"})
    with pytest.raises(ValueError, match="activation='relu'"):
        _convert(state, activation="relu")


def _viclip_state(context_length):
    """A tiny ViCLIP's TrainState (towers sized as the CLIP above) and its abstract twin."""
    from vfm_jax.train import TrainState

    model = build_model(dict(
        arch="viclip", embed_dim=EMBED,
        vision=dict(width=VISION["width"], depth=VISION["depth"], num_heads=VISION["heads"],
                    patch_size=VISION["patch"], image_size=VISION["image"], num_frames=2),
        text=dict(vocab_size=TEXT["vocab"], width=TEXT["width"], depth=TEXT["depth"], num_heads=TEXT["heads"],
                  context_length=context_length),
    ))
    video = jnp.zeros((1, 2, VISION["image"], VISION["image"], 3))
    params = nn.unbox(model.init(jax.random.PRNGKey(0), video, jnp.zeros((1, context_length), jnp.int32)))["params"]
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params)
    state = TrainState(step=0, params=params, model_state={}, opt_state=None, rng=None)
    return state, state.replace(params=abstract)


@pytest.mark.slow
@pytest.mark.parity
def test_convert_cli_then_load_pretrained_and_tower_subtrees(tmp_path, state):
    """A `.pt` state dict -> `python -m vfm_jax.convert --model clip` -> load_pretrained; `folder:subtree` towers."""
    import torch

    import vfm_jax
    from vfm_jax.train import load_pretrained_part

    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "ViT-tiny.pt")
    out = tmp_path / "clip"
    proc = run_module("vfm_jax.convert", "--model=clip", f"--src={tmp_path / 'ViT-tiny.pt'}", f"--out={out}",
                      "--num_heads=4", "--text_num_heads=4", "--activation=gelu", "--context_length=8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    model, variables = vfm_jax.load_pretrained(out)
    assert model.activation == "gelu" and model.text["context_length"] == 8 and model.embed_dim == EMBED
    _, direct = _convert(state, activation="gelu", context_length=8)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(direct)):
        np.testing.assert_array_equal(np.asarray(a), b)
    images, ids = _inputs()
    assert model.apply(variables, images, ids[:, :8])["image_embedding"].shape == (2, EMBED)

    # The towers of the converted folder start a ViCLIP run (task.vision_checkpoint / text_checkpoint).
    train_state, abstract = _viclip_state(context_length=8)
    with pytest.raises(ValueError, match="does not fit params/vision_encoder"):
        load_pretrained_part(train_state, abstract, "params/vision_encoder", str(out))
    with pytest.raises(ValueError, match="no params subtree 'visual'.*text_encoder"):
        load_pretrained_part(train_state, abstract, "params/vision_encoder", f"{out}:visual")
    loaded = load_pretrained_part(train_state, abstract, "params/vision_encoder", f"{out}:vision_encoder")
    loaded = load_pretrained_part(loaded, abstract, "params/text_encoder", f"{out}:text_encoder")
    vision = dict(loaded.params["vision_encoder"])
    np.testing.assert_array_equal(vision.pop("temporal_positional_embedding"), np.zeros((2, VISION["width"])))
    for tower, got in (("vision_encoder", vision), ("text_encoder", loaded.params["text_encoder"])):
        want = jax.tree_util.tree_leaves_with_path(direct["params"][tower])
        got = dict(jax.tree_util.tree_leaves_with_path(got))
        assert len(got) == len(want), tower
        for path, value in want:
            np.testing.assert_array_equal(np.asarray(got[path]), value, err_msg=f"{tower}{jax.tree_util.keystr(path)}")
    assert loaded.params["temp"] == train_state.params["temp"]


@pytest.mark.parametrize("name, width, patch, embed, text_width", [
    ("clip_b16", 768, 16, 512, 512), ("clip_l14", 1024, 14, 768, 768),
])
def test_presets_build(name, width, patch, embed, text_width):
    model = get_model(name)
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    ids = jax.ShapeDtypeStruct((1, 77), jnp.int32)
    boxed = jax.eval_shape(model.init, jax.random.key(0), images, ids)["params"]
    leaves = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), where
        assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= AXES, where
    params = nn.unbox(boxed)
    vision, text = params["vision_encoder"], params["text_encoder"]
    assert vision["conv1"]["kernel"].shape == (patch, patch, 3, width)
    assert vision["positional_embedding"].shape == ((224 // patch) ** 2 + 1, width)
    assert vision["proj"].shape == (width, embed)
    assert text["positional_embedding"].shape == (77, text_width)
    assert text["text_projection"].shape == (text_width, embed)
    assert params["logit_scale"].shape == () and model.activation == "quick_gelu"
