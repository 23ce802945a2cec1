"""Video <-> text retrieval R@1/5/10, ranked by VTC and re-ranked by VTM as UMT evaluates.

`multi_modality/tasks/retrieval_utils.py`: every video and caption of the
split is encoded once; the dual-encoder similarity (mean over frames of the
cosine) ranks all pairs; for each query the top `k_test` candidates are
re-scored by the matching head (`itm_head` logit of "matched" on the fused
[CLS]) and ranked by that score, the rest below them. Results are fractions:
`t2v_r1` ... `v2t_r10`, `mean_recall`, and the same from the similarity alone
with a `_vtc` suffix. Caption i belongs to video i (one caption per video,
as MSRVTT-1kA and paragraph retrieval on DiDeMo/ActivityNet use).

The task provides `encode_videos`, `encode_texts` and `match_scores`. The
encoded split is kept on every device for re-ranking: (videos x tokens x
width) must fit, as it must on the official single-GPU offload path.
"""
from __future__ import annotations

import jax
import numpy as np

from data.pipeline import eval_batches
from vfm_jax import sharding
from vfm_jax.input import make_source

RECALL_AT = (1, 5, 10)


def ranks(scores: np.ndarray) -> np.ndarray:
    """(Q, C) scores where candidate q is query q's match -> (Q,) 0-based rank of that match.

    Ties count against the match (rank = candidates scoring >= it, minus
    itself), so a constant score never looks like a hit.
    """
    correct = np.diagonal(scores)[:, None]
    return np.sum(scores >= correct, axis=1) - 1


def recalls(t2v: np.ndarray, v2t: np.ndarray, suffix: str = "") -> dict[str, float]:
    out = {}
    for name, matrix in (("t2v", t2v), ("v2t", v2t)):
        r = ranks(matrix)
        out.update({f"{name}_r{k}{suffix}": float(np.mean(r < k)) for k in RECALL_AT})
    out[f"mean_recall{suffix}"] = float(np.mean(list(out.values())))
    return out


def top_k_pairs(sim: np.ndarray, k: int) -> np.ndarray:
    """(Q, C) similarity -> (Q * k, 2) [query, candidate] of each query's k best candidates."""
    best = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.stack([np.repeat(np.arange(sim.shape[0]), k), best.reshape(-1)], axis=1)


def reranked(sim: np.ndarray, pairs: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The top-k pairs scored by the matching head, every other pair below all of them."""
    out = np.full(sim.shape, -np.inf, np.float32)
    out[pairs[:, 0], pairs[:, 1]] = scores
    return out


class RetrievalEvaluator:
    def __init__(self, cfg, data_cfg, task, mesh):
        if cfg.k_test < 0:
            raise ValueError(f"evals k_test={cfg.k_test} must be >= 0 (0: similarity only)")
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        if cfg.pair_batch_size % shards:
            raise ValueError(f"evals pair_batch_size={cfg.pair_batch_size} must divide into the {shards} data shards")
        self.source = make_source(data_cfg, cfg.split)
        self.batch_size = cfg.batch_size
        self.pair_batch_size = cfg.pair_batch_size
        self.k_test = cfg.k_test
        self.task = task
        self.mesh = mesh
        self._batch_sharding = sharding.batch_sharding(mesh)
        replicated = sharding.replicated(mesh)

        def encode(variables, batch):
            return task.encode_videos(variables, batch), task.encode_texts(variables, batch)

        def score(variables, videos, texts, pairs):
            return task.match_scores(variables, texts["hidden"][pairs[:, 1]], texts["mask"][pairs[:, 1]],
                                     videos["tokens"][pairs[:, 0]])

        self._encode = jax.jit(encode, out_shardings=replicated)
        self._score = jax.jit(score, out_shardings=replicated)

    def _encode_split(self, variables) -> tuple[dict, dict]:
        keys = ("video", "text_ids", "text_mask")
        videos, texts = [], []
        for local in eval_batches(self.source, global_batch_size=self.batch_size, keys=keys):
            if local["video"].ndim != 5:
                raise ValueError("retrieval evaluates one clip per video: set data.test_clips = test_crops = 1")
            batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(self._batch_sharding, x), local)
            v, t = jax.device_get(self._encode(variables, batch))
            keep = np.asarray(jax.device_get(batch["mask"]))
            videos.append(jax.tree.map(lambda x: x[keep], v))
            texts.append(jax.tree.map(lambda x: x[keep], t))
        return (jax.tree.map(lambda *x: np.concatenate(x), *videos),
                jax.tree.map(lambda *x: np.concatenate(x), *texts))

    def _match(self, variables, videos, texts, pairs: np.ndarray) -> np.ndarray:
        """Matching scores of (video, text) index pairs, in fixed-size sharded chunks."""
        replicated = sharding.replicated(self.mesh)
        videos = jax.device_put({"tokens": videos["tokens"]}, replicated)
        texts = jax.device_put({"hidden": texts["hidden"], "mask": texts["mask"]}, replicated)
        size = self.pair_batch_size
        out = []
        for start in range(0, len(pairs), size):
            chunk = pairs[start:start + size]
            padded = np.concatenate([chunk, np.zeros((size - len(chunk), 2), chunk.dtype)])
            scores = self._score(variables, videos, texts, jax.device_put(padded, self._batch_sharding))
            out.append(np.asarray(jax.device_get(scores))[:len(chunk)])
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def run(self, variables) -> dict[str, float]:
        videos, texts = self._encode_split(variables)
        sim = np.einsum("vte,ne->vn", videos["embedding"], texts["embedding"]) / videos["embedding"].shape[1]
        results = recalls(sim.T, sim, suffix="_vtc")
        k = min(self.k_test, sim.shape[0])
        if not k:
            return results
        v2t_pairs = top_k_pairs(sim, k)  # [video, text]
        t2v_pairs = top_k_pairs(sim.T, k)[:, ::-1]  # [video, text]
        pairs, inverse = np.unique(np.concatenate([v2t_pairs, t2v_pairs]), axis=0, return_inverse=True)
        scores = self._match(variables, videos, texts, pairs)[inverse.reshape(-1)]
        v2t = reranked(sim, v2t_pairs, scores[:len(v2t_pairs)])
        t2v = reranked(sim.T, t2v_pairs[:, ::-1], scores[len(v2t_pairs):])
        return {**recalls(t2v, v2t), **results}
