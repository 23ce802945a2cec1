"""The video ViT of UMT and VideoMAE.

Tubelet embedding, a fixed 1-D sinusoid table over the flattened T*H*W token
index (not a parameter, not in the released checkpoints), pre-LN blocks whose
attention has q and v biases but no k bias, then mean-pool -> fc_norm -> head.
"""
from __future__ import annotations

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from vfm_jax.layers.common import Dtype, layer_norm, trunc_normal, with_axes
from vfm_jax.layers.embeddings import TubeletEmbed, sinusoid_table
from vfm_jax.layers.transformer import Encoder


def position_table(frames: int, grid: int, dim: int, table_frames: int = 0) -> np.ndarray:
    """(frames * grid, dim) fixed positions for `frames` temporal by `grid` spatial tokens.

    table_frames = 0: the sinusoid over the flattened index. Otherwise the
    sinusoid of `table_frames * grid` positions, linearly interpolated along
    time to `frames` (torch `interpolate(mode='linear', align_corners=False)`):
    UMT fine-tuning (`modeling_finetune.get_sinusoid_encoding_table`) always
    starts from the 8-frame table of pre-training, so a 16-frame run gets the
    stretched table, not a longer sinusoid.
    """
    if not table_frames or table_frames == frames:
        return sinusoid_table(frames * grid, dim)
    table = sinusoid_table(table_frames * grid, dim).reshape(table_frames, grid, dim)
    # Source coordinate of each output frame, as torch computes it for align_corners=False.
    src = np.maximum((np.arange(frames) + 0.5) * (table_frames / frames) - 0.5, 0.0)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, table_frames - 1)
    w = (src - lo)[:, None, None]
    return ((1 - w) * table[lo] + w * table[hi]).reshape(frames * grid, dim).astype(np.float32)


class VideoViT(nn.Module):
    """(B, T, H, W, 3) float video -> (B, num_classes) logits, or pooled features if num_classes == 0.

    `pos_embedding`: 'sinusoid' regenerates the fixed table for the token
    count at hand; 'learned' is a `pos_embed` param (initialised to that
    table), which released fine-tuned checkpoints carry when their token count
    differs from the pre-training one. `pos_table_frames` > 0 names the
    temporal length (in tubelets) of the pre-training table, which is then
    stretched along time to the run's length (`position_table`).
    Intermediates are sown for parity checks: `embed_tokens` (blocks'
    input), `tokens` (last block's output), `pooled_features` (after fc_norm).
    """

    num_classes: int
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    tubelet_size: int = 1
    qkv_bias: str = "qv"
    pos_embedding: str = "sinusoid"
    pos_table_frames: int = 0
    dropout: float = 0.0
    head_dropout: float = 0.0
    drop_path_rate: float = 0.0
    ln_eps: float = 1e-6
    attention_impl: str = "auto"
    scan_layers: bool = True
    remat_policy: str = "none"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, video: jax.Array, *, train: bool = False) -> jax.Array:
        if video.ndim != 5:
            raise ValueError(f"expected video (B, T, H, W, C), got shape {video.shape}")
        x = TubeletEmbed(
            self.width, self.patch_size, self.tubelet_size, self.dtype, name="patch_embed"
        )(video)
        if self.pos_embedding not in ("sinusoid", "learned"):
            raise ValueError(f"pos_embedding={self.pos_embedding!r} is not 'sinusoid' or 'learned'")
        frames = video.shape[1] // self.tubelet_size
        table = position_table(frames, x.shape[1] // frames, self.width, self.pos_table_frames)
        pos = table
        if self.pos_embedding == "learned":
            pos = self.param("pos_embed", with_axes(lambda *_: jnp.asarray(table), ("length", "embed")), table.shape)
        x = x + jnp.asarray(pos, self.dtype)[None]
        self.sow("intermediates", "embed_tokens", x)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        x = Encoder(
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=int(self.width * self.mlp_ratio),
            qkv_bias=self.qkv_bias,
            dropout=self.dropout,
            drop_path_rate=self.drop_path_rate,
            ln_eps=self.ln_eps,
            attention_impl=self.attention_impl,
            scan=self.scan_layers,
            remat_policy=self.remat_policy,
            deterministic=not train,
            dtype=self.dtype,
            name="encoder",
        )(x)
        self.sow("intermediates", "tokens", x)
        x = layer_norm(self.ln_eps, name="fc_norm")(jnp.mean(x.astype(jnp.float32), axis=1))
        self.sow("intermediates", "pooled_features", x)
        if self.num_classes == 0:
            return x
        x = nn.Dropout(self.head_dropout)(x, deterministic=not train)
        return nn.Dense(
            self.num_classes,
            dtype=jnp.float32,
            kernel_init=with_axes(trunc_normal, ("embed", "vocab")),
            bias_init=with_axes(nn.initializers.zeros, ("vocab",)),
            name="head",
        )(x)

    @property
    def num_layers(self) -> int:
        return self.depth

    def layer_ids(self, params) -> dict:
        """Per-param depth for layer-wise lr decay: patch_embed 0, block i -> i+1, the rest depth+1.

        Scanned blocks get a (depth,) vector that broadcasts over the stacked axis.
        """
        def layer_id(path, _):
            top = path[0]
            if top in ("patch_embed", "pos_embed"):
                return np.int32(0)
            if top == "encoder":
                block = path[1]
                if block == "blocks":
                    return np.arange(1, self.depth + 1, dtype=np.int32)
                return np.int32(int(block.split("_")[1]) + 1)
            return np.int32(self.depth + 1)

        return traverse_util.path_aware_map(layer_id, params)
