"""Video <-> text retrieval with a dual encoder (ViCLIP, CLIP-style models): ranks by cosine similarity.

Every video and its caption (caption i belongs to video i, one per video as
on MSRVTT-1kA) are encoded once (`task.encode_videos`, `task.encode_texts`:
L2-normalised, no token drop); S = V T^T. Results, as fractions and 1-based
ranks, for text->video (`t2v_*`, rows of S^T) and video->text (`v2t_*`):
`r1`, `r5`, `r10`, `mdr` (median rank), `mnr` (mean rank), and
`mean_recall` over the six recalls. Ties count against the match
(`retrieval.ranks`).

With `dual_softmax` the same metrics are also reported with a `_dsl`
suffix on the dual-softmax re-weighted scores (`dual_softmax`): InternVideo
reports both (ViCLIP `tasks/retrieval_utils.py:evaluation_video_clip` on the
raw cosine, scale 1; the CLIP4Clip-based `Downstream/Video-Text-Retrieval`
on logit_scale * cosine, scale 100). DSL uses the whole test set's
statistics, so it is a transductive evaluation.
"""
from __future__ import annotations

import jax
import numpy as np

from data.pipeline import eval_batches
from vfm_jax import sharding
from vfm_jax.evaluators.retrieval import RECALL_AT, ranks
from vfm_jax.input import make_source


def dual_softmax(scores: np.ndarray, scale: float) -> np.ndarray:
    """(Q, C) query x candidate scores -> scores * softmax(scale * scores) over the queries (axis 0).

    The official `sim * softmax(sim, dim=0)`: a candidate that many queries
    prefer is down-weighted for all but the queries that prefer it most.
    `scale` multiplies the scores inside the softmax only; scaling the
    outer factor as well (CLIP4Clip's logits) changes no rank.
    """
    logits = scale * scores.astype(np.float64)
    prior = np.exp(logits - logits.max(axis=0, keepdims=True))
    return scores * (prior / prior.sum(axis=0, keepdims=True))


def retrieval_metrics(t2v: np.ndarray, v2t: np.ndarray, suffix: str = "") -> dict[str, float]:
    """R@k, median and mean 1-based rank per direction, and their mean recall; match q is candidate q."""
    out, recalls = {}, []
    for name, scores in (("t2v", t2v), ("v2t", v2t)):
        rank = ranks(scores) + 1
        for k in RECALL_AT:
            out[f"{name}_r{k}{suffix}"] = float(np.mean(rank <= k))
            recalls.append(out[f"{name}_r{k}{suffix}"])
        out[f"{name}_mdr{suffix}"] = float(np.median(rank))
        out[f"{name}_mnr{suffix}"] = float(np.mean(rank))
    out[f"mean_recall{suffix}"] = float(np.mean(recalls))
    return out


class DualEncoderRetrievalEvaluator:
    """The metrics above over the split's videos and their (first) captions."""

    def __init__(self, cfg, data_cfg, task, mesh):
        if cfg.dual_softmax_scale <= 0:
            raise ValueError(f"evals dual_softmax_scale={cfg.dual_softmax_scale} must be > 0")
        self.source = make_source(data_cfg, cfg.split)
        self.batch_size = cfg.batch_size
        self.dual_softmax = cfg.dual_softmax
        self.dual_softmax_scale = cfg.dual_softmax_scale
        self._batch_sharding = sharding.batch_sharding(mesh)

        def encode(variables, batch):
            return task.encode_videos(variables, batch), task.encode_texts(variables, batch)

        self._encode = jax.jit(encode, out_shardings=sharding.replicated(mesh))

    def similarity(self, variables) -> np.ndarray:
        """(V, V) cosine similarity of every video (rows) with every caption (columns) of the split."""
        videos, texts = [], []
        for local in eval_batches(self.source, global_batch_size=self.batch_size,
                                  keys=("video", "text_ids", "text_mask")):
            batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(self._batch_sharding, x), local)
            v, t = jax.device_get(self._encode(variables, batch))
            keep = np.asarray(jax.device_get(batch["mask"]))
            videos.append(v[keep])
            texts.append(t[keep])
        return np.concatenate(videos) @ np.concatenate(texts).T

    def run(self, variables) -> dict[str, float]:
        sim = self.similarity(variables)
        results = retrieval_metrics(sim.T, sim)
        if self.dual_softmax:
            scale = self.dual_softmax_scale
            results.update(retrieval_metrics(dual_softmax(sim.T, scale), dual_softmax(sim, scale), suffix="_dsl"))
        return results
