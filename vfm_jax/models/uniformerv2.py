"""UniFormerV2 (arXiv 2211.09552): a CLIP ViT made a video classifier by local and global UniBlocks.

The official `slowfast/models/uniformerv2_model.py` `VisionTransformer`, in the
repo's channels-last layout:
- Patch embedding per frame (`conv1`, CLIP's), or with `temporal_downsample`
  (SSv2) a Conv3d of kernel (3, p, p) and stride (2, p, p) that halves T.
- CLIP's class token and 2-D position table on every frame, `ln_pre`; no
  temporal position embedding.
- Local UniBlocks: CLIP's blocks, attending within each frame (batch B*T),
  with optional local MHRA on the patch tokens before the attention and (with
  `double_lmhra`) again before the MLP: x + (1x1x1 -> depthwise (3,1,1) ->
  1x1x1)(BatchNorm3d(x)), the last conv zero-initialised so a block starts
  as exactly CLIP's. BatchNorm keeps running statistics in `batch_stats`.
- Global UniBlocks after the `global_layers` backbone layers: a learnable
  query cross-attends to all T*(1+HW) tokens of the layer (after DPE), the
  query of one block feeding the next (`vfm_jax.layers.uniblocks`; the
  global blocks are unrolled, the backbone is scanned with `scan_layers`).
- Head: LayerNorm -> dropout -> Linear of the final query fused with the mean
  frame CLS of the last layer (`balance`), or of the query alone when `frozen`
  (the backbone then gets no gradient; see `configs/uniformerv2`).

Parameter layout. The CLIP parts carry `CLIPVision`'s names and shapes
(`conv1`, `class_embedding`, `positional_embedding`, `ln_pre`,
`encoder/blocks/{norm1, attn, norm2, mlp}`), so a converted OpenAI CLIP
(`python -m vfm_jax.convert --model clip_visual`) initialises them through
`init_from` as it is. The (3, p, p) conv of `temporal_downsample` is split
into its centre slice `conv1` and the outer slices `conv1_temporal` (2, p, p,
3, D), zero-initialised: CLIP then gives exactly the official centre
inflation (`inflate_weight(center=True)`). The position table is a
`image_size` one, resized (bicubic) on the fly for other input sizes, where
the official loader silently leaves a mismatched table at its random init.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vfm_jax.layers.attention import SelfAttention
from vfm_jax.layers.common import Dtype, DropPath, layer_norm, trunc_normal, with_axes
from vfm_jax.layers.embeddings import clip_patch_conv, clip_token_tables
from vfm_jax.layers.mlp import Mlp
from vfm_jax.layers.transformer import REMAT_POLICIES
from vfm_jax.layers.uniblocks import GlobalUniBlocks

# torch's default Conv/Linear weight init (kaiming_uniform with a = sqrt(5)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class BatchNorm(nn.Module):
    """torch BatchNorm over the last (channel) axis: batch statistics in training, running ones in evaluation.

    As torch: the running variance is updated with the unbiased batch variance
    (the normalisation uses the biased one), with `momentum` weighting the new
    batch. Statistics are taken over every axis but the last; under `jax.jit`
    with the batch sharded over the mesh, XLA reduces them over all shards, so
    data-parallel training sees the global batch's statistics (torch's
    per-GPU BatchNorm3d would not). Computed in fp32.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", with_axes(nn.initializers.ones, ("embed",)), (c,))
        bias = self.param("bias", with_axes(nn.initializers.zeros, ("embed",)), (c,))
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        x32 = x.astype(jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x32, axis=axes)
            var = jnp.mean(jnp.square(x32 - mean), axis=axes)
            if not self.is_initializing():
                n = x.size // c
                m = self.momentum
                running_mean.value = (1 - m) * running_mean.value + m * mean
                running_var.value = (1 - m) * running_var.value + m * var * (n / max(n - 1, 1))
        else:
            mean, var = running_mean.value, running_var.value
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(x.dtype)


