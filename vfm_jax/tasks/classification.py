"""Video classification: softmax cross-entropy with optional label smoothing, random erasing, mixup and cutmix."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from data.normalization import NORMALIZATION
from vfm_jax.models import build_model
from vfm_jax.tasks.common import normalize_video, topk_correct
from vfm_jax.tasks.erasing import random_erasing
from vfm_jax.tasks.mixup import mix
from vfm_jax.tasks.umt import _pretrained


class ClassificationTask:
    """Model `config.model` on `batch['video']`, predicting `batch[config.task.label]`.

    `task.mixup` / `task.cutmix` (Beta alphas, 0 = off) mix each training batch
    as timm's Mixup(mode='batch') does (`vfm_jax.tasks.mixup`), with CutMix
    chosen with probability `task.mixup_switch_prob` when both are on. A mixed
    batch has no single right answer, so the train `top1` metric is left out
    then, as in the official fine-tuning loop. `task.random_erasing` (a
    probability, 0 = off) erases a box of each normalised training clip
    before mixing, as the official loaders do (`vfm_jax.tasks.erasing`).
    `task.pretrained` (optional) maps top-level param subtrees to converted
    folders (`folder:name` for one subtree of one), loaded by the train loop
    before the first step: e.g. the two encoders of `internvideo_cma`. A model
    that re-normalises its input names the preset it expects
    (`input_normalization`), which must be `task.normalization`.
    """

    def __init__(self, config):
        cfg = config.task
        if cfg.normalization not in NORMALIZATION:
            raise ValueError(
                f"task.normalization={cfg.normalization!r} is not one of {sorted(NORMALIZATION)}"
            )
        if not 0.0 <= cfg.label_smoothing < 1.0:
            raise ValueError(f"task.label_smoothing={cfg.label_smoothing} must be in [0, 1)")
        for key in ("mixup", "cutmix"):
            if not cfg[key] >= 0.0:
                raise ValueError(f"task.{key}={cfg[key]} must be >= 0 (a Beta alpha; 0 turns it off)")
        if not 0.0 <= cfg.random_erasing <= 1.0:
            raise ValueError(f"task.random_erasing={cfg.random_erasing} must be a probability in [0, 1]")
        if not 0.0 <= cfg.mixup_switch_prob <= 1.0:
            raise ValueError(f"task.mixup_switch_prob={cfg.mixup_switch_prob} must be in [0, 1]")
        self.model = build_model(config.model)
        expected = getattr(self.model, "input_normalization", cfg.normalization)
        if expected != cfg.normalization:
            raise ValueError(f"model.input_normalization={expected!r} but task.normalization={cfg.normalization!r}")
        pretrained = cfg.get("pretrained") or {}
        self.pretrained = _pretrained(pretrained, {key: f"params/{key}" for key in pretrained})
        self.label = cfg.label
        self.label_smoothing = cfg.label_smoothing
        self.normalization = cfg.normalization
        self.mix_args = dict(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, switch_prob=cfg.mixup_switch_prob)
        self.mixing = cfg.mixup > 0 or cfg.cutmix > 0
        self.erase_prob = cfg.random_erasing
        self.input_keys = ("video", self.label)

    def init(self, rng: jax.Array, batch: dict) -> dict:
        return self.model.init({"params": rng}, self._video(batch), train=False)

    def _video(self, batch):
        return normalize_video(batch["video"], self.normalization)

    def loss_fn(self, params, model_state, batch, rng):
        dropout_rng, droppath_rng, mix_rng, erase_rng = jax.random.split(rng, 4)
        labels = batch[self.label]
        video = self._video(batch)
        if self.erase_prob > 0:
            video = random_erasing(erase_rng, video, self.erase_prob)
        targets = optax.smooth_labels(jax.nn.one_hot(labels, self.model.num_classes), self.label_smoothing)
        if self.mixing:
            video, targets, _ = mix(mix_rng, video, targets, **self.mix_args)
        logits, new_state = self.model.apply(
            {"params": params, **model_state},
            video,
            train=True,
            rngs={"dropout": dropout_rng, "droppath": droppath_rng},
            mutable=list(model_state),
        )
        loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()
        metrics = {"loss": loss}
        if not self.mixing:
            metrics["top1"] = topk_correct(logits, labels, 1).mean()
        return loss, (metrics, new_state)

    def predict(self, variables, batch) -> jax.Array:
        return self.model.apply(variables, self._video(batch), train=False)

    def eval_metrics(self, variables, batch) -> dict:
        """Sums over the real (mask=True) rows of one batch; the evaluator divides by `count`.

        A (B, views, T, H, W, C) video is scored as the official multi-view
        protocols do: softmax per view, then the mean over views.
        """
        video = batch["video"]
        if video.ndim == 6:
            b, v = video.shape[:2]
            flat = {**batch, "video": video.reshape(b * v, *video.shape[2:])}
            probs = jax.nn.softmax(self.predict(variables, flat).astype(jnp.float32), axis=-1)
            log_probs = jnp.log(probs.reshape(b, v, -1).mean(axis=1))
        else:
            log_probs = jax.nn.log_softmax(self.predict(variables, batch).astype(jnp.float32), axis=-1)
        labels = batch[self.label]
        mask = batch["mask"].astype(jnp.float32)
        loss = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
        return {
            "loss": jnp.sum(loss * mask),
            "top1": jnp.sum(topk_correct(log_probs, labels, 1) * mask),
            "top5": jnp.sum(topk_correct(log_probs, labels, 5) * mask),
            "count": jnp.sum(mask),
        }
