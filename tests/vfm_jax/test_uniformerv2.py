"""UniFormerV2: official golden outputs (both regimes), the `.pyth` converter, FROZEN, CLIP parity of the
backbone (and of the CLIP initialisation with centre inflation), and BatchNorm against torch."""
import json
import pathlib
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, run_module
from configs.uniformerv2.finetune import CLIP_SUBTREES
from vfm_jax import checkpointing, sharding
from vfm_jax.convert import convert
from vfm_jax.converters import clip
from vfm_jax.converters.torch_io import load_weights
from vfm_jax.converters.uniformerv2 import convert_uniformerv2
from vfm_jax.models import build_model
from vfm_jax.models.uniformerv2 import BatchNorm, UniFormerV2

FIXTURES = pathlib.Path(ROOT) / "tests" / "fixtures" / "uniformerv2"
REGIMES = ("k400", "ssv2")


def _fixture(regime):
    folder = FIXTURES / regime
    config = json.loads((folder / "config.json").read_text())
    video = np.load(folder / "inputs.npz")["video"].transpose(0, 2, 3, 4, 1)  # (B, C, T, H, W) -> channels-last
    return folder, config, video, dict(np.load(folder / "outputs.npz"))


@pytest.mark.parametrize("regime", REGIMES)
def test_check_fixture_tool_passes(regime):
    """The user-facing check: `python -m vfm_jax.tools.check_fixture` on the official golden outputs."""
    proc = run_module("vfm_jax.tools.check_fixture", str(FIXTURES / regime))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    for name in ("logits", "ln_pre_out", "backbone_last_block_out", "global_cls_token_out", "feature_pre_head"):
        assert any(line.startswith(f"{name}: ") for line in lines), lines
    worst = float(re.fullmatch(r"max abs error (\S+)", lines[-1]).group(1))
    assert worst <= 1e-4


@pytest.mark.parametrize("regime", REGIMES)
def test_unrolled_layout_matches_the_fixture(regime):
    folder, config, video, want = _fixture(regime)
    ctor = config["backbone_ctor"]
    spec, variables = convert_uniformerv2(
        load_weights(folder / "state_dict.npz"), num_heads=ctor["heads"], scan_layers=False
    )
    assert spec["global_layers"] == tuple(ctor["return_list"])  # the default: the last K layers
    assert spec["lmhra"] == (not ctor["no_lmhra"]) and spec["temporal_downsample"] == ctor["temporal_downsample"]
    logits = jax.jit(build_model(spec).apply)(variables, video)
    assert np.abs(np.asarray(logits) - want["logits"]).max() <= 1e-4


def test_converts_a_released_pyth(tmp_path):
    """A slowfast checkpoint ({'model_state': ...}, `backbone.` keys) through `vfm_jax.convert`, with BatchNorm stats."""
    import torch

    folder, config, video, want = _fixture("ssv2")
    state = load_weights(folder / "state_dict.npz")
    torch_state = {k: torch.tensor(v) for k, v in state.items()}
    for key in torch_state:
        if key.endswith("num_batches_tracked"):
            torch_state[key] = torch.tensor(0, dtype=torch.int64)
    torch.save({"model_state": torch_state, "epoch": 22}, tmp_path / "ssv2.pyth")
    spec = convert("uniformerv2", str(tmp_path / "ssv2.pyth"), str(tmp_path / "out"), num_heads=4)
    variables = checkpointing.load_variables(tmp_path / "out")
    stats = variables["batch_stats"]["encoder"]["blocks"]["lmhra2"]["norm"]
    running_var = state["backbone.transformer.resblocks.1.lmhra2.pos_embed.0.running_var"]
    np.testing.assert_array_equal(stats["var"][1], running_var)
    model = build_model(checkpointing.read_metadata(tmp_path / "out")["model"])
    assert spec["frozen"] is False and spec["double_lmhra"] is True
    assert np.abs(np.asarray(model.apply(variables, video)) - want["logits"]).max() <= 1e-4


