"""InternVideo cross-model attention: zero-initialised CMAs leave each encoder as it runs alone (VideoViT and
InternVideoMMVision with the same params), each CMA changes only its query side, `frozen` trains only the new
parts, the heads and the multimodal query, and a converted InternVideo-MM loads into the `mm` subtree
(the official fixture's video feature)."""
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT
from data.normalization import NORMALIZATION
from vfm_jax.converters import internvideo_mm
from vfm_jax.models.internvideo_cma import InternVideoCMA, StagedMMVision, StagedVideoViT
from vfm_jax.models.internvideo_mm import InternVideoMMVision
from vfm_jax.models.vit import VideoViT

FIXTURE = pathlib.Path(ROOT) / "tests" / "fixtures" / "internvideo_mm"
VIDEOMAE = dict(width=32, depth=2, num_heads=4, patch_size=8, tubelet_size=2)
CLASSES = 5


@pytest.fixture(scope="module")
def converted_mm():
    """(InternVideoMMVision arguments, params) of the official fixture, converted with the unrolled layout."""
    weights = dict(np.load(FIXTURE / "state_dict.npz"))
    spec, variables = internvideo_mm.convert_internvideo_mm(weights, num_heads=4, text_num_heads=4, scan_layers=False)
    vision = dict(spec["vision"], global_layers=tuple(spec["vision"]["global_layers"]), output_dim=spec["embed_dim"])
    return vision, variables["params"]["vision_encoder"]


def _model(mm_spec, **kwargs):
    args = dict(num_classes=CLASSES, videomae=VIDEOMAE, mm=mm_spec, num_stages=2, mm_frame_stride=2,
                input_normalization="slowfast")
    return InternVideoCMA(**{**args, **kwargs})


def _normalise(pixels, preset):
    mean, std = (np.asarray(v, np.float32) for v in NORMALIZATION[preset])
    return ((pixels - mean) / std).astype(np.float32)


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).uniform(size=(2, 8, 32, 32, 3)).astype(np.float32)


def _init(model, video, mm_params):
    """Fresh params (CMAs at zero) with the converted multimodal encoder in `mm`."""
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), video))["params"]
    assert jax.tree.map(np.shape, params["mm"]) == jax.tree.map(np.shape, mm_params)
    return {**params, "mm": mm_params}


def _applier(model):
    """jit(params, video) -> (output, the model's own intermediates)."""

    @jax.jit
    def apply(params, video):
        out, state = model.apply({"params": params}, video, mutable=["intermediates"])
        return out, {k: v[0] for k, v in state["intermediates"].items() if isinstance(v, tuple)}  # not the branches'

    return apply


@pytest.fixture(scope="module")
def fresh(converted_mm, pixels):
    """The default (frozen) model on 8 slowfast-normalised frames: (model, video, params, apply)."""
    model = _model(converted_mm[0])
    video = _normalise(pixels, "slowfast")
    return model, video, _init(model, video, converted_mm[1]), _applier(model)


def _alone(params, pixels, mm_spec):
    """The two encoders run alone on the same pixels, each with its own normalisation."""
    videomae = VideoViT(num_classes=CLASSES, scan_layers=False, **VIDEOMAE)
    logits, state = jax.jit(lambda p, v: videomae.apply({"params": p}, v, mutable=["intermediates"]))(
        params["videomae"], _normalise(pixels, "imagenet")
    )
    mm = InternVideoMMVision(scan_layers=False, **mm_spec)
    features = jax.jit(mm.apply)({"params": params["mm"]}, _normalise(pixels, "clip")[:, ::2])["features"]
    return logits, state["intermediates"]["pooled_features"][0], features


