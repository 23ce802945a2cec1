"""Zero-shot video classification with a dual encoder: class-name prompts against video embeddings.

Each class name is put into every prompt template; the prompts of a class
are encoded once and ensembled into one class embedding (`ensemble`):
- 'clip': the mean of the L2-normalised prompt embeddings, renormalised
  (OpenAI CLIP's prompt ensembling);
- 'similarity': the mean over templates of the cosine similarities, as
  ViCLIP evaluates (`tasks/retrieval_utils.py:evaluation_video_clip`, text
  features (classes, prompts, E) through `get_sim(agg_method='mean')`), i.e.
  the mean embedding without renormalisation.
Videos are encoded without token drop (`task.encode_videos`, views
averaged) and each is assigned the classes of highest similarity: `top1`,
`top5` over the split.

Class names come from `class_names` (a list) or `class_names_file` (one
name per line, in label order); prompts are tokenized with the data's
tokenizer (`data.tokenizer`, `tokenizer_file`, `max_text_length`), after
VINDLU's `pre_text` cleaning when `clean_text` is set, as ViCLIP's
evaluation datasets do.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from data.pipeline import eval_batches
from data.tokenizers import fixed_length, load_tokenizer
from vfm_jax import sharding
from vfm_jax.input import make_source
from vfm_jax.tasks.common import topk_correct

ENSEMBLES = ("clip", "similarity")


def pre_text(text: str) -> str:
    """VINDLU/ViCLIP `dataset/utils.py:pre_text`: lowercase, drop ,.'!?"()*#:;~, '-' and '/' to spaces."""
    text = re.sub(r"([,.'!?\"()*#:;~])", "", text.lower())
    text = text.replace("-", " ").replace("/", " ").replace("<person>", "person")
    return re.sub(r"\s{2,}", " ", text).strip()


def class_names(cfg) -> tuple[str, ...]:
    """The class names of an evaluator config: `class_names`, or the lines of `class_names_file`."""
    if bool(cfg.class_names) == bool(cfg.class_names_file):
        raise ValueError("zero-shot evals need exactly one of class_names (a list) and class_names_file")
    if cfg.class_names:
        return tuple(cfg.class_names)
    path = epath.Path(cfg.class_names_file)
    if not path.exists():
        raise FileNotFoundError(f"class_names_file {path} does not exist")
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        raise ValueError(f"class_names_file {path} lists no class names")
    return names


def prompts(names, templates, *, clean: bool) -> list[str]:
    """Class-major prompts: all templates of class 0, then of class 1, ..."""
    if not templates:
        raise ValueError("zero-shot evals need at least one prompt template")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"prompt templates need exactly one '{{}}' for the class name: {bad}")
    texts = [t.format(name) for name in names for t in templates]
    return [pre_text(t) for t in texts] if clean else texts


def ensemble_prompts(prompt_embeddings: jax.Array, num_templates: int, how: str) -> jax.Array:
    """(C * P, E) L2-normalised prompt embeddings, class-major -> (C, E) class embeddings."""
    per_class = prompt_embeddings.reshape(-1, num_templates, prompt_embeddings.shape[-1]).mean(axis=1)
    if how == "clip":
        return per_class / jnp.linalg.norm(per_class, axis=-1, keepdims=True)
    return per_class


class ZeroShotClassificationEvaluator:
    """`top1` / `top5` of the split's `label` field against the ensembled class-name prompts."""

    def __init__(self, cfg, data_cfg, task, mesh):
        if cfg.ensemble not in ENSEMBLES:
            raise ValueError(f"evals ensemble={cfg.ensemble!r} is not one of {ENSEMBLES}")
        if not data_cfg.get("tokenizer"):
            raise ValueError("zero-shot evals tokenize prompts with config.data.tokenizer / tokenizer_file / "
                             "max_text_length; set them")
        self.num_templates = len(cfg.templates)
        encode = fixed_length(load_tokenizer(data_cfg.tokenizer, data_cfg.tokenizer_file), data_cfg.max_text_length)
        tokens = [encode(p) for p in prompts(class_names(cfg), tuple(cfg.templates), clean=cfg.clean_text)]
        self.prompt_tokens = {k: np.stack([t[k] for t in tokens]) for k in ("text_ids", "text_mask")}
        self.source = make_source(data_cfg, cfg.split)
        self.batch_size = cfg.batch_size
        self.label = cfg.label
        self.ensemble = cfg.ensemble
        self._batch_sharding = sharding.batch_sharding(mesh)
        replicated = sharding.replicated(mesh)

        def scores(variables, classes, batch):
            logits = task.encode_videos(variables, batch) @ classes.T
            labels, mask = batch[self.label], batch["mask"].astype(jnp.float32)
            return {"top1": jnp.sum(topk_correct(logits, labels, 1) * mask),
                    "top5": jnp.sum(topk_correct(logits, labels, 5) * mask), "count": jnp.sum(mask)}

        self._encode_texts = jax.jit(task.encode_texts, out_shardings=replicated)
        self._scores = jax.jit(scores, out_shardings=replicated)

    def class_embeddings(self, variables) -> jax.Array:
        """(C, E) ensembled class embeddings; prompts are encoded in padded chunks of `batch_size`."""
        total, size = len(self.prompt_tokens["text_ids"]), self.batch_size
        chunks = []
        for start in range(0, total, size):
            chunk = {k: v[start:start + size] for k, v in self.prompt_tokens.items()}
            pad = size - len(chunk["text_ids"])
            chunk = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)]) for k, v in chunk.items()}
            out = self._encode_texts(variables, jax.device_put(chunk, self._batch_sharding))
            chunks.append(np.asarray(jax.device_get(out))[:size - pad])
        return ensemble_prompts(jnp.asarray(np.concatenate(chunks)), self.num_templates, self.ensemble)

    def run(self, variables) -> dict[str, float]:
        classes = self.class_embeddings(variables)
        totals: dict[str, float] = {}
        for local in eval_batches(self.source, global_batch_size=self.batch_size, keys=("video", self.label)):
            batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(self._batch_sharding, x), local)
            for k, v in jax.device_get(self._scores(variables, classes, batch)).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        count = totals.pop("count")
        return {k: v / count for k, v in totals.items()}