class LocalMHRA(nn.Module):
    """(B, T, H, W, D) -> the local MHRA branch: BatchNorm -> 1x1x1 to D/r -> depthwise (3,1,1) -> 1x1x1 to D.

    The hidden width is `int(D // reduction)` as the official `dw_reduction`;
    every conv has a bias; the last one starts at zero.
    """

    reduction: float = 1.5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        width = x.shape[-1]
        hidden = int(width // self.reduction)
        h = BatchNorm(name="norm")(x, train=train).astype(self.dtype)
        h = nn.Dense(
            hidden, dtype=self.dtype, kernel_init=with_axes(torch_default_init, ("embed", "mlp")),
            bias_init=with_axes(nn.initializers.zeros, ("mlp",)), name="down",
        )(h)
        h = nn.Conv(
            hidden, kernel_size=(3, 1, 1), padding=((1, 1), (0, 0), (0, 0)), feature_group_count=hidden,
            dtype=self.dtype, kernel_init=with_axes(torch_default_init, (None, None, None, None, "mlp")),
            bias_init=with_axes(nn.initializers.zeros, ("mlp",)), name="temporal",
        )(h)
        return nn.Dense(
            width, dtype=self.dtype, kernel_init=with_axes(nn.initializers.zeros, ("mlp", "embed")),
            bias_init=with_axes(nn.initializers.zeros, ("embed",)), name="up",
        )(h)


class LocalUniBlock(nn.Module):
    """One CLIP block on (B*T, 1+P, D) frame tokens (batch ordered (b, t)), with optional local MHRA.

    `drop_path` may be a traced scalar (scan); stochastic depth drops a branch
    per video. (The official DropPath acts on the first axis of CLIP's
    (L, N*T, D) layout, i.e. per token position across the batch.)
    With `emit`, returns (x, x) for `nn.scan` (carry, per-layer output).
    """

    num_heads: int
    mlp_dim: int
    frames: int
    grid: tuple[int, int]
    lmhra: bool = False
    double_lmhra: bool = True
    lmhra_reduction: float = 1.5
    attention_impl: str = "auto"
    train: bool = False
    emit: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, drop_path):
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        bt, length, width = x.shape
        b = bt // self.frames

        def drop(h):  # per-video stochastic depth
            h = DropPath(drop_path)(h.reshape(b, -1, width), deterministic=not self.train)
            return h.reshape(bt, -1, width)

        def local(x, name):
            patches = x[:, 1:].reshape(b, self.frames, *self.grid, width)
            h = LocalMHRA(self.lmhra_reduction, self.dtype, name=name)(patches, train=self.train)
            return jnp.concatenate([x[:, :1], x[:, 1:] + drop(h.reshape(bt, length - 1, width))], axis=1)

        if self.lmhra:
            x = local(x, "lmhra1")
        h = SelfAttention(self.num_heads, "qkv", self.attention_impl, self.dtype, name="attn")(
            layer_norm(1e-5, name="norm1")(x).astype(self.dtype)
        )
        x = x + drop(h)
        if self.lmhra and self.double_lmhra:
            x = local(x, "lmhra2")
        h = Mlp(self.mlp_dim, 0.0, self.dtype, "quick_gelu", name="mlp")(
            layer_norm(1e-5, name="norm2")(x).astype(self.dtype), deterministic=not self.train
        )
        x = x + drop(h)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return (x, x) if self.emit else x


