"""UMT objectives: stage 1 (unmasked-token alignment) and stage 2 (alignment + VTC + VTM + MLM).

L_UTA = mean over layers, samples and visible tokens of 2 - 2 <s, t> for
L2-normalised s and t, i.e. ||s - t||^2 (unmasked_teacher
`engine_for_pretraining_umt.py`, `clip_loss_type='l2'`). Stage 2 adds the
video-text losses of `multi_modality/models/criterions.py`.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import optax
from etils import epath

from data.masking import attention_guided_mask, gather_visible, num_visible
from data.tokenizers import WordPieceTokenizer, load_tokenizer
from data.normalization import NORMALIZATION
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


class ClipTeacher:
    """The frozen OpenAI CLIP visual tower of UMT and the attention-guided mask it draws.

    The teacher sees the student's (ImageNet-normalised) clip, bicubic-resized
    to its own resolution when that differs (L/14 at 196 px), and returns its
    normalised features of the layers aligned with the student's last K and
    its CLS->patch attention; `mask_and_targets` samples N - int(ratio * N)
    visible tokens per frame from that attention (Gumbel-top-k) and gathers
    the targets there. Its weights live in the `teacher` collection:
    checkpointed with the model, never updated; the task's
    `task.teacher_checkpoint` (a folder written by `python -m vfm_jax.convert
    --model clip_visual`) replaces its random init.

    Deviation, documented: jax.image.resize's bicubic kernel (a = -0.5)
    differs slightly from torch's (a = -0.75) used by the official engine.
    """

    def __init__(self, spec, *, return_layers: int, return_interval: int):
        if spec.arch != "clip_vision":
            raise ValueError(f"the UMT teacher must have arch='clip_vision', got {spec.arch!r}")
        spec = dict(spec)
        spec["return_layers"] = tuple(last_layers(spec["depth"], return_layers, return_interval))
        spec["return_attention"] = True
        self.model = build_model(spec)

    def _input(self, video):
        size = self.model.image_size
        if video.shape[2:4] == (size, size):
            return video
        return jax.image.resize(video, (*video.shape[:2], size, size, video.shape[-1]), "bicubic")

    def init(self, rng, video) -> dict:
        return self.model.init({"params": rng}, self._input(video))["params"]

    def mask_and_targets(self, params, video, rng, mask_ratio: float) -> tuple[jax.Array, jax.Array]:
        """(B, L) mask (True = masked) and (K, B, N_vis, C) targets at the visible tokens."""
        out = jax.lax.stop_gradient(self.model.apply({"params": params}, self._input(video)))
        mask = attention_guided_mask(rng, out["cls_attention"], mask_ratio)
        visible = video.shape[1] * num_visible(out["cls_attention"].shape[-1], mask_ratio)
        return mask, teacher_targets(out["layer_features"], mask, visible)


def _check_normalization(name: str):
    if name not in NORMALIZATION:
        raise ValueError(f"task.normalization={name!r} is not one of {sorted(NORMALIZATION)}")


def _pretrained(cfg, destinations: dict[str, str]) -> dict[str, str]:
    """{destination: folder} of the `task.<key>` checkpoints that are set (loaded by the train loop).

    A destination is a collection (`teacher`) or `params/<subtree>`; a
    folder may name one subtree of its params (`folder:vision_encoder`); a
    folder that does not exist fails here, before anything runs.
    """
    from vfm_jax.checkpointing import split_subtree  # here: checkpointing needs grain/orbax, the GPU suite does not

    out = {}
    for key, destination in destinations.items():
        if cfg[key]:
            if not epath.Path(split_subtree(cfg[key])[0]).exists():
                raise FileNotFoundError(f"task.{key} {cfg[key]} does not exist")
            out[destination] = cfg[key]
    return out


def _check_ratio(key: str, ratio: float):
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"task.{key}={ratio} must be in [0, 1)")


class UMTStage1Task:
    """Student `config.model` (arch umt_student) learns to match a frozen CLIP teacher.

    Per step: the teacher (`ClipTeacher`) draws the attention-guided mask and
    the targets; the student encodes only the visible tokens; the loss is
    `alignment_loss`.
    """

    def __init__(self, config):
        cfg = config.task
        if config.model.arch != "umt_student":
            raise ValueError("umt_stage1 needs model.arch='umt_student'")
        _check_ratio("mask_ratio", cfg.mask_ratio)
        _check_normalization(cfg.normalization)
        self.model = build_model(config.model)
        self.teacher = ClipTeacher(
            cfg.teacher, return_layers=config.model.clip_return_layers,
            return_interval=config.model.clip_return_interval,
        )
        self.mask_ratio = cfg.mask_ratio
        self.normalization = cfg.normalization
        self.pretrained = _pretrained(cfg, {"teacher_checkpoint": "teacher"})
        self.input_keys = ("video",)

    def init(self, rng, batch) -> dict:
        student_rng, teacher_rng = jax.random.split(rng)
        video = normalize_video(batch["video"], self.normalization)
        mask, visible = _any_mask(video.shape, self.model.patch_size, self.model.tubelet_size, self.mask_ratio)
        student = self.model.init({"params": student_rng}, video, mask, num_visible=visible)
        return {"params": student["params"], "teacher": self.teacher.init(teacher_rng, video)}

    def outputs(self, params, model_state, batch, rng, *, train: bool) -> dict:
        """Teacher targets, the sampled mask and the student's aligned features for one batch."""
        video = normalize_video(batch["video"], self.normalization)
        mask_rng, dropout_rng, droppath_rng = jax.random.split(rng, 3)
        mask, targets = self.teacher.mask_and_targets(model_state["teacher"], video, mask_rng, self.mask_ratio)
        student = self.model.apply(
            {"params": params}, video, mask, num_visible=targets.shape[2], train=train,
            rngs={"dropout": dropout_rng, "droppath": droppath_rng},
        )
        return {"student": student["features"], "targets": targets, "mask": mask}

    def loss_fn(self, params, model_state, batch, rng):
        out = self.outputs(params, model_state, batch, rng, train=True)
        loss = alignment_loss(out["student"], out["targets"])
        return loss, ({"loss": loss}, model_state)


