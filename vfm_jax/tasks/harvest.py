"""Harvest post-pretraining (arXiv 2310.19554): an image CLIP becomes a video-text model.

The model is InternVideo-MM (`models.internvideo_mm`): CLIP's towers plus the
global UniBlocks, started from a converted image CLIP (`task.vision_checkpoint`,
`task.text_checkpoint`; the global blocks, the text mask embedding and the
decoder start fresh). Per step, as the InternVideo-MM training module
(`CoTrain/modules/clip_module.py`, `objectives.py`) describes it:
- video: `vision.drop_ratio` of the patches of every frame are dropped
  before the backbone (really dropped here; the release ignored the mask);
- text: each real token but the start and end tokens is masked with
  probability `mlm_prob` (no 80/10/10): its embedding is replaced by the
  learned `text_mask_embedding`;
- loss = contrastive (symmetric InfoNCE of the dropped video and the MASKED
  caption over the global batch, s = exp(logit_scale)) + `mlm_weight` *
  cross-entropy of the original tokens at the masked positions, predicted
  by `MLMDecoder` over the video tokens.
At most `max_masked_tokens` positions per caption are masked (the first
ones drawn), so the predictions have a static shape.

Zero-shot evaluation uses the encoders without drop or masking; WiSE-FT
(the official `clip_wiseft_coef=0.5`) averages the trained weights with the
source CLIP's: `python -m vfm_jax.tools.wise_ft`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from vfm_jax.models.clip import CLIPText
from vfm_jax.tasks.viclip import ViCLIPTask, vtc_loss


def draw_text_mask(rng, text_mask: jax.Array, prob: float, max_masked: int):
    """(B, L) attention mask -> (token_mask (B, L), positions (B, M), weights (B, M)).

    Eligible: real tokens other than the first (start / [CLS]) and the last
    (end / [SEP]). `positions` lists the masked positions first, in order;
    `weights` is 1 where a position is masked, 0 where the row had fewer.
    """
    b, length = text_mask.shape
    lengths = jnp.sum(text_mask.astype(jnp.int32), axis=-1, keepdims=True)
    idx = jnp.arange(length)[None, :]
    eligible = (idx >= 1) & (idx < lengths - 1)
    drawn = jax.random.bernoulli(rng, prob, (b, length)) & eligible
    drawn = drawn & (jnp.cumsum(drawn, axis=-1) <= max_masked)
    positions = jnp.argsort(~drawn, axis=-1, stable=True)[:, :max_masked]
    weights = jnp.take_along_axis(drawn, positions, axis=-1).astype(jnp.float32)
    return drawn, positions, weights


def mlm_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean cross-entropy over the weighted (masked) positions; 0 when nothing was masked."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)


class HarvestTask(ViCLIPTask):
    """`config.model` of arch internvideo_mm post-pretrained with patch drop + text masking; encoders for the evaluators.

    `task`: normalization ('clip'), mlm_prob, max_masked_tokens, mlm_weight
    (0 trains the contrastive term alone; > 0 needs `model.mlm_decoder_depth`),
    vision_checkpoint / text_checkpoint (converted CLIP towers). The stored
    `logit_scale` is kept in [0, ln(model.logit_scale_max)] after every
    update (`constrain_params`), CLIP's clamp.
    """

    ARCH = "internvideo_mm"

    def __init__(self, config):
        super().__init__(config)
        cfg = config.task
        if not 0.0 <= cfg.mlm_prob < 1.0:
            raise ValueError(f"task.mlm_prob={cfg.mlm_prob} must be in [0, 1)")
        if cfg.mlm_weight and not self.model.mlm_decoder_depth:
            raise ValueError("task.mlm_weight > 0 needs model.mlm_decoder_depth > 0 (the MLM decoder)")
        if cfg.mlm_weight and cfg.max_masked_tokens < 1:
            raise ValueError(f"task.max_masked_tokens={cfg.max_masked_tokens} must be >= 1 with an MLM loss")
        self.mlm_prob, self.mlm_weight = cfg.mlm_prob, cfg.mlm_weight
        self.max_masked = max(int(cfg.max_masked_tokens), 1)

    def init(self, rng, batch) -> dict:
        video = self._video(batch["video"])
        video = video.reshape(-1, *video.shape[-4:])[:1]
        length = self.model.text.get("context_length", CLIPText.context_length)
        ids = jnp.zeros((1, length), jnp.int32)
        positions = jnp.zeros((1, self.max_masked), jnp.int32)
        variables = self.model.init(
            {"params": rng}, video, ids, jnp.zeros((1, length), bool), jnp.full((1,), length), positions,
            train=False, method="harvest",
        )
        return {"params": variables["params"]}

    def constrain_params(self, params) -> dict:
        top = math.log(self.model.logit_scale_max)
        return {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0, top)}

    def loss_fn(self, params, model_state, batch, rng):
        text_rng, masking_rng, droppath_rng, dropout_rng = jax.random.split(rng, 4)
        token_mask, positions, weights = draw_text_mask(text_rng, batch["text_mask"], self.mlm_prob, self.max_masked)
        lengths = jnp.sum(batch["text_mask"].astype(jnp.int32), axis=-1)
        out = self.model.apply(
            {"params": params}, self._video(batch["video"]), batch["text_ids"], token_mask, lengths,
            positions if self.mlm_weight else None, train=True, method="harvest",
            rngs={"masking": masking_rng, "droppath": droppath_rng, "dropout": dropout_rng},
        )
        temp = jnp.exp(-params["logit_scale"])
        contrastive = vtc_loss(out["video_embedding"], out["text_embedding"], batch["index"], temp)
        metrics = {"contrastive_loss": contrastive, "temp": temp, "masked_tokens": jnp.sum(weights)}
        loss = contrastive
        if self.mlm_weight:
            labels = jnp.take_along_axis(batch["text_ids"], positions, axis=-1)
            mlm = mlm_loss(out["mlm_logits"], labels, weights)
            correct = (jnp.argmax(out["mlm_logits"], -1) == labels).astype(jnp.float32) * weights
            metrics.update(mlm_loss=mlm, mlm_accuracy=jnp.sum(correct) / jnp.maximum(jnp.sum(weights), 1.0))
            loss = loss + self.mlm_weight * mlm
        metrics["loss"] = loss
        return loss, (metrics, model_state)
