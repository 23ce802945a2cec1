"""UMT stage-2 objectives against direct re-computations of the official formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vfm_jax import sharding
from vfm_jax.evaluators.retrieval import ranks, recalls, reranked, top_k_pairs
from vfm_jax.tasks.umt import _data_shards, contrastive_loss, hard_negatives, mlm_mask, video_text_similarity


def _log_softmax(x, axis):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def test_contrastive_loss_is_the_official_multi_positive_vtc():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(6, 6)).astype(np.float32) * 3
    ids = np.array([0, 1, 1, 2, 3, 3])
    # criterions.py: targets = eq(idx, idx.T) / row sums; mean of the two directions.
    targets = (ids[:, None] == ids[None]).astype(np.float32)
    targets /= targets.sum(1, keepdims=True)
    v2t = -(np.sum(_log_softmax(sim, 1) * targets, 1)).mean()
    t2v = -(np.sum(_log_softmax(sim.T, 1) * targets, 1)).mean()
    got = contrastive_loss(jnp.asarray(sim), jnp.asarray(ids))
    np.testing.assert_allclose(got, (v2t + t2v) / 2, rtol=1e-6)


def test_similarity_is_the_mean_over_frames_of_the_cosine():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(3, 4, 8))
    t = rng.normal(size=(5, 8))
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    t /= np.linalg.norm(t, axis=-1, keepdims=True)
    want = np.stack([[np.mean([v[i, f] @ t[j] for f in range(4)]) for j in range(5)] for i in range(3)])
    np.testing.assert_allclose(video_text_similarity(jnp.asarray(v), jnp.asarray(t)), want, atol=1e-6)


def test_hard_negatives_follow_softmax_and_never_pick_the_same_id():
    sim = jnp.array([[2.0, 1.0, 0.0, -1.0], [0.5, 2.0, 0.5, 0.0], [0.0, 0.0, 3.0, 1.0], [1.0, 0.0, 0.0, 1.0]])
    ids = jnp.array([0, 1, 2, 0])  # samples 0 and 3 share a video
    neg_text, neg_video = jax.vmap(lambda k: hard_negatives(k, sim, ids))(jax.random.split(jax.random.PRNGKey(0), 20000))
    same = np.asarray(ids)[:, None] == np.asarray(ids)[None]
    for row in range(4):
        allowed = ~same[row]
        assert set(np.unique(neg_text[:, row])) <= set(np.flatnonzero(allowed))
        assert set(np.unique(neg_video[:, row])) <= set(np.flatnonzero(~same[:, row]))
        # ∝ softmax(sim) over the allowed texts (the official multinomial on masked softmax weights).
        p = np.exp(np.asarray(sim[row])) * allowed
        p /= p.sum()
        freq = np.bincount(np.asarray(neg_text[:, row]), minlength=4) / neg_text.shape[0]
        np.testing.assert_allclose(freq, p, atol=0.015)


def test_mlm_mask_rates_and_exclusions():
    b, length, vocab = 512, 32, 1000
    rng = np.random.default_rng(0)
    ids = rng.integers(10, vocab, size=(b, length)).astype(np.int32)
    lengths = rng.integers(5, length + 1, size=b)
    text_mask = np.arange(length)[None] < lengths[:, None]
    ids[:, 0] = 2  # [CLS]
    ids[~text_mask] = 0  # [PAD]
    masked, picked = mlm_mask(jax.random.PRNGKey(1), jnp.asarray(ids), jnp.asarray(text_mask), prob=0.5,
                              mask_id=4, pad_id=0, cls_id=2, vocab_size=vocab)
    masked, picked = np.asarray(masked), np.asarray(picked)
    eligible = text_mask & (ids != 2)
    assert not picked[~eligible].any()
    np.testing.assert_array_equal(masked[~picked], ids[~picked])
    assert abs(picked[eligible].mean() - 0.5) < 0.02
    as_mask = (masked == 4) & picked
    kept = (masked == ids) & picked
    assert abs(as_mask.sum() / picked.sum() - 0.8) < 0.02
    assert abs(kept.sum() / picked.sum() - 0.1) < 0.02  # 10% kept (+ random draws of the same id, ~0.01%)


def test_vtm_negatives_stay_in_their_data_shard():
    """Under a 4-way data mesh, a batch of 8 is sampled as 4 groups of 2, like the official per-GPU batch."""
    mesh = sharding.make_mesh({"data": 4, "fsdp": 1, "tensor": 1}, jax.devices()[:4])
    with jax.set_mesh(mesh):
        assert jax.jit(lambda: jnp.int32(_data_shards(8)))() == 4
        assert jax.jit(lambda: jnp.int32(_data_shards(6)))() == 1  # not divisible: one group
    assert _data_shards(8) == 1  # no mesh


# ------------------------------------------------------------------ retrieval metrics

def test_ranks_count_ties_against_the_match():
    scores = np.array([[3.0, 1.0, 2.0], [1.0, 1.0, 0.0], [0.0, 5.0, 4.0]])
    np.testing.assert_array_equal(ranks(scores), [0, 1, 1])
    assert ranks(np.zeros((4, 4))).tolist() == [3, 3, 3, 3]


def test_recalls_of_a_known_ranking():
    n = 20
    scores = -np.abs(np.arange(n)[:, None] - np.arange(n)[None]).astype(float)  # the match is best
    scores[:5] = -scores[:5]  # first five queries rank their match last
    out = recalls(scores, scores.T, suffix="_x")
    assert out["t2v_r1_x"] == pytest.approx(15 / 20)
    assert set(out) == {f"{d}_r{k}_x" for d in ("t2v", "v2t") for k in (1, 5, 10)} | {"mean_recall_x"}


def test_reranking_replaces_the_top_k_by_match_scores():
    sim = np.array([[0.9, 0.8, 0.1], [0.2, 0.1, 0.3], [0.5, 0.4, 0.3]])
    pairs = top_k_pairs(sim, 2)
    assert pairs.tolist() == [[0, 0], [0, 1], [1, 2], [1, 0], [2, 0], [2, 1]]
    # The matching head prefers the true caption where it is in the top k.
    scores = np.array([5.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    out = reranked(sim, pairs, scores)
    assert out[0].tolist() == [5.0, 1.0, -np.inf]
    assert ranks(out).tolist() == [0, 2, 2]  # queries 1 and 2 lost their match outside the top 2