def test_zero_initialised_cma_leaves_each_encoder_as_it_runs_alone(converted_mm, pixels, fresh):
    mm_spec, mm_params = converted_mm
    _, video, params, apply = fresh
    for name in ("cma_0", "cma_mm"):
        assert not np.any(params[name]["attn"]["out_kernel"]) and not np.any(params[name]["mlp"]["fc2"]["kernel"])
    assert set(params) == {"videomae", "mm", "cma_0", "cma_mm", "mm_head", "fusion"}

    logits, inter = apply(params, video)
    videomae_logits, videomae_pooled, mm_features = _alone(params, pixels, mm_spec)
    np.testing.assert_allclose(inter["videomae_logits"], videomae_logits, atol=1e-5)
    np.testing.assert_allclose(inter["videomae_features"], videomae_pooled, atol=1e-5)
    np.testing.assert_allclose(inter["mm_features"], mm_features, atol=1e-5)

    # The multimodal score: ln_post (eps 1e-5) then mm_head; the output: 0.5 of each score.
    ln = params["mm"]["ln_post"]
    f = np.asarray(mm_features, np.float64)
    normed = (f - f.mean(-1, keepdims=True)) / np.sqrt(f.var(-1, keepdims=True) + 1e-5) * ln["scale"] + ln["bias"]
    mm_logits = normed @ params["mm_head"]["kernel"] + params["mm_head"]["bias"]
    np.testing.assert_allclose(inter["mm_logits"], mm_logits, atol=1e-5)
    np.testing.assert_allclose(logits, 0.5 * (videomae_logits + mm_logits), atol=1e-5)

    # cma=False (the ensemble ablation) has no CMA params and gives the same output.
    ensemble = _model(mm_spec, cma=False)
    ensemble_params = {k: v for k, v in params.items() if not k.startswith("cma_")}
    shapes = nn.unbox(jax.eval_shape(ensemble.init, jax.random.PRNGKey(0), video))["params"]
    assert jax.tree.map(np.shape, shapes) == jax.tree.map(np.shape, ensemble_params)
    np.testing.assert_allclose(_applier(ensemble)(ensemble_params, video)[0], logits, atol=1e-6)

    # Without a head: the pooled VideoMAE feature and ln_post of the multimodal one, side by side.
    headless = _model(mm_spec, num_classes=0)
    features = jax.jit(headless.apply)({"params": {k: params[k] for k in ("videomae", "mm", "cma_0", "cma_mm")}}, video)
    np.testing.assert_allclose(features, np.concatenate([videomae_pooled, normed], axis=-1), atol=1e-5)


def test_staged_encoders_run_whole_as_the_originals(converted_mm, pixels, fresh):
    """The branches' own forward (all stages, no CMA) is VideoViT's and InternVideoMMVision's."""
    mm_spec, _ = converted_mm
    params = fresh[2]
    video = _normalise(pixels, "imagenet")
    args = dict(num_classes=CLASSES, scan_layers=False, **VIDEOMAE)
    want = jax.jit(VideoViT(**args).apply)({"params": params["videomae"]}, video)
    out = jax.jit(StagedVideoViT(**args).apply)({"params": params["videomae"]}, video)
    np.testing.assert_allclose(out, want, atol=1e-6)
    video = _normalise(pixels, "clip")
    want = jax.jit(InternVideoMMVision(scan_layers=False, **mm_spec).apply)({"params": params["mm"]}, video)
    out = jax.jit(StagedMMVision(scan_layers=False, **mm_spec).apply)({"params": params["mm"]}, video)
    assert set(out) == set(want)
    for key in want:
        np.testing.assert_allclose(out[key], want[key], atol=1e-6, err_msg=key)


def _perturbed(params, name, seed):
    """`name`'s attention output and FFN output layers made non-zero."""
    rng = np.random.default_rng(seed)
    cma = jax.tree.map(np.asarray, params[name])
    cma["attn"]["out_kernel"] = rng.normal(0, 0.2, cma["attn"]["out_kernel"].shape).astype(np.float32)
    cma["mlp"]["fc2"]["kernel"] = rng.normal(0, 0.2, cma["mlp"]["fc2"]["kernel"].shape).astype(np.float32)
    return {**params, name: cma}


