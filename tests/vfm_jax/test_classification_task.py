"""Classification task: multi-view scoring (softmax per view, then mean) and masked sums."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vfm_jax.tasks import build_task


def test_multi_view_scores_average_softmax_over_views(tiny_config):
    task = build_task(tiny_config())
    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (3, 2, 8, 32, 32, 3), dtype=np.uint8)  # (B, views, T, H, W, C)
    variables = task.init(jax.random.PRNGKey(0), {"video": video[:, 0]})
    variables = jax.tree.map(lambda p: p * 5, nn.unbox(variables))  # sharper, view-dependent logits
    labels = np.array([0, 1, 3], np.int32)
    batch = {"video": video, "direction": labels, "mask": np.array([True, True, False])}
    sums = jax.jit(task.eval_metrics)(variables, batch)

    logits = np.stack([np.asarray(task.predict(variables, {"video": video[:, v]})) for v in range(2)], 1)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True)).mean(1)  # (B, classes)
    real = np.array([1.0, 1.0, 0.0])
    np.testing.assert_allclose(sums["loss"], -(np.log(probs[np.arange(3), labels]) * real).sum(), rtol=1e-5)
    np.testing.assert_allclose(sums["top1"], ((probs.argmax(-1) == labels) * real).sum())
    assert float(sums["count"]) == 2.0 and float(sums["top5"]) == 2.0  # 4 classes: top-5 always hits


def test_single_view_equals_one_view_stack(tiny_config):
    task = build_task(tiny_config())
    video = np.random.default_rng(1).integers(0, 255, (2, 8, 32, 32, 3), dtype=np.uint8)
    variables = task.init(jax.random.PRNGKey(1), {"video": video})
    batch = {"direction": np.array([2, 1], np.int32), "mask": np.array([True, True])}
    single = task.eval_metrics(variables, {**batch, "video": video})
    stacked = task.eval_metrics(variables, {**batch, "video": jnp.asarray(video)[:, None]})
    for k in single:
        np.testing.assert_allclose(single[k], stacked[k], rtol=1e-5)
