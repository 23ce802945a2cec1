"""VideoMAE pre-training (InternVideo's masked encoder): masks, targets, transformers parity,
official checkpoint conversion, training, and fine-tuning from the pre-trained encoder."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.internvideo.videomae_pretrain import get_config
from data.synthetic import MovingShapes
from data.normalization import NORMALIZATION
from vfm_jax import checkpointing
from vfm_jax.models import build_model
from vfm_jax.tasks import build_task
from vfm_jax.tasks.videomae import patch_targets, random_tube_mask, reconstruction_loss

# Tiny sizes shared by the parity and conversion tests: 4 frames of 32 px, patch 8, tubelet 2
# -> 2 x 16 = 32 tokens; decoder narrower than the encoder as in every release.
SIZES = dict(width=32, depth=2, num_heads=2, decoder_width=16, decoder_depth=2, decoder_num_heads=2)


def test_tube_mask_hides_the_same_positions_in_every_frame():
    """int(0.9 * 196) = 176 of 196 per frame, equal in all 8 frames, a fresh draw per sample and key."""
    mask = np.asarray(random_tube_mask(jax.random.key(0), 4, 8, 196, 0.9))
    assert mask.shape == (4, 8 * 196) and mask.dtype == bool
    frames = mask.reshape(4, 8, 196)
    assert (frames.sum(-1) == 176).all()
    assert (frames == frames[:, :1]).all()
    assert len({row.tobytes() for row in frames[:, 0]}) == 4
    again = np.asarray(random_tube_mask(jax.random.key(0), 4, 8, 196, 0.9))
    other = np.asarray(random_tube_mask(jax.random.key(1), 4, 8, 196, 0.9))
    np.testing.assert_array_equal(mask, again)
    assert (mask != other).any()
    # Every position is hidden equally often: 12 / 16 of the draws at ratio 0.75.
    many = np.asarray(random_tube_mask(jax.random.key(2), 2000, 1, 16, 0.75)).mean(0)
    np.testing.assert_allclose(many, 12 / 16, atol=0.05)


def test_mask_ratio_must_hide_and_keep_a_token():
    config = get_config("model=tiny")
    config.task.mask_ratio = 1.0
    with pytest.raises(ValueError, match="mask_ratio"):
        build_task(config)
    config.task.mask_ratio = 0.05  # int(0.05 * 16) = 0 hidden per frame
    task = build_task(config)
    with pytest.raises(ValueError, match="at least one"):
        task.init(jax.random.key(0), {"video": np.zeros((1, 4, 32, 32, 3), np.uint8)})


def test_patch_targets_follow_the_official_rearrange():
    """Token (t, h, w) holds its tubelet's pixels ordered (t, y, x, c), each channel standardised
    with the unbiased std: `b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c`, then normalise over p."""
    pixels = np.random.default_rng(0).uniform(size=(2, 4, 16, 24, 3)).astype(np.float32)
    raw = np.asarray(patch_targets(jnp.asarray(pixels), 2, 8, normalize=False))
    norm = np.asarray(patch_targets(jnp.asarray(pixels), 2, 8))
    assert raw.shape == norm.shape == (2, 2 * 2 * 3, 2 * 8 * 8 * 3)
    for b, t, h, w in ((0, 0, 0, 0), (1, 1, 1, 2), (0, 1, 0, 1)):
        token = (t * 2 + h) * 3 + w
        cube = pixels[b, 2 * t:2 * t + 2, 8 * h:8 * h + 8, 8 * w:8 * w + 8].reshape(-1, 3)
        np.testing.assert_allclose(raw[b, token], cube.reshape(-1), atol=1e-7)
        want = (cube - cube.mean(0)) / (cube.std(0, ddof=1) + 1e-6)
        np.testing.assert_allclose(norm[b, token], want.reshape(-1), atol=1e-5)


# ----------------------------------------------------------------- transformers / official weights

def _reference(seed=0):
    """transformers VideoMAEForPreTraining with random non-trivial weights, in the official layout.

    use_mean_pooling=False gives the encoder's final norm (`encoder.norm`);
    norm_pix_loss=True is the official `normlize_target`. transformers builds
    the decoder's final norm with eps 1e-5; every official norm uses 1e-6.
    """
    import torch
    import transformers

    config = transformers.VideoMAEConfig(
        image_size=32, patch_size=8, num_channels=3, num_frames=4, tubelet_size=2,
        hidden_size=SIZES["width"], num_hidden_layers=SIZES["depth"], num_attention_heads=SIZES["num_heads"],
        intermediate_size=4 * SIZES["width"], decoder_hidden_size=SIZES["decoder_width"],
        decoder_num_hidden_layers=SIZES["decoder_depth"], decoder_num_attention_heads=SIZES["decoder_num_heads"],
        decoder_intermediate_size=4 * SIZES["decoder_width"], qv_bias=True, use_mean_pooling=False,
        norm_pix_loss=True, hidden_act="gelu", layer_norm_eps=1e-6, attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = transformers.VideoMAEForPreTraining(config).eval()
    model.decoder.norm.eps = 1e-6
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name or "norm.weight" in name:
                torch.nn.init.normal_(p, mean=1.0, std=0.2)
            else:
                torch.nn.init.normal_(p, std=0.2)
    return model


def _hf_state(model) -> dict:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _official_state(hf: dict) -> dict:
    """The same weights under the module names of the official `modeling_pretrain.py`."""
    out = {
        "encoder.patch_embed.proj.weight": hf["videomae.embeddings.patch_embeddings.projection.weight"],
        "encoder.patch_embed.proj.bias": hf["videomae.embeddings.patch_embeddings.projection.bias"],
        "encoder.norm.weight": hf["videomae.layernorm.weight"],
        "encoder.norm.bias": hf["videomae.layernorm.bias"],
        "encoder_to_decoder.weight": hf["encoder_to_decoder.weight"],
        "mask_token": hf["mask_token"],
        **{f"decoder.{n}.{p}": hf[f"decoder.{n}.{p}"] for n in ("norm", "head") for p in ("weight", "bias")},
    }
    for src, dst, depth in (("videomae.encoder.layer", "encoder.blocks", SIZES["depth"]),
                            ("decoder.decoder_layers", "decoder.blocks", SIZES["decoder_depth"])):
        for i in range(depth):
            s, d = f"{src}.{i}.", f"{dst}.{i}."
            out[d + "attn.qkv.weight"] = np.concatenate(
                [hf[s + f"attention.attention.{n}.weight"] for n in ("query", "key", "value")])
            out[d + "attn.q_bias"] = hf[s + "attention.attention.query.bias"]
            out[d + "attn.v_bias"] = hf[s + "attention.attention.value.bias"]
            for theirs, ours in (("attention.output.dense", "attn.proj"), ("layernorm_before", "norm1"),
                                 ("layernorm_after", "norm2"), ("intermediate.dense", "mlp.fc1"),
                                 ("output.dense", "mlp.fc2")):
                for p in ("weight", "bias"):
                    out[f"{d}{ours}.{p}"] = hf[f"{s}{theirs}.{p}"]
    # q, k, v weights became one qkv weight per block.
    assert len(out) == len(hf) - 2 * (SIZES["depth"] + SIZES["decoder_depth"])
    return out


def _video_and_mask(seed=0):
    """uint8 clips and a tube mask hiding 12 of 16 tokens per frame-pair (equal counts per sample)."""
    video = np.random.default_rng(seed).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
    mask = np.asarray(random_tube_mask(jax.random.key(seed), 2, 2, 16, 0.75))
    return video, mask


@pytest.mark.parity
@pytest.mark.parametrize("scan_layers", [True, False])
def test_parity_with_transformers_videomae_for_pretraining(scan_layers):
    """Encoder tokens, masked-token reconstructions and the normalised-pixel loss match transformers."""
    import torch

    from vfm_jax.converters.videomae import convert_videomae

    reference = _reference()
    video, mask = _video_and_mask()
    mean, std = NORMALIZATION["imagenet"]
    pixel_values = torch.from_numpy(((video / 255.0 - mean) / std).astype(np.float32)).permute(0, 1, 4, 2, 3)
    bool_masked_pos = torch.from_numpy(mask.copy())
    with torch.no_grad():
        want = reference(pixel_values, bool_masked_pos=bool_masked_pos)
        want_tokens = reference.videomae(pixel_values, bool_masked_pos=bool_masked_pos).last_hidden_state.numpy()
    assert want.logits.shape == (2, 24, 2 * 8 * 8 * 3)

    spec, variables = convert_videomae(_hf_state(reference), num_heads=2, decoder_num_heads=2, scan_layers=scan_layers)
    assert spec == dict(arch="videomae_pretrain", **SIZES, mlp_ratio=4.0, patch_size=8, tubelet_size=2,
                        scan_layers=scan_layers)
    model = build_model(spec)
    inputs = (jnp.asarray(((video / 255.0 - mean) / std).astype(np.float32)), jnp.asarray(mask))
    shapes = nn.unbox(jax.eval_shape(lambda v, m: model.init(jax.random.key(0), v, m, num_visible=8), *inputs))
    assert jax.tree.map(np.shape, variables["params"]) == jax.tree.map(np.shape, shapes["params"])

    out = jax.jit(lambda p, v, m: model.apply({"params": p}, v, m, num_visible=8))(variables["params"], *inputs)
    targets = patch_targets(jnp.asarray(video, jnp.float32) / 255.0, 2, 8)
    loss = reconstruction_loss(out["pred"], targets, jnp.asarray(mask))
    for name, ours, theirs in (("tokens", out["tokens"], want_tokens), ("pred", out["pred"], want.logits.numpy()),
                               ("loss", loss, want.loss.numpy())):
        err = np.abs(np.asarray(ours) - theirs).max()
        assert err <= 1e-4, f"{name}: max abs error {err}"
    assert np.abs(want.logits.numpy()).max() > 0.1


@pytest.mark.parity
def test_official_and_hub_checkpoints_convert_to_the_same_params(tmp_path):
    """A `.pth` with the official names under `model`, and the hub's legacy q_bias/v_bias names, both
    give the params of the transformers state dict; leftover or missing keys fail naming them."""
    import torch
    from safetensors.numpy import save_file

    from vfm_jax.convert import convert
    from vfm_jax.converters.videomae import convert_videomae

    hf = _hf_state(_reference(seed=1))
    _, want = convert_videomae(hf, num_heads=2, decoder_num_heads=2)

    official = _official_state(hf)
    torch.save({"model": {k: torch.from_numpy(v) for k, v in official.items()}}, tmp_path / "official.pth")
    legacy = {k.replace("query.bias", "q_bias").replace("value.bias", "v_bias"): v for k, v in hf.items()}
    assert any(k.endswith("attention.attention.q_bias") for k in legacy)
    save_file(legacy, str(tmp_path / "hub.safetensors"))
    for name in ("official.pth", "hub.safetensors"):
        spec = convert("videomae", str(tmp_path / name), str(tmp_path / name.split(".")[0]),
                       num_heads=2, decoder_num_heads=2)
        assert spec["arch"] == "videomae_pretrain"
        got = checkpointing.load_variables(tmp_path / name.split(".")[0])["params"]
        jax.tree.map(np.testing.assert_array_equal, got, want["params"])

    heads = dict(num_heads=2, decoder_num_heads=2)
    with pytest.raises(ValueError, match="encoder.head.weight"):
        convert_videomae({**official, "encoder.head.weight": np.zeros((4, 32), np.float32)}, **heads)
    with pytest.raises(KeyError, match="mask_token"):
        convert_videomae({k: v for k, v in official.items() if k != "mask_token"}, **heads)
    with pytest.raises(ValueError, match="decoder_num_heads"):
        convert_videomae(official, num_heads=2)  # 16 wide: the default 16 // 64 heads cannot be
    with pytest.raises(ValueError, match="not a VideoMAE"):
        convert_videomae({"head.weight": np.zeros((4, 32), np.float32)})


# ----------------------------------------------------------------- training

def _batches(count: int, size: int = 8):
    shapes = MovingShapes("train", num_examples=count * size, frames=4, size=32, clip_frames=8, seed=0)
    videos = np.stack([shapes[i]["video"] for i in range(count * size)])
    return [{"video": videos[i * size:(i + 1) * size]} for i in range(count)]


def test_tiny_pretraining_loss_decreases():
    """20 AdamW steps of the tiny config on 4 fixed batches (fresh masks each step) lower the loss."""
    import optax

    config = get_config("model=tiny")
    task = build_task(config)
    batches = _batches(4)
    params = nn.unbox(jax.jit(task.init)(jax.random.key(0), batches[0]))["params"]
    tx = optax.adamw(1e-3, b1=0.9, b2=0.95, weight_decay=0.05)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch, rng):
        (loss, _), grads = jax.value_and_grad(task.loss_fn, has_aux=True)(params, {}, batch, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for i in range(20):
        params, opt_state, loss = step(params, opt_state, batches[i % 4], jax.random.key(i))
        losses.append(float(loss))
    assert all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < 0.97 * np.mean(losses[:4]), losses


@pytest.mark.slow
def test_tiny_config_trains_and_its_encoder_starts_a_classifier(tiny_config, tmp_path):
    """The train loop runs the tiny recipe; `init_from` copies its patch_embed + encoder into a video_vit."""
    import math

    import ml_collections

    from vfm_jax.train import train_and_evaluate

    config = get_config("model=tiny")
    config.total_steps = 3
    results = train_and_evaluate(config, tmp_path / "pretrain")
    assert math.isfinite(results["train_loss"])
    pretrained = checkpointing.load_variables(tmp_path / "pretrain")["params"]
    assert {"mask_token", "decoder", "decoder_head", "encoder_to_decoder"} <= set(pretrained)

    classifier = tiny_config(total_steps=1, **{
        "model.width": 32, "model.depth": 2, "model.num_heads": 2, "model.tubelet_size": 2,
        "data.frames": 4, "optim.lr": 0.0, "optim.min_lr": 0.0,
    })
    classifier.init_from = ml_collections.ConfigDict(dict(
        checkpoint=str(tmp_path / "pretrain"), subtrees=("patch_embed", "encoder"),
    ))
    train_and_evaluate(classifier, tmp_path / "finetune")  # lr 0: the copied weights stay
    run = checkpointing.load_variables(tmp_path / "finetune")["params"]
    for key in ("patch_embed", "encoder"):
        jax.tree.map(np.testing.assert_array_equal, run[key], pretrained[key])
    assert "head" in run and "fc_norm" in run