def test_each_cma_changes_only_its_query_side(fresh):
    """Masked-encoder CMAs query the multimodal tokens; `cma_mm` lets the multimodal class token query the
    masked encoder's tokens."""
    _, video, params, apply = fresh
    _, base = apply(params, video)

    _, inter = apply(_perturbed(params, "cma_0", 1), video)
    assert np.abs(inter["videomae_features"] - base["videomae_features"]).max() > 1e-3
    np.testing.assert_array_equal(inter["mm_features"], base["mm_features"])

    _, inter = apply(_perturbed(params, "cma_mm", 2), video)
    assert np.abs(inter["mm_features"] - base["mm_features"]).max() > 1e-3
    np.testing.assert_array_equal(inter["videomae_features"], base["videomae_features"])

    # The multimodal side reads the masked encoder's tokens after cma_0: changing cma_0 moves it too.
    both = _perturbed(_perturbed(params, "cma_mm", 2), "cma_0", 1)
    _, moved = apply(both, video)
    assert np.abs(moved["mm_features"] - inter["mm_features"]).max() > 1e-4


def _grads(model, params, video):
    labels = jnp.arange(video.shape[0]) % CLASSES

    def loss(p):
        logits = model.apply({"params": p}, video, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return jax.tree.map(np.asarray, jax.jit(jax.grad(loss))(params))


def _moves(tree) -> bool:
    return any(np.any(leaf) for leaf in jax.tree.leaves(tree))


def test_frozen_trains_only_the_cmas_the_heads_and_the_multimodal_query(converted_mm, fresh):
    model, video, params, _ = fresh
    assert model.frozen
    grads = _grads(model, params, video)

    assert _moves(grads["videomae"]["head"]) and _moves(grads["mm_head"]) and _moves(grads["fusion"])
    assert np.any(grads["mm"]["global_blocks"]["temporal_cls_token"])
    # cma_0 feeds the frozen second stage of the masked encoder: its gradient crosses those layers.
    for name in ("cma_0", "cma_mm"):
        assert np.any(grads[name]["attn"]["out_kernel"]) and np.any(grads[name]["mlp"]["fc2"]["kernel"]), name
    assert not _moves({k: v for k, v in grads["videomae"].items() if k != "head"})
    mm_rest = {k: v for k, v in grads["mm"].items() if k != "global_blocks"}
    mm_rest["global_blocks"] = {k: v for k, v in grads["mm"]["global_blocks"].items() if k != "temporal_cls_token"}
    assert not _moves(mm_rest)

    grads = _grads(_model(converted_mm[0], frozen=False), params, video)
    for tree in (grads["videomae"]["patch_embed"], grads["videomae"]["encoder"]["blocks_0"],
                 grads["mm"]["conv1"], grads["mm"]["encoder"]["blocks_0"], grads["mm"]["global_blocks"]["block_0"]):
        assert _moves(tree)


def test_converted_internvideo_mm_in_the_mm_subtree_gives_the_official_video_feature(fresh):
    """The official fixture's 4 CLIP-normalised frames, each shown twice (the branch reads every other frame) and
    given to the model under slowfast mean/std: with the CMAs at zero the mm branch is the official model."""
    _, _, params, apply = fresh
    clip = np.transpose(np.load(FIXTURE / "inputs.npz")["video"], (0, 2, 3, 4, 1))
    mean, std = (np.asarray(v, np.float32) for v in NORMALIZATION["clip"])
    video = _normalise(np.repeat(clip * std + mean, 2, axis=1), "slowfast")
    golden = np.load(FIXTURE / "outputs.npz")["video_feats_pre_ln_post"]
    _, inter = apply(params, video)
    np.testing.assert_allclose(inter["mm_features"], golden, atol=1e-4)

    _, inter = apply(_perturbed(params, "cma_mm", 3), video)
    assert np.abs(inter["mm_features"] - golden).max() > 1e-3


def test_refuses_scanned_layers_and_uneven_stages(converted_mm, pixels):
    mm_spec, _ = converted_mm
    video = _normalise(pixels, "slowfast")
    with pytest.raises(ValueError, match="scan_layers=False"):
        _model(mm_spec, scan_layers=True).init(jax.random.PRNGKey(0), video)
    with pytest.raises(ValueError, match="num_stages=3"):
        _model(mm_spec, num_stages=3).init(jax.random.PRNGKey(0), video)
    with pytest.raises(ValueError, match=r"sets \['dtype'\]"):
        _model({**mm_spec, "dtype": jnp.float32}).init(jax.random.PRNGKey(0), video)
