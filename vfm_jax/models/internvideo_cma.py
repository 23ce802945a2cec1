"""InternVideo's cross-model attention (CMA, arXiv 2212.03191 section 3.2): the two video encoders coordinated.

The official code never released this part (InternVideo issue #20). What is
marked [paper] is section 3.2's description as we read it; the PDF itself
could not be re-read from our build machines, so each [paper] point was
checked against what could: the maintainer's summary in issue #20 (cross-model
attention between the masked encoder and the UniFormerV2-based multimodal
encoder) and published reading notes of the paper (two encoders trained
first, then coordinated by cross-model attention modules with most parameters
frozen). What is marked [ours] is our choice where the paper is silent.

- Encoders [paper]: the masked video encoder (VideoMAE ViT, `VideoViT`) and
  the multimodal video encoder (UniFormerV2-based; here InternVideo-MM's
  `InternVideoMMVision`) see the same clip.
- CMA module [paper]: multi-head cross-attention plus a feed-forward network.
  Pre-LN residual blocks whose attention output and second FFN layer start
  at zero, so a fresh model computes exactly what the two encoders compute
  alone [ours]; the context is projected to the query width when the widths
  differ (ViT-H 1280 against L/14 1024), and each CMA has the head count
  of its query side's encoder [ours].
- Where and what attends to what [paper]: CMAs in the masked encoder take its
  tokens as queries and the multimodal encoder's intermediate tokens as keys
  and values, transferring multimodal knowledge into the masked encoder. The
  last CMA is the exception: the multimodal encoder's class token queries the
  masked encoder's tokens. Placement [ours]: both encoders are cut into
  `num_stages` equal stages (4 by default: ViT-H's 32 layers by 8, L/14's 24
  by 6); after each stage but the last, the masked stream attends to the
  multimodal backbone tokens of the same stage (all T*(1+P) of the clip) and
  goes on into its next stage; after the last stage the multimodal class
  token, taken as its fused video feature (the global query mixed with the
  mean frame CLS, the input of `ln_post`; the global blocks cannot be entered
  without editing `layers/uniblocks.py`), attends to the masked encoder's
  final tokens.
- Training [paper]: both backbones frozen except the classification layers
  and the multimodal encoder's query token; only the new parts learn. Here
  `frozen` stops the gradient of every encoder param but the VideoMAE `head`
  and `mm/global_blocks/temporal_cls_token` (the branch's params pass
  through `jax.lax.stop_gradient`, so gradients still flow through the
  frozen layers into the CMAs before them); `configs/internvideo/
  cma_finetune.py` keeps weight decay off them (`optim.no_decay`), so AdamW
  leaves them unchanged.
- Output [paper]: a learnable linear combination of the two prediction
  scores. Here `fusion` (2,) weighs the two heads' logits, starting at 0.5
  each (the plain average of the two classifiers) [ours]. The VideoMAE score
  is its own head (mean-pool, fc_norm, head, as `VideoViT`); the multimodal
  one is `mm_head`, a linear layer on `ln_post` of its video feature (as
  UniFormerV2's head on its fused feature) [ours]. `cma=False` drops the
  CMAs: the two encoders ensembled at score level, the ablation.

Inputs [ours]: one clip normalised with the task's preset
(`input_normalization`), re-normalised per branch inside the model to what
each encoder was trained with (`videomae_normalization` ImageNet,
`mm_normalization` CLIP: same pixels, different affine maps). The multimodal
encoder reads every `mm_frame_stride`-th frame (e.g. 8 of the 16 frames of a
VideoMAE-H clip).

Parameter layout: `videomae` holds `VideoViT`'s params and `mm`
`InternVideoMMVision`'s, names and shapes unchanged, so a converted
classifier (`python -m vfm_jax.convert --model umt_classifier`) and the
`vision_encoder` of a converted InternVideo-MM load into them as they are
(the classification task's `pretrained`: `videomae: DIR`, `mm:
DIR:vision_encoder`).
Running an encoder a stage at a time needs each layer's params on its own,
so both use the unrolled layout `encoder/blocks_{i}` (`scan_layers` must be
False; convert with `--scan_layers=false`). A scanned stack could be cut
into stages only by slicing its stacked params, which `layers.Encoder`
does not offer. New params: `cma_{s}` (masked side, s < num_stages - 1),
`cma_mm`, `mm_head`, `fusion`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from data.normalization import NORMALIZATION
from vfm_jax.layers.attention import CrossAttention
from vfm_jax.layers.common import Dtype, layer_norm, trunc_normal, with_axes
from vfm_jax.layers.embeddings import TubeletEmbed, clip_patch_conv, clip_token_tables
from vfm_jax.layers.mlp import Mlp
from vfm_jax.layers.transformer import REMAT_POLICIES, Block
from vfm_jax.layers.uniblocks import GlobalUniBlocks
from vfm_jax.models.internvideo_mm import InternVideoMMVision
from vfm_jax.models.vit import VideoViT, position_table

# Encoder arguments InternVideoCMA sets for both branches.
SHARED = ("num_classes", "head_dropout", "attention_impl", "scan_layers", "remat_policy", "dtype")


def renormalize(video: jax.Array, source: str, target: str) -> jax.Array:
    """A video normalised with the NORMALIZATION preset `source` -> the same pixels under `target`."""
    for name in (source, target):
        if name not in NORMALIZATION:
            raise ValueError(f"normalisation {name!r} is not one of {sorted(NORMALIZATION)}")
    if source == target:
        return video
    mean0, std0 = (np.asarray(v, np.float32) for v in NORMALIZATION[source])
    mean1, std1 = (np.asarray(v, np.float32) for v in NORMALIZATION[target])
    return video * (std0 / std1) + (mean0 - mean1) / std1


class StagedBlocks(nn.Module):
    """The unrolled blocks of `layers.transformer.Encoder` (`blocks_{i}`, same rates), run a range at a time."""

    depth: int
    num_heads: int
    mlp_dim: int
    qkv_bias: str = "qv"
    dropout: float = 0.0
    drop_path_rate: float = 0.0
    ln_eps: float = 1e-6
    activation: str = "gelu"
    attention_impl: str = "auto"
    remat_policy: str = "none"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, start: int, stop: int, *, deterministic: bool) -> list[jax.Array]:
        """The outputs of blocks start..stop-1, in order."""
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy {self.remat_policy!r} not in {sorted(REMAT_POLICIES)}")
        block = Block
        if self.remat_policy != "none":
            block = nn.remat(Block, policy=REMAT_POLICIES[self.remat_policy], prevent_cse=True)
        rates = np.linspace(0.0, self.drop_path_rate, self.depth, dtype=np.float32)
        outputs = []
        for i in range(start, stop):
            x = block(
                num_heads=self.num_heads, mlp_dim=self.mlp_dim, qkv_bias=self.qkv_bias, dropout=self.dropout,
                ln_eps=self.ln_eps, activation=self.activation, attention_impl=self.attention_impl,
                deterministic=deterministic, dtype=self.dtype, name=f"blocks_{i}",
            )(x, float(rates[i]))
            outputs.append(x)
        return outputs


class StagedVideoViT(VideoViT):
    """VideoViT's arguments and params, with its forward split into `embed`, `run` (a layer range) and `classify`.

    `__call__` chains the three: VideoViT's output with the unrolled layout.
    """

    STAGES = ("embed", "run", "classify")

    def setup(self):
        if self.scan_layers:
            raise ValueError("the staged VideoViT runs unrolled layers: set scan_layers=False")
        self.encoder = StagedBlocks(
            depth=self.depth, num_heads=self.num_heads, mlp_dim=int(self.width * self.mlp_ratio),
            qkv_bias=self.qkv_bias, dropout=self.dropout, drop_path_rate=self.drop_path_rate, ln_eps=self.ln_eps,
            attention_impl=self.attention_impl, remat_policy=self.remat_policy, dtype=self.dtype,
        )
        self.fc_norm = layer_norm(self.ln_eps)
        self.head_drop = nn.Dropout(self.head_dropout)
        if self.num_classes:
            self.head = nn.Dense(
                self.num_classes, dtype=jnp.float32, kernel_init=with_axes(trunc_normal, ("embed", "vocab")),
                bias_init=with_axes(nn.initializers.zeros, ("vocab",)),
            )

    @nn.compact
    def embed(self, video: jax.Array, *, deterministic: bool) -> jax.Array:
        """(B, T, H, W, 3) -> (B, L, D) tokens with positions; the table's size follows the input."""
        if self.pos_embedding not in ("sinusoid", "learned"):
            raise ValueError(f"pos_embedding={self.pos_embedding!r} is not 'sinusoid' or 'learned'")
        x = TubeletEmbed(self.width, self.patch_size, self.tubelet_size, self.dtype, name="patch_embed")(video)
        frames = video.shape[1] // self.tubelet_size
        pos = position_table(frames, x.shape[1] // frames, self.width, self.pos_table_frames)
        if self.pos_embedding == "learned":
            table = pos
            pos = self.param("pos_embed", with_axes(lambda *_: jnp.asarray(table), ("length", "embed")), table.shape)
        x = x + jnp.asarray(pos, self.dtype)[None]
        return nn.Dropout(self.dropout)(x, deterministic=deterministic)

    def run(self, x: jax.Array, start: int, stop: int, *, deterministic: bool) -> jax.Array:
        return self.encoder(x, start, stop, deterministic=deterministic)[-1]

    def classify(self, x: jax.Array, *, deterministic: bool) -> tuple[jax.Array, jax.Array | None]:
        """Tokens -> (pooled features after fc_norm, logits or None without a head)."""
        pooled = self.fc_norm(jnp.mean(x.astype(jnp.float32), axis=1))
        if not self.num_classes:
            return pooled, None
        return pooled, self.head(self.head_drop(pooled, deterministic=deterministic))

    def __call__(self, video: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.run(self.embed(video, deterministic=not train), 0, self.depth, deterministic=not train)
        pooled, logits = self.classify(x, deterministic=not train)
        return pooled if logits is None else logits


class StagedMMVision(InternVideoMMVision):
    """InternVideoMMVision's arguments and params, its forward split into `embed`, `run`, `fuse` and `post`.

    No patch drop (`drop_ratio` 0: fine-tuning sees every patch). `__call__`
    chains the parts: InternVideoMMVision's `features` and `embedding`.
    """

    STAGES = ("embed", "run", "fuse", "post")

    def setup(self):
        if self.scan_layers:
            raise ValueError("the staged InternVideoMMVision runs unrolled layers: set scan_layers=False")
        if self.drop_ratio:
            raise ValueError(f"drop_ratio={self.drop_ratio}: the staged encoder sees every patch")
        if not self.global_layers:
            raise ValueError("global_layers is empty: the video feature needs at least one global block")
        self.encoder = StagedBlocks(
            depth=self.depth, num_heads=self.num_heads, mlp_dim=int(self.width * self.mlp_ratio), qkv_bias="qkv",
            drop_path_rate=self.drop_path_rate, ln_eps=self.ln_eps, activation="quick_gelu",
            attention_impl=self.attention_impl, remat_policy=self.remat_policy, dtype=self.dtype,
        )
        self.global_blocks = GlobalUniBlocks(
            num_heads=self.global_heads or self.num_heads, mlp_ratio=self.global_mlp_ratio,
            mlp_dropout=tuple(self.global_mlp_dropout), drop_path_rate=self.global_drop_path_rate,
            ln_eps=self.ln_eps, attention_impl=self.attention_impl, dtype=self.dtype,
        )
        self.ln_post = layer_norm(self.ln_eps)
        init = with_axes(nn.initializers.normal(self.width ** -0.5), ("embed", "vocab"))
        self.proj = self.param("proj", init, (self.width, self.output_dim))

    @nn.compact
    def embed(self, video: jax.Array) -> jax.Array:
        """(B, T, H, W, 3) -> (B*T, 1+P, D): per-frame patches, class token and positions, after ln_pre."""
        b, t, h, w, c = video.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"frames {h}x{w} are not divisible by patch_size {p}")
        grid = (h // p, w // p)
        x = clip_patch_conv(self.width, p, self.dtype)(video.reshape(b * t, h, w, c).astype(self.dtype))
        x = x.reshape(b * t, grid[0] * grid[1], self.width)
        cls, pos = clip_token_tables(self, self.width, self.image_size, p, grid)
        x = x + pos[1:].astype(self.dtype)
        cls = jnp.broadcast_to((cls + pos[0]).astype(self.dtype), (b * t, 1, self.width))
        return layer_norm(self.ln_eps, name="ln_pre")(jnp.concatenate([cls, x], axis=1)).astype(self.dtype)

    def run(self, x: jax.Array, start: int, stop: int, *, deterministic: bool) -> list[jax.Array]:
        return self.encoder(x, start, stop, deterministic=deterministic)

    def fuse(self, hidden: jax.Array, frame_cls: jax.Array, *, grid: tuple[int, int], deterministic: bool) -> jax.Array:
        """The global blocks: (K, B, T, 1+P, D) hidden states of `global_layers`, (B, T, D) -> (B, D) feature."""
        return self.global_blocks(hidden, frame_cls, grid=grid, deterministic=deterministic)

    def post(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(B, D) feature -> (ln_post of it, the contrastive embedding ln_post @ proj)."""
        pooled = self.ln_post(features)
        return pooled, pooled @ self.proj.astype(jnp.float32)

    def __call__(self, video: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        b, t, h, w, _ = video.shape
        outputs = self.run(self.embed(video), 0, self.depth, deterministic=not train)
        tokens = outputs[-1].reshape(b, t, *outputs[-1].shape[1:])
        hidden = jnp.stack([outputs[i] for i in self.global_layers]).reshape(-1, *tokens.shape)
        grid = (h // self.patch_size, w // self.patch_size)
        features = self.fuse(hidden, tokens[:, :, 0], grid=grid, deterministic=not train)
        return {"tokens": tokens, "features": features, "embedding": self.post(features)[1]}


class CrossModelAttention(nn.Module):
    """One CMA: x + MHCA(LN(x), LN(context)), then x + FFN(LN(x)); (B, Lq, D), (B, Lk, Dc) -> (B, Lq, D).

    The attention's output projection and the FFN's second layer start at
    zero (the block starts as the identity); a context of another width goes
    through `context_proj` first.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    ln_eps: float = 1e-6
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array, *, deterministic: bool) -> jax.Array:
        width = x.shape[-1]
        context = layer_norm(self.ln_eps, name="norm_context")(context)
        if context.shape[-1] != width:
            context = nn.Dense(
                width, dtype=self.dtype, kernel_init=with_axes(trunc_normal, ("kv", "embed")),
                bias_init=with_axes(nn.initializers.zeros, ("embed",)), name="context_proj",
            )(context.astype(self.dtype))
        h = CrossAttention(self.num_heads, self.attention_impl, self.dtype, zero_init_out=True, name="attn")(
            layer_norm(self.ln_eps, name="norm_query")(x).astype(self.dtype), context.astype(self.dtype)
        )
        x = x + h
        h = Mlp(int(width * self.mlp_ratio), 0.0, self.dtype, "gelu", zero_init_out=True, name="mlp")(
            layer_norm(self.ln_eps, name="norm_mlp")(x).astype(self.dtype), deterministic=deterministic
        )
        return x + h


def _stop_gradient_except(keep: Sequence[str]):
    """map_variables `trans_in_fn`: every param but those under the '/'-paths in `keep` sees no gradient."""

    def trans(variables):
        flat = traverse_util.flatten_dict(variables.get("params", {}), sep="/")
        flat = {
            path: value if any(path == k or path.startswith(k + "/") for k in keep)
            else jax.tree.map(jax.lax.stop_gradient, value)
            for path, value in flat.items()
        }
        return {**variables, "params": traverse_util.unflatten_dict(flat, sep="/")}

    return trans


def stage_bounds(depth: int, stages: int) -> list[int]:
    """Layer indices where the `stages` equal stages of a depth-`depth` stack start, plus `depth`."""
    if stages < 1 or depth % stages:
        raise ValueError(f"num_stages={stages} does not split a depth-{depth} encoder into equal stages")
    return [s * depth // stages for s in range(stages + 1)]


class InternVideoCMA(nn.Module):
    """(B, T, H, W, 3) video -> (B, num_classes) fused logits; with num_classes 0, the two features concatenated.

    `videomae` holds VideoViT's arguments (e.g. a `videomae_h16` preset
    without `arch`), `mm` InternVideoMMVision's; the arguments in `SHARED`
    are set here for both (`head_dropout` before either head). `scan_layers`
    must stay False; it is a field so that checkpoint metadata records the
    layout. Intermediates: `videomae_features` (B, Dv) after fc_norm,
    `mm_features` (B, Dm) the multimodal video feature before `ln_post`
    (after `cma_mm`), and with a head `videomae_logits`, `mm_logits`.
    """

    num_classes: int
    videomae: Mapping[str, Any]
    mm: Mapping[str, Any]
    num_stages: int = 4
    cma: bool = True
    cma_mlp_ratio: float = 4.0
    frozen: bool = True
    mm_frame_stride: int = 1
    input_normalization: str = "imagenet"
    videomae_normalization: str = "imagenet"
    mm_normalization: str = "clip"
    head_dropout: float = 0.0
    attention_impl: str = "auto"
    scan_layers: bool = False
    remat_policy: str = "none"
    dtype: Dtype = jnp.float32

    def _encoder(self, cls, spec: Mapping[str, Any], keep: Sequence[str], name: str, **fixed):
        clash = sorted(set(spec) & set(SHARED))
        if clash:
            raise ValueError(f"InternVideoCMA.{name} sets {clash}; set them on InternVideoCMA")
        if self.frozen:
            cls = nn.map_variables(
                cls, "params", trans_in_fn=_stop_gradient_except(keep), init=self.is_initializing(),
                methods=cls.STAGES,
            )
        return cls(
            **spec, **fixed, attention_impl=self.attention_impl, scan_layers=False, remat_policy=self.remat_policy,
            dtype=self.dtype, name=name,
        )

    @nn.compact
    def __call__(self, video: jax.Array, *, train: bool = False) -> jax.Array:
        if video.ndim != 5:
            raise ValueError(f"expected video (B, T, H, W, C), got shape {video.shape}")
        if self.mm_frame_stride < 1:
            raise ValueError(f"mm_frame_stride={self.mm_frame_stride} must be >= 1")
        if self.scan_layers:
            raise ValueError("InternVideoCMA runs its encoders a stage at a time on unrolled layers: "
                             "set scan_layers=False (and convert checkpoints with --scan_layers=false)")
        deterministic = not train
        videomae = self._encoder(
            StagedVideoViT, self.videomae, ("head",), "videomae", num_classes=self.num_classes,
            head_dropout=self.head_dropout,
        )
        mm = self._encoder(StagedMMVision, self.mm, ("global_blocks/temporal_cls_token",), "mm")
        v_bounds = stage_bounds(videomae.depth, self.num_stages)
        m_bounds = stage_bounds(mm.depth, self.num_stages)

        v = videomae.embed(
            renormalize(video, self.input_normalization, self.videomae_normalization), deterministic=deterministic
        )
        mm_video = renormalize(video, self.input_normalization, self.mm_normalization)[:, :: self.mm_frame_stride]
        b, t, h, w, _ = mm_video.shape
        m = mm.embed(mm_video)
        hidden = {}
        for s in range(self.num_stages):
            v = videomae.run(v, v_bounds[s], v_bounds[s + 1], deterministic=deterministic)
            outputs = mm.run(m, m_bounds[s], m_bounds[s + 1], deterministic=deterministic)
            hidden.update(zip(range(m_bounds[s], m_bounds[s + 1]), outputs))
            m = outputs[-1]
            if self.cma and s < self.num_stages - 1:
                v = CrossModelAttention(
                    videomae.num_heads, self.cma_mlp_ratio, attention_impl=self.attention_impl, dtype=self.dtype,
                    name=f"cma_{s}",
                )(v, m.reshape(b, t * m.shape[1], m.shape[2]), deterministic=deterministic)

        tokens = m.reshape(b, t, *m.shape[1:])
        layers = jnp.stack([hidden[i] for i in mm.global_layers]).reshape(-1, *tokens.shape)
        grid = (h // mm.patch_size, w // mm.patch_size)
        features = mm.fuse(layers, tokens[:, :, 0], grid=grid, deterministic=deterministic)
        if self.cma:
            features = CrossModelAttention(
                mm.num_heads, self.cma_mlp_ratio, attention_impl=self.attention_impl, dtype=self.dtype, name="cma_mm",
            )(features[:, None], v, deterministic=deterministic)[:, 0]
        self.sow("intermediates", "mm_features", features)
        videomae_features, videomae_logits = videomae.classify(v, deterministic=deterministic)
        self.sow("intermediates", "videomae_features", videomae_features)
        mm_pooled = mm.post(features)[0]
        if not self.num_classes:
            return jnp.concatenate([videomae_features, mm_pooled], axis=-1)

        mm_logits = nn.Dense(
            self.num_classes, dtype=jnp.float32, kernel_init=with_axes(trunc_normal, ("embed", "vocab")),
            bias_init=with_axes(nn.initializers.zeros, ("vocab",)), name="mm_head",
        )(nn.Dropout(self.head_dropout)(mm_pooled, deterministic=deterministic))
        self.sow("intermediates", "videomae_logits", videomae_logits)
        self.sow("intermediates", "mm_logits", mm_logits)
        fusion = self.param("fusion", with_axes(nn.initializers.constant(0.5), (None,)), (2,))
        return fusion[0] * videomae_logits + fusion[1] * mm_logits
