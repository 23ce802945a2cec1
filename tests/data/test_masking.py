"""Token masks: exact per-frame counts, static visible shapes, and UMT's attention-guided sampling."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data import masking


def test_counts_follow_the_official_formula():
    assert masking.num_visible(196, 0.8) == 40   # UMT
    assert masking.num_visible(196, 0.9) == 20   # VideoMAE: int(0.9 * 196) = 176 masked
    assert masking.num_masked(196, 0.75) == 147
    assert masking.num_visible(5, 0.6) == 2
    assert masking.num_visible(10, 0.0) == 10
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError):
            masking.num_visible(196, bad)
    with pytest.raises(ValueError):
        masking.num_visible(0, 0.5)


def test_tube_mask():
    frames, n = 8, 196
    masks = [masking.tube_mask(np.random.default_rng(seed), frames, n, 0.9) for seed in range(5)]
    for mask in masks:
        assert mask.shape == (frames * n,) and mask.dtype == bool
        per_frame = mask.reshape(frames, n)
        assert np.all(per_frame.sum(axis=1) == 176)
        assert np.all(per_frame == per_frame[0])
    assert len({m.tobytes() for m in masks}) == 5


def test_random_frame_mask():
    frames, n = 8, 196
    mask = masking.random_frame_mask(np.random.default_rng(0), frames, n, 0.8)
    assert mask.shape == (frames * n,) and mask.dtype == bool
    per_frame = mask.reshape(frames, n)
    assert np.all(per_frame.sum(axis=1) == 156)
    assert len({row.tobytes() for row in per_frame}) == frames


def test_masks_cover_positions_uniformly():
    rng = np.random.default_rng(0)
    hits = sum(masking.tube_mask(rng, 1, 10, 0.3).astype(int) for _ in range(3000))
    assert np.all(np.abs(hits / 3000 - 0.3) < 0.04)


def test_visible_indices():
    mask = np.array([True, False, True, False, False])
    np.testing.assert_array_equal(masking.visible_indices(mask), [1, 3, 4])
    batch = np.stack([masking.random_frame_mask(np.random.default_rng(s), 2, 6, 0.5) for s in range(3)])
    idx = masking.visible_indices(batch)
    assert idx.shape == (3, 6)
    for row, positions in zip(batch, idx):
        np.testing.assert_array_equal(positions, np.flatnonzero(~row))
    with pytest.raises(ValueError):
        masking.visible_indices(np.array([[True, False], [False, False]]))
    with pytest.raises(ValueError):
        masking.visible_indices(np.zeros(4, np.int32))


def test_gather_visible():
    batch, frames, n, dim = 3, 4, 6, 5
    tokens = jax.random.normal(jax.random.key(0), (batch, frames * n, dim))
    mask = np.stack([masking.random_frame_mask(np.random.default_rng(s), frames, n, 0.5) for s in range(batch)])
    want = np.asarray(tokens)[~mask].reshape(batch, -1, dim)   # VideoMAE's x[~mask].reshape(B, -1, C)
    got = masking.gather_visible(tokens, jnp.asarray(mask))
    assert got.shape == (batch, 12, dim)
    np.testing.assert_array_equal(np.asarray(got), want)
    jitted = jax.jit(masking.gather_visible, static_argnums=2)
    np.testing.assert_array_equal(np.asarray(jitted(tokens, jnp.asarray(mask), 12)), want)
    with pytest.raises(ValueError):
        masking.gather_visible(tokens, jnp.asarray(mask[:, :-1]))


def test_attention_guided_mask_shape_counts_and_jit():
    batch, frames, n = 2, 8, 196
    attn = jax.nn.softmax(jax.random.normal(jax.random.key(1), (batch, frames, n)) * 3, axis=-1)
    fn = jax.jit(functools.partial(masking.attention_guided_mask, mask_ratio=0.8))
    mask = fn(jax.random.key(2), attn)
    assert mask.shape == (batch, frames * n) and mask.dtype == jnp.bool_
    visible = (~np.asarray(mask)).reshape(batch, frames, n).sum(axis=-1)
    assert np.all(visible == 40)
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(masking.attention_guided_mask(
        jax.random.key(2), attn, 0.8)))
    assert not np.array_equal(np.asarray(mask), np.asarray(fn(jax.random.key(3), attn)))
    # Gathering with the static count composes under jit.
    tokens = jnp.zeros((batch, frames * n, 4))
    step = jax.jit(lambda k, a, x: masking.gather_visible(x, fn(k, a), frames * 40))
    gathered = step(jax.random.key(2), attn, tokens)
    assert gathered.shape == (batch, frames * 40, 4)


def test_attention_guided_mask_skips_zero_attention():
    n = 196
    key = jax.random.key(0)
    weights = jax.random.uniform(key, (4, 8, n))
    support = np.zeros((4, 8, n), bool)
    support[..., ::3] = True   # 66 tokens with attention >= 40 needed
    attn = jnp.where(support, weights, 0.0)
    for seed in range(5):
        visible = ~np.asarray(masking.attention_guided_mask(jax.random.key(seed), attn, 0.8)).reshape(4, 8, n)
        assert np.all(visible.sum(-1) == 40) and not np.any(visible & ~support)
    # With only 10 positive tokens all of them are kept and 30 zero-attention tokens fill up.
    few = np.zeros((1, 1, n), np.float32)
    few[0, 0, :10] = 0.1
    visible = ~np.asarray(masking.attention_guided_mask(key, jnp.asarray(few), 0.8))[0]
    assert visible.sum() == 40 and visible[:10].all()


def test_attention_guided_mask_ignores_attention_scale():
    """Only ratios of attention matter, as for torch.multinomial's unnormalised weights."""
    attn = jax.random.uniform(jax.random.key(0), (2, 4, 49)) + 0.01
    a = masking.attention_guided_mask(jax.random.key(5), attn, 0.75)
    b = masking.attention_guided_mask(jax.random.key(5), attn * 7.0, 0.75)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_attention_guided_mask_matches_multinomial_without_replacement():
    """Pair frequencies over 20k keys equal the exact probabilities of drawing 2 of 5 without replacement."""
    p = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
    draws = 20_000
    attn = jnp.asarray(p, jnp.float32).reshape(1, 1, 5)
    keys = jax.random.split(jax.random.key(0), draws)
    masks = jax.jit(jax.vmap(lambda k: masking.attention_guided_mask(k, attn, 0.6)[0]))(keys)
    visible = ~np.asarray(masks)
    assert np.all(visible.sum(axis=1) == 2)
    for i, j in itertools.combinations(range(5), 2):
        exact = p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j])
        freq = np.mean(visible[:, i] & visible[:, j])
        stderr = np.sqrt(exact * (1 - exact) / draws)
        assert abs(freq - exact) < 4 * stderr, (i, j, freq, exact)
    # Not simply proportional inclusion: the first token is kept with P = 0.4 + sum_j p_j * 0.4 / (1 - p_j).
    keep_first = p[0] + sum(p[j] * p[0] / (1 - p[j]) for j in range(1, 5))
    assert abs(visible[:, 0].mean() - keep_first) < 4 * np.sqrt(keep_first * (1 - keep_first) / draws)


def test_attention_guided_mask_rejects_bad_shapes():
    with pytest.raises(ValueError):
        masking.attention_guided_mask(jax.random.key(0), jnp.ones((2, 196)), 0.8)