def _any_mask(video_shape, patch_size: int, tubelet_size: int, mask_ratio: float) -> tuple[jax.Array, int]:
    """A valid (B, L) mask of a student's token layout for `mask_ratio` and its visible count (for init)."""
    b, t, h, w, _ = video_shape
    per_frame = (h // patch_size) * (w // patch_size)
    visible = num_visible(per_frame, mask_ratio)
    frames = t // tubelet_size
    return jnp.tile(jnp.arange(per_frame) >= visible, (b, frames)), frames * visible


def contrastive_loss(sim: jax.Array, ids: jax.Array) -> jax.Array:
    """Symmetric cross-entropy of a (B, B) video-text similarity with multi-positive targets.

    Targets are the row-normalised 1[ids_i == ids_j] (the official `get_mask(normalize=True)`):
    several captions of one video in a batch are all positives.
    """
    same = (ids[:, None] == ids[None, :]).astype(jnp.float32)
    targets = same / same.sum(axis=1, keepdims=True)
    v2t = optax.softmax_cross_entropy(sim, targets).mean()
    t2v = optax.softmax_cross_entropy(sim.T, targets).mean()
    return (v2t + t2v) / 2


def video_text_similarity(video_emb: jax.Array, text_emb: jax.Array) -> jax.Array:
    """(V, T', E) and (N, E) L2-normalised embeddings -> (V, N) mean over frames of the cosine."""
    return jnp.einsum("vte,ne->vtn", video_emb, text_emb).mean(axis=1)


def hard_negatives(rng, sim: jax.Array, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """For each video a negative text and for each text a negative video, sampled ∝ softmax(sim).

    Pairs with the same id are excluded (the official `vtm_hard_neg=True`).
    A row with no other id falls back to index 0 of the batch.
    """
    same = ids[:, None] == ids[None, :]
    logits = jnp.where(same, -jnp.inf, sim)
    text_rng, video_rng = jax.random.split(rng)
    neg_text = jax.random.categorical(text_rng, logits, axis=1)
    neg_video = jax.random.categorical(video_rng, logits.T, axis=1)
    return neg_text, neg_video


def mlm_mask(rng, ids, text_mask, *, prob, mask_id, pad_id, cls_id, vocab_size):
    """BERT masking: (masked ids, (B, L) bool positions that carry a target).

    Each token but [PAD] and [CLS] is picked with `prob` (UMT: 0.5); a picked
    token becomes [MASK] 80% of the time, a random token 10%, stays 10%.
    """
    pick_rng, mask_rng, random_rng, word_rng = jax.random.split(rng, 4)
    picked = jax.random.bernoulli(pick_rng, prob, ids.shape)
    picked &= text_mask.astype(bool) & (ids != pad_id) & (ids != cls_id)
    to_mask = picked & jax.random.bernoulli(mask_rng, 0.8, ids.shape)
    to_random = picked & ~to_mask & jax.random.bernoulli(random_rng, 0.5, ids.shape)
    words = jax.random.randint(word_rng, ids.shape, 0, vocab_size, ids.dtype)
    masked = jnp.where(to_mask, mask_id, jnp.where(to_random, words, ids))
    return masked, picked


def _data_shards(batch_size: int) -> int:
    """Number of data-parallel shards of the batch under the current mesh (1 without one)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return 1
    shards = math.prod(mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape)
    return shards if batch_size % shards == 0 else 1


class UMTStage2Task:
    """UMT video-text training (`umt_video_text`): L = w_uta L_UTA + w_vtc L_VTC + w_vtm L_VTM + w_mlm L_MLM.

    Stage-2 pre-training uses all four (weights 1) with the CLIP teacher's
    attention-guided masking (0.8 for videos, 0.5 for 1-frame images); the
    official retrieval fine-tuning uses VTC + VTM without teacher or masking.
    All losses see the same (masked) visual tokens, as in the official model.
    - VTC: `contrastive_loss` of S_ij = mean_t <v_i,t, t_j> / temp over the
      global batch. Under jit the batch is global, so this is the all-gather
      that keeps gradients; the gradient is that of the loss as written (the
      official per-rank gather + DDP mean scales it by 1/world_size).
    - VTM: per data shard (the official per-GPU batch), each pair gets a hard
      negative video and text (`hard_negatives`); `itm_head` classifies the
      3B pairs (matched / not).
    - MLM: `mlm_mask` of the caption, masked tokens predicted by the fusion
      layers over the visual tokens.
    The temperature is clamped to [temp_min, temp_max] where it is used (the
    official clamps the parameter in place before each step). Converted
    weights start the run: `task.vision_checkpoint` (the stage-1 student),
    `task.text_checkpoint` (BERT) and `task.teacher_checkpoint` (CLIP).
    """

    def __init__(self, config):
        cfg = config.task
        if config.model.arch != "umt_video_text":
            raise ValueError("umt_stage2 needs model.arch='umt_video_text'")
        _check_ratio("mask_ratio", cfg.mask_ratio)
        _check_ratio("image_mask_ratio", cfg.image_mask_ratio)
        _check_normalization(cfg.normalization)
        self.model = build_model(config.model)
        self.weights = dict(cfg.loss_weights)
        if sorted(self.weights) != ["mlm", "uta", "vtc", "vtm"]:
            raise ValueError(f"task.loss_weights needs exactly uta, vtc, vtm, mlm; got {sorted(self.weights)}")
        self.masking = cfg.mask_ratio > 0 or cfg.image_mask_ratio > 0
        self.teacher = None
        if self.weights["uta"] or self.masking:
            if not cfg.teacher.arch:
                raise ValueError("alignment (loss_weights.uta > 0) and masking need task.teacher")
            self.teacher = ClipTeacher(
                cfg.teacher, return_layers=config.model.vision.clip_return_layers,
                return_interval=config.model.vision.clip_return_interval,
            )
        if self.weights["uta"] and not config.model.vision.clip_return_layers:
            raise ValueError("loss_weights.uta > 0 needs model.vision.clip_return_layers > 0")
        self.mask_ratio, self.image_mask_ratio = cfg.mask_ratio, cfg.image_mask_ratio
        self.normalization = cfg.normalization
        self.mlm_prob = cfg.mlm_prob
        self.data_config = config.data
        destinations = {"vision_checkpoint": "params/vision_encoder", "text_checkpoint": "params/text_encoder"}
        if self.teacher:
            destinations["teacher_checkpoint"] = "teacher"
        self.pretrained = _pretrained(cfg, destinations)
        self.input_keys = ("video", "text_ids", "text_mask", "index")

    @functools.cached_property
    def special_ids(self) -> dict[str, int]:
        """[MASK], [PAD], [CLS] ids of the data's tokenizer, read when the MLM loss is first traced."""
        tokenizer = load_tokenizer(self.data_config.tokenizer, self.data_config.tokenizer_file)
        if not isinstance(tokenizer, WordPieceTokenizer):
            raise ValueError('the MLM loss needs a BERT WordPiece tokenizer (data.tokenizer="bert")')
        return dict(mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id, cls_id=tokenizer.cls_id)

    def _ratio(self, video) -> float:
        return self.image_mask_ratio if video.shape[1] == 1 else self.mask_ratio

    def init(self, rng, batch) -> dict:
        model_rng, teacher_rng = jax.random.split(rng)
        video = normalize_video(batch["video"], self.normalization)
        ids, text_mask = batch["text_ids"], batch["text_mask"]
        mask = visible = None
        if self.masking:
            vision = self.model.vision
            mask, visible = _any_mask(video.shape, vision["patch_size"], vision["tubelet_size"], self._ratio(video))
        variables = {"params": self.model.init(
            {"params": model_rng}, video, ids, text_mask, mask, num_visible=visible
        )["params"]}
        if self.teacher:
            variables["teacher"] = self.teacher.init(teacher_rng, video)
        return variables

    def loss_fn(self, params, model_state, batch, rng):
        mask_rng, vtm_rng, mlm_rng, dropout_rng, droppath_rng = jax.random.split(rng, 5)
        rngs = {"dropout": dropout_rng, "droppath": droppath_rng}

        def apply(method, *args, **kwargs):
            return self.model.apply({"params": params}, *args, method=method, rngs=rngs, **kwargs)

        video = normalize_video(batch["video"], self.normalization)
        ids, text_mask = batch["text_ids"], batch["text_mask"]
        mask = targets = None
        ratio = self._ratio(video)
        if self.teacher and ratio > 0:
            mask, targets = self.teacher.mask_and_targets(model_state["teacher"], video, mask_rng, ratio)
        vision = apply(
            "encode_vision", video, mask, num_visible=None if mask is None else targets.shape[2], train=True
        )
        text = apply("encode_text", ids, text_mask, train=True)
        temp = apply("temperature")
        metrics = {"temp": temp}
        losses = {}
        if self.weights["uta"]:
            losses["uta"] = alignment_loss(vision["features"], targets)
        if self.weights["vtc"] or self.weights["vtm"]:
            sim = video_text_similarity(apply("embed_vision", vision["pooled"]), apply("embed_text", text)) / temp
        if self.weights["vtc"]:
            losses["vtc"] = contrastive_loss(sim, batch["index"])
        if self.weights["vtm"]:
            logits = self._vtm_logits(apply, vtm_rng, sim, batch["index"], vision["tokens"], text, text_mask)
            labels = jnp.tile(jnp.array([1, 0, 0]), logits.shape[0] // 3)
            losses["vtm"] = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            metrics["vtm_accuracy"] = jnp.mean(jnp.argmax(logits, -1) == labels)
        if self.weights["mlm"]:
            masked, picked = mlm_mask(
                mlm_rng, ids, text_mask, prob=self.mlm_prob, vocab_size=self.model.text["vocab_size"], **self.special_ids
            )
            logits = apply("mlm_logits", masked, text_mask, vision["tokens"], train=True)
            nll = optax.softmax_cross_entropy_with_integer_labels(logits, ids)
            losses["mlm"] = jnp.sum(nll * picked) / jnp.maximum(picked.sum(), 1)
        loss = sum(self.weights[k] * v for k, v in losses.items())
        return loss, ({"loss": loss, **{f"loss_{k}": v for k, v in losses.items()}, **metrics}, model_state)

    def _vtm_logits(self, apply, rng, sim, ids, vision_tokens, text, text_mask) -> jax.Array:
        """(3B, 2) matching logits of [positive, negative video, negative text] per sample.

        Negatives come from the sample's own data shard (G shards of b = B / G),
        so gathering them moves no tokens between devices; the triples stay
        with their sample, so the (B, 3) -> 3B reshape keeps the batch sharding.
        """
        shards = _data_shards(sim.shape[0])
        b = sim.shape[0] // shards

        def local(x):
            return x.reshape(shards, b, *x.shape[1:])

        def take(x, index):
            return jax.vmap(lambda xs, i: xs[i])(local(x), index).reshape(x.shape)

        def triple(pos, neg_video, neg_text):
            return jnp.stack([pos, neg_video, neg_text], 1).reshape(-1, *pos.shape[1:])

        local_sim = jnp.stack([sim[g * b:(g + 1) * b, g * b:(g + 1) * b] for g in range(shards)])
        rngs = jax.random.split(rng, shards)
        neg_text, neg_video = jax.vmap(hard_negatives)(rngs, jax.lax.stop_gradient(local_sim), local(ids))
        videos = triple(vision_tokens, take(vision_tokens, neg_video), vision_tokens)
        texts = triple(text, text, take(text, neg_text))
        masks = triple(text_mask, text_mask, take(text_mask, neg_text))
        return apply("match_logits", texts, masks, videos, train=True)

    # ------------------------------------------------------------------ retrieval

    def encode_videos(self, variables, batch) -> dict:
        """Evaluation features of whole clips: tokens for matching and (B, T', E) embeddings."""
        video = normalize_video(batch["video"], self.normalization)
        vision = self.model.apply(variables, video, None, method="encode_vision")
        return {"tokens": vision["tokens"],
                "embedding": self.model.apply(variables, vision["pooled"], method="embed_vision")}

    def encode_texts(self, variables, batch) -> dict:
        text = self.model.apply(variables, batch["text_ids"], batch["text_mask"], method="encode_text")
        return {"hidden": text, "mask": batch["text_mask"],
                "embedding": self.model.apply(variables, text, method="embed_text")}

    def match_scores(self, variables, text_hidden, text_mask, vision_tokens) -> jax.Array:
        """(P,) `itm_head` logit of 'matched' for P (text, video) pairs: the re-ranking score."""
        return self.model.apply(variables, text_hidden, text_mask, vision_tokens, method="match_logits")[:, 1]

