"""VideoViT: param metadata, scan/unrolled and remat equivalence, and parity with transformers' VideoMAE."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vfm_jax.layers.embeddings import sinusoid_table
from vfm_jax.models import PRESETS, build_model, get_model
from vfm_jax.models.vit import VideoViT

VOCAB = {
    "batch", "length", "frames", "embed", "mlp", "heads", "head_dim", "kv", "vocab",
    "conv_in", "conv_out", "layers", None,
}
VIDEO_SHAPE = (2, 4, 32, 32, 3)  # (B, T, H, W, C): 4 * 4 * 4 = 64 tokens for patch 8, tubelet 1.


def _video(shape=VIDEO_SHAPE, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _init(model, video, seed=0):
    """Unboxed params with every leaf (biases and norms included) moved off its init value."""
    params = nn.unbox(jax.jit(model.init)(jax.random.key(seed), video))["params"]
    rng = np.random.default_rng(seed + 100)
    return jax.tree.map(
        lambda x: x + jnp.asarray(0.1 * rng.standard_normal(x.shape), x.dtype), params
    )


def _apply(model):
    return jax.jit(lambda params, video: model.apply({"params": params}, video))


def _unstack_blocks(params, depth):
    """Scanned params -> the blocks_0 ... blocks_{depth-1} layout of scan_layers=False."""
    encoder = dict(params["encoder"])
    blocks = encoder.pop("blocks")
    for i in range(depth):
        encoder[f"blocks_{i}"] = jax.tree.map(lambda x: x[i], blocks)
    return {**params, "encoder": encoder}


@pytest.mark.parametrize("scan_layers", [True, False])
def test_params_carry_logical_axis_names(scan_layers):
    """Every param is boxed with names from the sharding vocabulary; scanned blocks lead with 'layers'."""
    model = get_model("vit_tiny_video", num_classes=4, scan_layers=scan_layers)
    boxed = jax.eval_shape(model.init, jax.random.key(0), _video())["params"]
    leaves = jax.tree_util.tree_flatten_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )[0]
    assert len(leaves) > 10
    depth = PRESETS["vit_tiny_video"]["depth"]
    seen_blocks = 0
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), where
        assert len(leaf.names) == leaf.value.ndim, where
        assert set(leaf.names) <= VOCAB, where
        in_stack = path[0].key == "encoder" and path[1].key == "blocks"
        if in_stack:
            seen_blocks += 1
            assert leaf.names[0] == "layers" and leaf.value.shape[0] == depth, where
            assert "layers" not in leaf.names[1:], where
        else:
            assert "layers" not in leaf.names, where
    assert seen_blocks == (13 if scan_layers else 0)


def test_scan_matches_unrolled():
    """Stacked block params sliced into blocks_i give the same output in the unrolled model."""
    video = _video()
    scanned = get_model("vit_tiny_video", num_classes=4, scan_layers=True)
    unrolled = get_model("vit_tiny_video", num_classes=4, scan_layers=False)
    params = _init(scanned, video)
    flat = _unstack_blocks(params, scanned.depth)
    # The unrolled model's own init has exactly this tree of shapes.
    want_shapes = jax.eval_shape(unrolled.init, jax.random.key(0), video)["params"]
    assert jax.tree.map(jnp.shape, flat) == jax.tree.map(jnp.shape, nn.unbox(want_shapes))
    np.testing.assert_allclose(
        _apply(scanned)(params, video), _apply(unrolled)(flat, video), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("scan_layers", [True, False])
def test_drop_path(scan_layers):
    """train=True with drop_path_rate > 0 depends on the 'droppath' rng; train=False ignores it."""
    video = _video((8, 2, 16, 16, 3))
    model = get_model("vit_tiny_video", num_classes=4, drop_path_rate=0.5, scan_layers=scan_layers)
    no_drop = get_model("vit_tiny_video", num_classes=4, drop_path_rate=0.0, scan_layers=scan_layers)
    params = _init(model, video)

    @jax.jit
    def train(seed):
        return model.apply(
            {"params": params}, video, train=True, rngs={"droppath": jax.random.key(seed)}
        )

    a, a_again, b = train(1), train(1), train(2)
    np.testing.assert_array_equal(a, a_again)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
    eval_out = _apply(model)(params, video)
    np.testing.assert_allclose(eval_out, _apply(no_drop)(params, video), atol=1e-6, rtol=1e-6)
    assert np.abs(np.asarray(a) - np.asarray(eval_out)).max() > 1e-3


@pytest.mark.parametrize(
    "scan_layers, policies", [(True, ("full", "dots", "dots_no_batch")), (False, ("full", "dots"))]
)
def test_remat_matches_no_remat(scan_layers, policies):
    """Rematerialisation changes neither the loss nor its gradients."""
    video = _video((2, 2, 16, 16, 3))
    target = jnp.asarray(np.random.default_rng(1).standard_normal((2, 4)), jnp.float32)

    def loss_and_grad(remat_policy, params):
        model = get_model(
            "vit_tiny_video", num_classes=4, scan_layers=scan_layers, remat_policy=remat_policy
        )
        loss = lambda p: jnp.mean((model.apply({"params": p}, video) - target) ** 2)
        return jax.jit(jax.value_and_grad(loss))(params)

    params = _init(get_model("vit_tiny_video", num_classes=4, scan_layers=scan_layers), video)
    want_loss, want_grads = loss_and_grad("none", params)
    for policy in policies:
        loss, grads = loss_and_grad(policy, params)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-6, err_msg=policy)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5, err_msg=policy),
            grads, want_grads,
        )


@pytest.mark.parametrize("n, d", [(1, 4), (13, 6), (32, 64), (7, 5)])
def test_sinusoid_table_formula(n, d):
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d))."""
    want = np.zeros((n, d))
    for pos in range(n):
        for c in range(d):
            angle = pos / 10000 ** (2 * (c // 2) / d)
            want[pos, c] = np.sin(angle) if c % 2 == 0 else np.cos(angle)
    table = sinusoid_table(n, d)
    assert table.shape == (n, d) and table.dtype == np.float32
    np.testing.assert_allclose(table, want, atol=1e-6, rtol=0)


@pytest.mark.parity
@pytest.mark.parametrize("n, d", [(1, 4), (64, 64), (13, 6), (7, 5)])
def test_sinusoid_table_matches_transformers(n, d):
    """Same table as transformers' VideoMAE get_sinusoid_encoding_table."""
    from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

    want = get_sinusoid_encoding_table(n, d)[0].numpy()
    np.testing.assert_allclose(sinusoid_table(n, d), want, atol=1e-6, rtol=0)


def _videomae_to_ours(state_dict, fc_norm, depth, heads):
    """Map a transformers VideoMAEModel state dict (+ a torch LayerNorm as fc_norm) to unrolled params."""
    sd = {k: v.detach().numpy() for k, v in state_dict.items()}
    used = set()

    def take(key):
        used.add(key)
        return sd[key]

    def norm(prefix):
        return {"scale": take(prefix + ".weight"), "bias": take(prefix + ".bias")}

    def dense(prefix):
        return {"kernel": take(prefix + ".weight").T, "bias": take(prefix + ".bias")}

    width = sd["embeddings.patch_embeddings.projection.weight"].shape[0]
    head_dim = width // heads
    params = {
        "patch_embed": {
            "proj": {
                # torch Conv3d [D, C, t, p, p] -> flax Conv (t, p, p, C, D).
                "kernel": take("embeddings.patch_embeddings.projection.weight").transpose(2, 3, 4, 1, 0),
                "bias": take("embeddings.patch_embeddings.projection.bias"),
            }
        },
        "encoder": {},
        "fc_norm": {"scale": fc_norm.weight.detach().numpy(), "bias": fc_norm.bias.detach().numpy()},
    }
    for i in range(depth):
        pre = f"encoder.layer.{i}."
        # torch Linear weights are (out, in) with out = heads * head_dim; ours is (in, 3, heads, head_dim).
        qkv = np.stack([take(pre + f"attention.attention.{n}.weight") for n in ("query", "key", "value")])
        params["encoder"][f"blocks_{i}"] = {
            "norm1": norm(pre + "layernorm_before"),
            "attn": {
                "qkv_kernel": qkv.reshape(3, heads, head_dim, width).transpose(3, 0, 1, 2),
                "q_bias": take(pre + "attention.attention.query.bias").reshape(heads, head_dim),
                "v_bias": take(pre + "attention.attention.value.bias").reshape(heads, head_dim),
                "out_kernel": take(pre + "attention.output.dense.weight").T.reshape(heads, head_dim, width),
                "out_bias": take(pre + "attention.output.dense.bias"),
            },
            "norm2": norm(pre + "layernorm_after"),
            "mlp": {"fc1": dense(pre + "intermediate.dense"), "fc2": dense(pre + "output.dense")},
        }
    assert used == set(sd), f"unmapped torch params: {sorted(set(sd) - used)}"
    return jax.tree.map(jnp.asarray, params)


@pytest.mark.parity
@pytest.mark.parametrize("tubelet_size", [1, 2])
def test_parity_with_transformers_videomae(tubelet_size):
    """Pooled features equal fc_norm(mean(VideoMAEModel(...).last_hidden_state)) with random weights."""
    import torch
    import transformers

    depth, heads, width = 2, 4, 64
    config = transformers.VideoMAEConfig(
        image_size=32, patch_size=8, num_channels=3, num_frames=4, tubelet_size=tubelet_size,
        hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=256,
        qv_bias=True, use_mean_pooling=True, hidden_act="gelu", layer_norm_eps=1e-6,
        attn_implementation="eager",
    )
    torch.manual_seed(tubelet_size)
    reference = transformers.VideoMAEModel(config).eval()
    fc_norm = torch.nn.LayerNorm(width, eps=1e-6)
    with torch.no_grad():
        for name, p in list(reference.named_parameters()) + list(fc_norm.named_parameters()):
            if "layernorm" in name or p is fc_norm.weight:
                torch.nn.init.normal_(p, mean=1.0, std=0.2)
            else:
                torch.nn.init.normal_(p, std=0.2)
    attention = reference.encoder.layer[0].attention.attention
    # VideoMAE's key projection has no bias; q and v have one each, as in ours.
    assert attention.key.bias is None
    assert attention.query.bias is not None and attention.value.bias is not None
    assert reference.layernorm is None  # use_mean_pooling: no final norm inside the model
    assert reference.embeddings.position_embeddings.shape[1] == (4 // tubelet_size) * 16

    video = np.random.default_rng(0).standard_normal((2, 4, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        hidden = reference(torch.from_numpy(video).permute(0, 1, 4, 2, 3)).last_hidden_state
        want = fc_norm(hidden.mean(1)).numpy()
    assert np.abs(want).max() > 0.1

    unrolled_params = _videomae_to_ours(reference.state_dict(), fc_norm, depth, heads)
    blocks = [unrolled_params["encoder"][f"blocks_{i}"] for i in range(depth)]
    scanned_params = {
        **unrolled_params,
        "encoder": {"blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)},
    }
    for scan_layers, params in ((True, scanned_params), (False, unrolled_params)):
        model = VideoViT(
            num_classes=0, width=width, depth=depth, num_heads=heads, mlp_ratio=4.0,
            patch_size=8, tubelet_size=tubelet_size, ln_eps=1e-6, scan_layers=scan_layers,
        )
        expected_shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), video)["params"])
        assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, expected_shapes)
        ours = np.asarray(_apply(model)(params, jnp.asarray(video)))
        assert ours.shape == want.shape
        err = np.abs(ours - want).max()
        assert err <= 1e-4, f"scan_layers={scan_layers}: max abs error {err}"


def test_unknown_model_keys_raise():
    """build_model/get_model name an unknown key, arch, dtype or preset in the ValueError."""
    with pytest.raises(ValueError, match="bogus_key"):
        build_model({"arch": "video_vit", "num_classes": 0, "bogus_key": 1})
    with pytest.raises(ValueError, match="bogus_key"):
        get_model("vit_tiny_video", bogus_key=1)
    with pytest.raises(ValueError, match="no_such_arch"):
        build_model({"arch": "no_such_arch", "num_classes": 0})
    with pytest.raises(ValueError, match="float64"):
        build_model({"arch": "video_vit", "num_classes": 0, "dtype": "float64"})
    with pytest.raises(ValueError, match="no_such_model"):
        get_model("no_such_model")


def test_presets_build():
    """Every video preset builds a VideoViT carrying the preset's sizes and the override."""
    for name, spec in PRESETS.items():
        if spec["arch"] != "video_vit":
            continue
        model = get_model(name, num_classes=7)
        assert isinstance(model, VideoViT)
        assert model.num_classes == 7
        for key, value in spec.items():
            if key != "arch":
                assert getattr(model, key) == value, (name, key)


def test_bad_remat_policy_raises():
    """An unknown remat_policy is a ValueError naming it."""
    model = get_model("vit_tiny_video", remat_policy="sometimes")
    with pytest.raises(ValueError, match="sometimes"):
        jax.eval_shape(model.init, jax.random.key(0), _video())


@pytest.mark.parametrize(
    "shape", [(1, 3, 32, 32, 3), (1, 4, 30, 32, 3), (1, 4, 32, 36, 3), (4, 32, 32, 3)]
)
def test_bad_video_shape_raises(shape):
    """T not divisible by the tubelet, H/W not divisible by the patch, or a 4-D input is a ValueError."""
    model = get_model("vit_tiny_video", tubelet_size=2)
    with pytest.raises(ValueError):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
