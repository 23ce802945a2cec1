"""ViCLIP (InternVid) pre-training: video-text contrastive learning with 90% of the video tokens dropped.

The loss is the official `VTC_VTM_Loss.vtc_loss` as `models/viclip.py` calls
it (InternVideo1/Pretrain/ViCLIP): both embeddings L2-normalised, S = V T^T /
temp over the all-gathered batch, cross-entropy of S and S^T against
row-normalised targets 1[index_i == index_j] (clips of one video are all
positives), averaged over the two directions. There is no VTM or MLM term.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vfm_jax.models import build_model
from vfm_jax.models.clip import CLIPText
from vfm_jax.tasks.common import normalize_video
from vfm_jax.tasks.umt import _check_normalization, _pretrained, contrastive_loss

TRAIN_KEYS = ("video", "text_ids", "text_mask", "index")


def eot_positions(text_mask: jax.Array) -> jax.Array:
    """(B,) index of the last real token: CLIP's <|endoftext|>, or [SEP] for a BERT WordPiece vocabulary.

    OpenAI pools at argmax(ids) because its EOT has the largest id; that is
    not true of other vocabularies (the synthetic data's WordPiece), while
    both tokenizers end the real tokens with their end token.
    """
    return jnp.sum(text_mask.astype(jnp.int32), axis=-1) - 1


def clamped(temp: jax.Array, temp_min: float) -> jax.Array:
    """max(temp, temp_min) in value, identity in gradient: the official in-place clamp.

    `clip_contrastive_temperature` runs `temp.clamp_(min=temp_min)` before
    each forward, so the loss reads the clamped value and its gradient
    reaches the parameter in full, even at the bound (`jnp.maximum` would
    pass half of it there, and none below).
    """
    return temp + jax.lax.stop_gradient(jnp.maximum(temp, temp_min) - temp)


def vtc_loss(video: jax.Array, text: jax.Array, ids: jax.Array, temp: jax.Array) -> jax.Array:
    """(B, E) L2-normalised video and text embeddings, (B,) example ids -> the symmetric multi-positive InfoNCE."""
    return contrastive_loss(video @ text.T / temp, ids)


class ViCLIPTask:
    """`config.model` of arch viclip trained with the contrastive loss; encoders for the evaluators.

    - Training: `encode_video(train=True)` drops `vision.drop_ratio` of the
      patch tokens (rng stream `masking`; drop path uses `droppath`); the text
      tower trains (the L/14 recipe's `model.freeze_text False`) unless
      `task.freeze_text` (the B/16 recipe): then no gradient reaches it,
      and the config keeps it out of weight decay (`optim.no_decay`).
    - Global batch: under jit the batch is the global one, so S is computed
      over all data shards (the all-gather that keeps gradients); the
      gradient is that of the loss as written (the official per-rank gather
      + DDP mean scales the towers' gradient by 1/world_size).
    - Temperature: `constrain_params` (applied by the train loop after every
      update) keeps the stored `temp` >= `model.temp_min` and the loss reads
      it through `clamped`: the official clamp before each forward.
    - Converted CLIP towers can start the run: `task.vision_checkpoint` (a
      `clip_visual` folder, or `<clip folder>:vision_encoder`; the temporal
      table starts at zero, as the official inflation does) and
      `task.text_checkpoint` (a `clip_text` folder or `<clip
      folder>:text_encoder`, whose position table has `text.context_length`
      rows: convert with `--context_length`).
    An evaluation-only config (total_steps = 0) needs only videos to build
    the model; its evaluators read the fields they use.
    """

    ARCH = "viclip"

    def __init__(self, config):
        cfg = config.task
        if config.model.arch != self.ARCH:
            raise ValueError(f"task {cfg.name} needs model.arch={self.ARCH!r}, got {config.model.arch!r}")
        _check_normalization(cfg.normalization)
        self.model = build_model(config.model)
        self.normalization = cfg.normalization
        self.pretrained = _pretrained(
            cfg, {"vision_checkpoint": "params/vision_encoder", "text_checkpoint": "params/text_encoder"}
        )
        self.input_keys = TRAIN_KEYS if config.total_steps else ("video",)
        self.freeze_text = bool(cfg.get("freeze_text", False))

    def _video(self, video: jax.Array) -> jax.Array:
        return normalize_video(video, self.normalization)

    def init(self, rng, batch) -> dict:
        video = self._video(batch["video"])
        video = video.reshape(-1, *video.shape[-4:])[:1]  # one clip, also of multi-view test data
        ids = jnp.zeros((1, self.model.text.get("context_length", CLIPText.context_length)), jnp.int32)
        return {"params": self.model.init({"params": rng}, video, ids)["params"]}

    def constrain_params(self, params) -> dict:
        return {**params, "temp": jnp.maximum(params["temp"], self.model.temp_min)}

    def loss_fn(self, params, model_state, batch, rng):
        masking_rng, droppath_rng = jax.random.split(rng)
        variables = {"params": params}
        video = self.model.apply(
            variables, self._video(batch["video"]), train=True, method="encode_video",
            rngs={"masking": masking_rng, "droppath": droppath_rng},
        )
        text_variables = jax.lax.stop_gradient(variables) if self.freeze_text else variables
        text = self.model.apply(
            text_variables, batch["text_ids"], eot_positions=eot_positions(batch["text_mask"]), method="encode_text"
        )
        temp = clamped(params["temp"], self.model.temp_min)
        loss = vtc_loss(video, text, batch["index"], temp)
        return loss, ({"loss": loss, "temp": temp}, model_state)

    # ------------------------------------------------------------------ evaluators

    def encode_videos(self, variables, batch) -> jax.Array:
        """(B, E) L2-normalised video embeddings, no token drop.

        A (B, views, T, H, W, C) batch (test clips x crops) gives the mean of
        the views' embeddings, renormalised: the same ranking as averaging
        the views' similarities.
        """
        video = self._video(batch["video"])
        lead = video.shape[:-4]
        emb = self.model.apply(variables, video.reshape(-1, *video.shape[-4:]), method="encode_video")
        emb = emb.reshape(*lead, -1)
        if emb.ndim == 3:
            emb = emb.mean(axis=1)
            emb = emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)
        return emb

    def encode_texts(self, variables, batch) -> jax.Array:
        """(B, E) L2-normalised text embeddings of `text_ids` / `text_mask`."""
        return self.model.apply(
            variables, batch["text_ids"], eot_positions=eot_positions(batch["text_mask"]), method="encode_text"
        )