def test_frozen_model_classifies_the_query_alone_and_stops_backbone_gradients():
    """FROZEN: no `balance`, logits = proj(query); the fixture's last query gives the expected logits."""
    folder, config, video, want = _fixture("k400")
    state = load_weights(folder / "state_dict.npz")
    del state["backbone.transformer.balance"]
    spec, variables = convert_uniformerv2(state, num_heads=config["backbone_ctor"]["heads"])
    assert spec["frozen"] is True and "balance" not in variables["params"]["global"]
    model = build_model(spec)
    query = want["global_cls_token_out"][0]  # (B, D): the global blocks do not depend on FROZEN
    mean, var = query.mean(-1, keepdims=True), query.var(-1, keepdims=True)
    p = "backbone.transformer.proj."
    normed = (query - mean) / np.sqrt(var + 1e-5) * state[p + "0.weight"] + state[p + "0.bias"]
    expected = normed @ state[p + "2.weight"].T + state[p + "2.bias"]
    assert np.abs(np.asarray(model.apply(variables, video)) - expected).max() <= 1e-4

    def loss(params):
        rngs = {"dropout": jax.random.PRNGKey(0), "droppath": jax.random.PRNGKey(1)}
        logits = model.apply({"params": params}, video, train=True, rngs=rngs)
        return jnp.sum(logits ** 2)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    for key in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "encoder"):
        assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads[key])), key
    assert float(jnp.abs(grads["global"]["block_0"]["attn"]["q_kernel"]).max()) > 0


def _graft_clip(variables, clip_params):
    """Copy the CLIP subtrees the configs' `init_from` copies; shapes must match exactly."""
    params = flax.traverse_util.flatten_dict(variables["params"], sep="/")
    source = flax.traverse_util.flatten_dict(clip_params, sep="/")
    for subtree in CLIP_SUBTREES:
        keys = [k for k in source if k == subtree or k.startswith(subtree + "/")]
        assert keys, subtree
        for k in keys:
            assert params[k].shape == source[k].shape, k
            params[k] = source[k]
    return {**variables, "params": flax.traverse_util.unflatten_dict(params, sep="/")}


def _hf_clip(depth, width=32, heads=4, image=24, patch=6):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=depth, num_attention_heads=heads,
        image_size=image, patch_size=patch, projection_dim=16, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    hf = CLIPVisionModelWithProjection(config).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():  # every weight random, LayerNorms included
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            param.copy_(base + 0.2 * torch.randn_like(param))
    return hf


@pytest.mark.parity
@pytest.mark.parametrize("regime", ["k400_t1", "ssv2_from_clip"])
def test_backbone_tokens_equal_clip_layer_by_layer(regime):
    """Local MHRA off and T = 1: every layer's tokens are CLIP's (transformers CLIPVisionModel).

    `ssv2_from_clip`: the SSv2 regime (double local MHRA, temporal down-sampling)
    initialised from CLIP: zero-initialised MHRA and the centre-inflated conv
    make output frame t exactly CLIP on input frame 2t.
    """
    import torch
    from test_umt_pretrain import _hf_to_openai

    depth, b = 3, 2
    hf = _hf_clip(depth)
    state = _hf_to_openai({k: v.numpy() for k, v in hf.state_dict().items() if "position_ids" not in k}, depth)
    _, clip_vars = clip.convert_clip_visual(state, num_heads=4)
    frames = 1 if regime == "k400_t1" else 4
    ssv2 = regime == "ssv2_from_clip"
    model = UniFormerV2(
        num_classes=5, width=32, depth=depth, num_heads=4, patch_size=6, image_size=24, global_layers=(1, 2),
        lmhra=ssv2, temporal_downsample=ssv2,
    )
    video = np.random.default_rng(0).normal(size=(b, frames, 24, 24, 3)).astype(np.float32)
    variables = _graft_clip(nn.unbox(model.init(jax.random.PRNGKey(1), video)), clip_vars["params"])
    _, state_out = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(variables, video)
    ours = np.concatenate([state_out["intermediates"]["ln_pre_out"][0][None],
                           state_out["intermediates"]["hidden_states"][0]])  # (1 + depth, B*T', 1+P, D)

    seen = video[:, ::2] if ssv2 else video  # output frame t is centred on input frame 2t
    with torch.no_grad():
        want = hf(pixel_values=torch.tensor(seen.reshape(-1, 24, 24, 3).transpose(0, 3, 1, 2)),
                  output_hidden_states=True)
    want = np.stack([h.numpy() for h in want.hidden_states])  # embeddings after pre-LN, then each layer
    assert ours.shape == want.shape
    assert np.abs(ours - want).max() <= 1e-4