class LocalUniEncoder(nn.Module):
    """`depth` LocalUniBlocks -> (depth, B*T, 1+P, D), every layer's output (the global blocks read some).

    Stochastic-depth rates rise linearly to `drop_path_rate`. Scanned, the
    params are stacked under `blocks` (CLIPVision's `encoder/blocks` layout,
    plus `lmhra1`/`lmhra2` and their `batch_stats`); unrolled they are
    `blocks_0 ...`. Every layer's output is kept either way: one (depth, B*T,
    1+P, D) buffer, of which the global blocks use the last few.
    """

    depth: int
    num_heads: int
    mlp_dim: int
    frames: int
    grid: tuple[int, int]
    lmhra: bool = False
    double_lmhra: bool = True
    lmhra_reduction: float = 1.5
    drop_path_rate: float = 0.0
    attention_impl: str = "auto"
    scan: bool = True
    remat_policy: str = "none"
    train: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy {self.remat_policy!r} not in {sorted(REMAT_POLICIES)}")
        rates = np.linspace(0.0, self.drop_path_rate, self.depth, dtype=np.float32)
        kwargs = dict(
            num_heads=self.num_heads, mlp_dim=self.mlp_dim, frames=self.frames, grid=self.grid, lmhra=self.lmhra,
            double_lmhra=self.double_lmhra, lmhra_reduction=self.lmhra_reduction,
            attention_impl=self.attention_impl, train=self.train, dtype=self.dtype,
        )
        block_cls = LocalUniBlock
        if self.remat_policy != "none":
            block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[self.remat_policy], prevent_cse=not self.scan)
        if self.scan:
            stack = nn.scan(
                block_cls,
                variable_axes={"params": 0, "batch_stats": 0},
                split_rngs={"params": True, "dropout": True, "droppath": True},
                length=self.depth,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(**kwargs, emit=True, name="blocks")
            _, hidden = stack(x, jnp.asarray(rates))
            return hidden
        outputs = []
        for i in range(self.depth):
            x = block_cls(**kwargs, name=f"blocks_{i}")(x, float(rates[i]))
            outputs.append(x)
        return jnp.stack(outputs)


class UniFormerV2(nn.Module):
    """(B, T, H, W, 3) float video -> (B, num_classes) logits, or the fused feature if num_classes == 0.

    Option names map to the official ones: `temporal_downsample`
    (TEMPORAL_DOWNSAMPLE), `lmhra` (not NO_LMHRA), `double_lmhra`,
    `lmhra_reduction` (DW_REDUCTION), `global_layers` (RETURN_LIST, one global
    block per entry, N_LAYERS = its length), `global_heads` (N_HEAD; N_DIM is
    the width), `global_mlp_ratio` (MLP_FACTOR), `global_mlp_dropout`
    (MLP_DROPOUT, one value for all blocks), `head_dropout` (CLS_DROPOUT),
    `drop_path_rate` (BACKBONE_DROP_PATH_RATE), `global_drop_path_rate`
    (DROP_PATH_RATE), `frozen` (FROZEN). Any frame count works (no parameter
    depends on it); with `temporal_downsample` the backbone sees ceil(T / 2)
    frames.

    Intermediates sown for parity checks: `ln_pre_out` (B*T', 1+P, D),
    `hidden_states` (depth, B*T', 1+P, D) every backbone layer's output,
    `global/query` (B, 1, D) the last global block's output, `fused`
    (B, D) the head's input and `head_norm_out` (B, D).
    """

    num_classes: int
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 16
    image_size: int = 224
    mlp_ratio: float = 4.0
    temporal_downsample: bool = False
    lmhra: bool = False
    double_lmhra: bool = True
    lmhra_reduction: float = 1.5
    global_layers: tuple[int, ...] = (8, 9, 10, 11)
    global_heads: int | None = None
    global_mlp_ratio: float = 4.0
    global_mlp_dropout: float = 0.5
    head_dropout: float = 0.5
    drop_path_rate: float = 0.0
    global_drop_path_rate: float = 0.0
    frozen: bool = False
    attention_impl: str = "auto"
    scan_layers: bool = True
    remat_policy: str = "none"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, video: jax.Array, *, train: bool = False) -> jax.Array:
        if video.ndim != 5:
            raise ValueError(f"expected video (B, T, H, W, C), got shape {video.shape}")
        layers = tuple(self.global_layers)
        if not layers or list(layers) != sorted(set(layers)) or not 0 <= layers[0] <= layers[-1] < self.depth:
            raise ValueError(f"global_layers {layers} must be distinct ascending layers of depth {self.depth}")
        x, frames, grid = self._embed(video)
        b = video.shape[0]
        x = layer_norm(1e-5, name="ln_pre")(x).astype(self.dtype)
        self.sow("intermediates", "ln_pre_out", x)
        hidden = LocalUniEncoder(
            depth=self.depth, num_heads=self.num_heads, mlp_dim=int(self.width * self.mlp_ratio), frames=frames,
            grid=grid, lmhra=self.lmhra, double_lmhra=self.double_lmhra, lmhra_reduction=self.lmhra_reduction,
            drop_path_rate=self.drop_path_rate, attention_impl=self.attention_impl, scan=self.scan_layers,
            remat_policy=self.remat_policy, train=train, dtype=self.dtype, name="encoder",
        )(x)
        self.sow("intermediates", "hidden_states", hidden)
        # (K, B*T', 1+P, D) -> (K, B, T', 1+P, D): the tokens each global block reads.
        tokens = hidden[np.asarray(layers)].reshape(len(layers), b, frames, *hidden.shape[2:])
        frame_cls = hidden[-1][:, 0].reshape(b, frames, self.width)
        if self.frozen:
            tokens = jax.lax.stop_gradient(tokens)
        x = GlobalUniBlocks(
            num_heads=self.global_heads or self.num_heads, mlp_ratio=self.global_mlp_ratio,
            mlp_dropout=(self.global_mlp_dropout,) * len(layers), drop_path_rate=self.global_drop_path_rate,
            fuse=not self.frozen, attention_impl=self.attention_impl, dtype=self.dtype, name="global",
        )(tokens, frame_cls, grid=grid, deterministic=not train)
        self.sow("intermediates", "fused", x)
        x = layer_norm(1e-5, name="head_norm")(x)
        self.sow("intermediates", "head_norm_out", x)
        if self.num_classes == 0:
            return x
        x = nn.Dropout(self.head_dropout)(x, deterministic=not train)
        return nn.Dense(
            self.num_classes, dtype=jnp.float32, kernel_init=with_axes(trunc_normal, ("embed", "vocab")),
            bias_init=with_axes(nn.initializers.zeros, ("vocab",)), name="head",
        )(x)

    def _embed(self, video):
        """Patch tokens with class token and positions: (B*T', 1+P, D), T' and the (h, w) grid."""
        b, t, h, w, c = video.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"frames {h}x{w} are not divisible by patch_size {p}")
        grid = (h // p, w // p)

        x = video.astype(self.dtype)
        centre = x[:, ::2] if self.temporal_downsample else x
        frames = centre.shape[1]
        tokens = clip_patch_conv(self.width, p, self.dtype)(centre.reshape(b * frames, h, w, c))
        if self.temporal_downsample:
            # Output frame t sees input frames 2t-1 and 2t+1 (zero outside): interleaved, one (2, p, p) conv.
            padded = jnp.pad(x, ((0, 0), (1, 2 * frames - t), (0, 0), (0, 0), (0, 0)))
            outer = jnp.stack([padded[:, 0:2 * frames:2], padded[:, 2:2 * frames + 1:2]], axis=2)
            side = nn.Conv(
                self.width, kernel_size=(2, p, p), strides=(2, p, p), padding="VALID", use_bias=False,
                dtype=self.dtype, kernel_init=with_axes(nn.initializers.zeros, (None, None, None, "conv_in", "embed")),
                name="conv1_temporal",
            )(outer.reshape(b, 2 * frames, h, w, c))
            tokens = tokens + side.reshape(tokens.shape)
        x = tokens.reshape(b * frames, grid[0] * grid[1], self.width)
        cls, pos = clip_token_tables(self, self.width, self.image_size, p, grid)
        cls = jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, self.width))
        return jnp.concatenate([cls, x], axis=1) + pos.astype(self.dtype), frames, grid
