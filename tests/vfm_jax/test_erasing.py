"""Random erasing: one box per clip, the same on every frame, N(0, 1) pixels, drawn like timm's RandomErasing."""
import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vfm_jax.tasks.erasing import random_erasing

SHAPE = (64, 3, 24, 20, 3)  # (B, T, H, W, C)
_erase = jax.jit(random_erasing, static_argnames=("prob",))


def _timm_box_sizes(h, w, draws, seed=0):
    """timm `_erase_cube` with max_count 1 written out: the accepted (h, w) of each draw, or None."""
    rnd = random.Random(seed)
    sizes = []
    for _ in range(draws):
        for _ in range(100):
            target = rnd.uniform(0.02, 1 / 3) * h * w
            aspect = math.exp(rnd.uniform(math.log(0.3), math.log(1 / 0.3)))
            bh, bw = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if bw < w and bh < h:
                sizes.append((bh, bw))
                break
    return np.asarray(sizes)


def _boxes(video, erased):
    """Per clip: the (rows, cols) extent of the changed pixels, checked to be one box on every frame."""
    changed = np.asarray(video != erased)  # (B, T, H, W, C)
    out = []
    for clip in changed:
        assert (clip == clip[:1]).all(), "the box must be the same on every frame and channel"
        plane = clip[0, :, :, 0]
        if not plane.any():
            out.append(None)
            continue
        rows, cols = np.nonzero(plane.any(1))[0], np.nonzero(plane.any(0))[0]
        assert plane[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all(), "a solid rectangle"
        out.append((rows[0], cols[0], len(rows), len(cols)))
    return out


def test_one_box_per_clip_same_on_every_frame_with_noise():
    video = jnp.full(SHAPE, 7.0)  # far from N(0, 1): every erased pixel changes
    erased = _erase(jax.random.PRNGKey(0), video, 1.0)
    boxes = _boxes(video, erased)
    assert all(b is not None for b in boxes)
    for (top, left, bh, bw), clip in zip(boxes, np.asarray(erased)):
        assert top + bh <= SHAPE[2] and left + bw <= SHAPE[3] and bh < SHAPE[2] and bw < SHAPE[3]
        noise = clip[:, top:top + bh, left:left + bw]
        assert not np.allclose(noise[0], noise[1]), "new noise on each frame"
    values = np.concatenate([np.asarray(e)[:, top:top + h, left:left + w].ravel()
                             for e, (top, left, h, w) in zip(erased, boxes)])
    assert abs(values.mean()) < 0.05 and abs(values.std() - 1.0) < 0.05


def test_box_sizes_and_positions_follow_timm():
    """Box areas and aspect ratios have timm's distribution; corners cover the allowed range."""
    h, w = SHAPE[2], SHAPE[3]
    video = jnp.full(SHAPE, 7.0)
    boxes = [b for s in range(16) for b in _boxes(video, _erase(jax.random.PRNGKey(s), video, 1.0))]
    ours = np.asarray([(bh, bw) for _, _, bh, bw in boxes])
    theirs = _timm_box_sizes(h, w, len(ours))
    for stat in (lambda s: s[:, 0] * s[:, 1], lambda s: np.log(s[:, 0] / s[:, 1])):
        a, b = stat(ours), stat(theirs)
        assert abs(a.mean() - b.mean()) < 0.1 * (abs(b.mean()) + b.std())
        assert abs(a.std() - b.std()) < 0.15 * b.std()
    tops = np.asarray([top for top, _, _, _ in boxes])
    assert tops.min() == 0 and (tops + ours[:, 0]).max() == h


@pytest.mark.parametrize("prob", [0.0, 0.25])
def test_probability(prob):
    video = jnp.full(SHAPE, 7.0)
    erased = [_boxes(video, _erase(jax.random.PRNGKey(s), video, prob)) for s in range(8)]
    rate = np.mean([b is not None for boxes in erased for b in boxes])
    assert rate == 0.0 if prob == 0.0 else abs(rate - prob) < 0.06


def test_bad_probability():
    with pytest.raises(ValueError, match="probability"):
        random_erasing(jax.random.PRNGKey(0), jnp.zeros(SHAPE), 1.5)
