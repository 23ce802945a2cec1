"""UMT stage-1 objective: align the student's visible tokens with the CLIP teacher's.

L_UTA = mean over layers, samples and visible tokens of 2 - 2 <s, t> for
L2-normalised s and t, i.e. ||s - t||^2 (unmasked_teacher
`engine_for_pretraining_umt.py`, `clip_loss_type='l2'`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from etils import epath

from data.masking import attention_guided_mask, gather_visible, num_visible
from data.transforms import NORMALIZATION
from vfm_jax.layers.transformer import last_layers
from vfm_jax.models import build_model
from vfm_jax.tasks.common import normalize_video


def teacher_targets(teacher_features: jax.Array, mask: jax.Array, num_visible: int | None = None) -> jax.Array:
    """(K, B, L, C) teacher features at every token, (B, L) mask (True = masked) -> (K, B, N_vis, C).

    The visible positions in position order, as the student sees them.
    """
    return jax.vmap(lambda f: gather_visible(f, mask, num_visible))(teacher_features)


def alignment_loss(student_features: jax.Array, teacher_features: jax.Array) -> jax.Array:
    """Scalar mean(2 - 2 * sum(s * t, -1)) in fp32 over (K, B, N_vis, C) features."""
    s = student_features.astype(jnp.float32)
    t = jax.lax.stop_gradient(teacher_features).astype(jnp.float32)
    return jnp.mean(2.0 - 2.0 * jnp.sum(s * t, axis=-1))


class UMTStage1Task:
    """Student `config.model` (arch umt_student) learns to match a frozen CLIP teacher.

    Per step: the teacher sees the clip (bicubic-resized to its resolution when
    that differs, as for L/14 at 196 px) and returns its last-K normalised
    layer features and its CLS->patch attention; attention-guided masking keeps
    N - int(mask_ratio * N) tokens per frame (Gumbel-top-k, on device); the
    student encodes only those; the loss is `alignment_loss`. The teacher's
    weights live in the `teacher` collection: checkpointed with the model,
    never updated. `task.teacher_checkpoint` (a folder written by
    `python -m vfm_jax.convert --model clip_visual`) replaces its random init.

    Deviation, documented: jax.image.resize's bicubic kernel (a = -0.5)
    differs slightly from torch's (a = -0.75) used by the official engine.
    """

    def __init__(self, config):
        cfg = config.task
        self.model = build_model(config.model)
        if config.model.arch != "umt_student" or cfg.teacher.arch != "clip_vision":
            raise ValueError("umt_stage1 needs model.arch='umt_student' and task.teacher.arch='clip_vision'")
        teacher_spec = dict(cfg.teacher)
        teacher_spec["return_layers"] = tuple(
            last_layers(cfg.teacher.depth, config.model.clip_return_layers, config.model.clip_return_interval)
        )
        teacher_spec["return_attention"] = True
        self.teacher = build_model(teacher_spec)
        if not 0.0 <= cfg.mask_ratio < 1.0:
            raise ValueError(f"task.mask_ratio={cfg.mask_ratio} must be in [0, 1)")
        if cfg.normalization not in NORMALIZATION:
            raise ValueError(f"task.normalization={cfg.normalization!r} is not one of {sorted(NORMALIZATION)}")
        self.mask_ratio = cfg.mask_ratio
        self.normalization = cfg.normalization
        if cfg.teacher_checkpoint and not epath.Path(cfg.teacher_checkpoint).exists():
            raise FileNotFoundError(f"task.teacher_checkpoint {cfg.teacher_checkpoint} does not exist")
        self.pretrained = {"teacher": cfg.teacher_checkpoint} if cfg.teacher_checkpoint else {}
        self.input_keys = ("video",)

    def _tokens(self, video_shape) -> tuple[int, int, int]:
        """(frames, tokens per frame, visible tokens per frame) of the student for this video shape."""
        _, t, h, w, _ = video_shape
        per_frame = (h // self.model.patch_size) * (w // self.model.patch_size)
        return t // self.model.tubelet_size, per_frame, num_visible(per_frame, self.mask_ratio)

    def _teacher_input(self, video):
        size = self.teacher.image_size
        if video.shape[2:4] == (size, size):
            return video
        return jax.image.resize(video, (*video.shape[:2], size, size, video.shape[-1]), "bicubic")

    def init(self, rng, batch) -> dict:
        student_rng, teacher_rng = jax.random.split(rng)
        video = normalize_video(batch["video"], self.normalization)
        frames, per_frame, visible = self._tokens(video.shape)
        mask = jnp.tile(jnp.arange(per_frame) >= visible, (video.shape[0], frames))  # any valid mask
        student = self.model.init({"params": student_rng}, video, mask, num_visible=frames * visible)
        teacher = self.teacher.init({"params": teacher_rng}, self._teacher_input(video))
        return {"params": student["params"], "teacher": teacher["params"]}

    def outputs(self, params, model_state, batch, rng, *, train: bool) -> dict:
        """Teacher targets, the sampled mask and the student's aligned features for one batch."""
        video = normalize_video(batch["video"], self.normalization)
        teacher = self.teacher.apply({"params": model_state["teacher"]}, self._teacher_input(video))
        teacher = jax.lax.stop_gradient(teacher)
        mask_rng, dropout_rng, droppath_rng = jax.random.split(rng, 3)
        frames, _, visible = self._tokens(video.shape)
        mask = attention_guided_mask(mask_rng, teacher["cls_attention"], self.mask_ratio)
        student = self.model.apply(
            {"params": params}, video, mask, num_visible=frames * visible, train=train,
            rngs={"dropout": dropout_rng, "droppath": droppath_rng},
        )
        targets = teacher_targets(teacher["layer_features"], mask, frames * visible)
        return {"student": student["features"], "targets": targets, "mask": mask}

    def loss_fn(self, params, model_state, batch, rng):
        out = self.outputs(params, model_state, batch, rng, train=True)
        loss = alignment_loss(out["student"], out["targets"])
        return loss, ({"loss": loss}, model_state)