def test_batchnorm_matches_torch_batchnorm3d():
    """Training: batch statistics out, running mean / unbiased running variance updated with momentum 0.1;
    evaluation: the running statistics, unchanged."""
    import torch

    rng = np.random.default_rng(0)
    xs = [rng.normal(1.0, 2.0, size=(2, 5, 3, 4, 4)).astype(np.float32) for _ in range(2)]  # (N, C, T, H, W)
    ref = torch.nn.BatchNorm3d(5)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(rng.normal(1, 0.2, 5), dtype=torch.float32))
        ref.bias.copy_(torch.tensor(rng.normal(0, 0.2, 5), dtype=torch.float32))
    bn = BatchNorm()
    to_last = lambda x: x.transpose(0, 2, 3, 4, 1)  # noqa: E731
    variables = nn.unbox(bn.init(jax.random.PRNGKey(0), to_last(xs[0]), train=False))
    variables["params"] = {"scale": ref.weight.detach().numpy(), "bias": ref.bias.detach().numpy()}
    ref.train()
    for x in xs:
        got, updated = bn.apply(variables, to_last(x), train=True, mutable=["batch_stats"])
        want = ref(torch.tensor(x)).detach().numpy()
        np.testing.assert_allclose(got, to_last(want), atol=1e-5)
        variables = {**variables, **updated}
    np.testing.assert_allclose(variables["batch_stats"]["mean"], ref.running_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(variables["batch_stats"]["var"], ref.running_var.numpy(), atol=1e-6)

    ref.eval()
    got, kept = bn.apply(variables, to_last(xs[0]), train=False, mutable=["batch_stats"])
    np.testing.assert_allclose(got, to_last(ref(torch.tensor(xs[0])).detach().numpy()), atol=1e-5)
    for a, c in zip(jax.tree.leaves(kept), jax.tree.leaves(variables["batch_stats"])):
        np.testing.assert_array_equal(a, c)


def _tiny_ssv2_model():
    return UniFormerV2(
        num_classes=4, width=32, depth=2, num_heads=4, patch_size=8, image_size=32, global_layers=(0, 1),
        lmhra=True, temporal_downsample=True, global_mlp_dropout=0.0, head_dropout=0.0,
    )


def test_batch_stats_update_in_training_and_stay_fixed_in_evaluation():
    model = _tiny_ssv2_model()
    video = np.random.default_rng(0).normal(size=(2, 4, 32, 32, 3)).astype(np.float32)
    variables = nn.unbox(model.init(jax.random.PRNGKey(0), video))
    rngs = {"droppath": jax.random.PRNGKey(1)}
    _, trained = model.apply(variables, video, train=True, mutable=["batch_stats"], rngs=rngs)
    _, evaluated = model.apply(variables, video, train=False, mutable=["batch_stats"])
    for before, after, same in zip(jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(trained["batch_stats"]),
                                   jax.tree.leaves(evaluated["batch_stats"])):
        assert float(np.abs(after - before).max()) > 1e-3
        np.testing.assert_array_equal(same, before)


def test_batch_stats_are_global_when_the_batch_is_sharded():
    """8 data-parallel devices: the same statistics as one device over the whole batch."""
    model = _tiny_ssv2_model()
    video = np.random.default_rng(0).normal(size=(8, 4, 32, 32, 3)).astype(np.float32)
    variables = nn.unbox(model.init(jax.random.PRNGKey(0), video))

    def stats(v, x):
        rngs = {"droppath": jax.random.PRNGKey(1)}
        return model.apply(v, x, train=True, mutable=["batch_stats"], rngs=rngs)[1]["batch_stats"]

    single = jax.jit(stats)(variables, video)
    mesh = sharding.make_mesh(dict(data=8, fsdp=1, tensor=1))
    sharded_video = jax.device_put(video, sharding.batch_sharding(mesh))
    sharded = jax.jit(stats)(jax.device_put(variables, sharding.replicated(mesh)), sharded_video)
    assert len(sharded_video.sharding.device_set) == 8
    for a, c in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=1e-6)
