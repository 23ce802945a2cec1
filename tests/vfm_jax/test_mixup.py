"""Mixup / CutMix with timm's 'batch' semantics, and the classification task training with them (and random erasing)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vfm_jax.tasks import build_task
from vfm_jax.tasks.mixup import cutmix_box, mix
from vfm_jax.train import train_and_evaluate

SHAPE = (4, 3, 16, 12, 3)  # (B, T, H, W, C)
CLASSES = 5


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    video = jnp.asarray(rng.standard_normal(SHAPE), jnp.float32)
    labels = jnp.asarray(rng.integers(0, CLASSES, SHAPE[0]))
    return video, optax.smooth_labels(jax.nn.one_hot(labels, CLASSES), 0.1), labels


_jit_mix = jax.jit(mix, static_argnames=("mixup_alpha", "cutmix_alpha", "switch_prob"))


def _mix(seed, video, targets, **kwargs):
    return _jit_mix(jax.random.PRNGKey(seed), video, targets, **kwargs)


def test_smoothed_targets_are_timms():
    """timm's mixup_target: off = s / K, on = 1 - s + off; optax.smooth_labels gives the same."""
    _, targets, labels = _batch()
    off = 0.1 / CLASSES
    expected = np.where(np.arange(CLASSES) == np.asarray(labels)[:, None], 1 - 0.1 + off, off)
    np.testing.assert_allclose(targets, expected, rtol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_mixup_is_the_explicit_blend_with_the_reversed_batch(seed):
    video, targets, _ = _batch(seed)
    out, mixed, lam = _mix(seed, video, targets, mixup_alpha=0.8, cutmix_alpha=0.0)
    assert 0.0 <= float(lam) <= 1.0
    np.testing.assert_allclose(out, lam * video + (1 - lam) * video[::-1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mixed, lam * targets + (1 - lam) * targets[::-1], rtol=1e-6)
    np.testing.assert_allclose(mixed.sum(-1), 1.0, rtol=1e-6)


def test_cutmix_pastes_one_box_shared_by_all_frames_and_lambda_is_its_complement():
    video, targets, _ = _batch()
    pasted_some = False
    for seed in range(20):
        out, mixed, lam = _mix(seed, video, targets, mixup_alpha=0.0, cutmix_alpha=1.0)
        out, video_np = np.asarray(out), np.asarray(video)
        own, partner = out == video_np, out == video_np[::-1]
        assert np.all(own | partner)  # every pixel is either kept or pasted, never blended
        box = partner[0, 0, :, :, 0]  # samples 0 and B-1 differ everywhere, so this is the box
        assert np.array_equal(partner[0], np.broadcast_to(box[None, :, :, None], partner.shape[1:]))
        for b in range(SHAPE[0]):  # same box in every sample
            np.testing.assert_array_equal(out[b][:, box], video_np[::-1][b][:, box])
            np.testing.assert_array_equal(out[b][:, ~box], video_np[b][:, ~box])
        rows, cols = box.any(1), box.any(0)
        assert np.array_equal(box, np.outer(rows, cols))  # a rectangle...
        assert np.all(np.diff(np.flatnonzero(rows)) == 1) and np.all(np.diff(np.flatnonzero(cols)) == 1)  # ...in one piece
        np.testing.assert_allclose(lam, 1 - box.sum() / box.size, rtol=1e-6)
        np.testing.assert_allclose(mixed, lam * targets + (1 - lam) * targets[::-1], rtol=1e-6)
        np.testing.assert_allclose(mixed.sum(-1), 1.0, rtol=1e-6)
        pasted_some |= bool(box.any())
    assert pasted_some


def _timm_rand_bbox(height, width, lam, cy, cx):
    """The official `rand_bbox` arithmetic for a given centre."""
    ratio = np.sqrt(1 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    return (np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height),
            np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width))


def test_cutmix_box_matches_timms_rand_bbox():
    rng = np.random.default_rng(0)
    box_fn = jax.jit(cutmix_box, static_argnums=(3, 4))
    for lam in (0.0, 0.1, 0.37, 0.5, 0.75, 0.9, 0.999, 1.0):
        for _ in range(5):
            cy, cx = int(rng.integers(16)), int(rng.integers(12))
            outside, corrected = box_fn(jnp.float32(lam), cy, cx, 16, 12)
            y0, y1, x0, x1 = _timm_rand_bbox(16, 12, np.float32(lam), cy, cx)
            expected = np.ones((16, 12), bool)
            expected[y0:y1, x0:x1] = False
            np.testing.assert_array_equal(outside, expected)
            np.testing.assert_allclose(corrected, 1 - (y1 - y0) * (x1 - x0) / (16 * 12), rtol=1e-6)


def test_switch_prob_picks_mixup_or_cutmix():
    video, targets, _ = _batch()
    video_np = np.asarray(video)
    for seed in range(5):
        out = np.asarray(_mix(seed, video, targets, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=1.0)[0])
        assert np.all((out == video_np) | (out == video_np[::-1]))  # cutmix: pixels copied, never blended
        out, _, lam = _mix(seed, video, targets, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.0)
        np.testing.assert_allclose(out, lam * video + (1 - lam) * video[::-1], rtol=1e-6, atol=1e-6)


def test_both_alphas_zero_is_the_identity():
    video, targets, _ = _batch()
    out, mixed, lam = _mix(0, video, targets, mixup_alpha=0.0, cutmix_alpha=0.0)
    np.testing.assert_array_equal(out, video)
    np.testing.assert_array_equal(mixed, targets)
    assert float(lam) == 1.0


@pytest.mark.parametrize("key, value", [("mixup", -0.1), ("cutmix", float("nan")), ("mixup_switch_prob", 1.5), ("random_erasing", 1.5)])
def test_bad_mixing_settings_fail_naming_the_key(tiny_config, key, value):
    with pytest.raises(ValueError, match=f"task.{key}="):
        build_task(tiny_config(**{f"task.{key}": value}))


def test_tiny_classification_trains_with_mixup_and_cutmix(tiny_config, tmp_path):
    config = tiny_config(total_steps=3, **{"task.mixup": 0.8, "task.cutmix": 1.0, "task.label_smoothing": 0.1,
                                           "task.random_erasing": 0.25})
    results = train_and_evaluate(config, tmp_path)
    assert math.isfinite(results["train_loss"]) and results["train_loss"] > 0
    assert "train_top1" not in results  # a mixed batch has no single right answer
    assert 0.0 <= results["val_top1"] <= 1.0
