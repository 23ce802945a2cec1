"""UMT stage-1 student: a video ViT over the unmasked tokens only, plus CLIP-aligning heads.

unmasked_teacher `modeling_pretrain_umt.py`: tubelet embedding + the fixed
sinusoid table, then only the visible tokens (mask False) enter the blocks;
the outputs of the last K blocks (every `clip_return_interval`) go through
the encoder's one final `norm`, get the sinusoid table at their positions
added again (`clip_pos_embed`), and block k's goes through its own head
`clip_decoder.k` = Linear(D -> out) -> LayerNorm -> L2 normalisation. The
heads' targets are the CLIP teacher's normalised features of the same layers
and positions (`vfm_jax.tasks.umt`).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from data.masking import gather_visible
from vfm_jax.layers.common import Dtype, l2_normalize, layer_norm, with_axes
from vfm_jax.layers.embeddings import TubeletEmbed, sinusoid_table
from vfm_jax.layers.transformer import Encoder, last_layers


class ClipDecoder(nn.Module):
    """(..., D) -> Linear -> LayerNorm -> L2 normalised (..., out): UMT's `Linear_Decoder`."""

    output_dim: int
    ln_eps: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(
            self.output_dim,
            dtype=self.dtype,
            kernel_init=with_axes(nn.initializers.xavier_uniform(), ("embed", "vocab")),
            bias_init=with_axes(nn.initializers.zeros, ("vocab",)),
            name="head",
        )(x)
        return l2_normalize(layer_norm(self.ln_eps, name="norm", axis="vocab")(x))


class UMTStudent(nn.Module):
    """(B, T, H, W, 3) video and (B, L) bool mask (True = masked) -> dict of outputs.

    L = T/tubelet * (H/p) * (W/p), index t*HW + h*W + w; every sample must keep
    the same number of tokens, `num_visible` (static; read from the mask when
    it is concrete). Outputs, K = `clip_return_layers`, N_vis = num_visible:
    - `encoder_features` (K, B, N_vis, D): `norm` of the returned blocks'
      outputs, in block order (the official `x_clip_vis`);
    - `features` (K, B, N_vis, out): the aligned, L2-normalised head outputs;
    - `tokens` (B, N_vis, D): `norm` of the last block's output.
    The sinusoid table is sown as intermediates `pos_embed` (1, L, D).
    """

    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    tubelet_size: int = 1
    clip_output_dim: int = 512
    clip_return_layers: int = 6
    clip_return_interval: int = 1
    dropout: float = 0.0
    drop_path_rate: float = 0.0
    ln_eps: float = 1e-6
    attention_impl: str = "auto"
    scan_layers: bool = True
    remat_policy: str = "none"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, video: jax.Array, mask: jax.Array, *, num_visible: int | None = None, train: bool = False
    ) -> dict[str, jax.Array]:
        if video.ndim != 5:
            raise ValueError(f"expected video (B, T, H, W, C), got shape {video.shape}")
        x = TubeletEmbed(
            self.width, self.patch_size, self.tubelet_size, self.dtype, name="patch_embed"
        )(video)
        if mask.shape != x.shape[:2]:
            raise ValueError(f"mask {mask.shape} does not match the {x.shape[:2]} (B, L) tokens")
        pos = jnp.asarray(sinusoid_table(x.shape[1], self.width))[None]
        self.sow("intermediates", "pos_embed", pos)
        x = gather_visible(x + pos.astype(self.dtype), mask, num_visible)
        x, aux = Encoder(
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=int(self.width * self.mlp_ratio),
            qkv_bias="qv",
            dropout=self.dropout,
            drop_path_rate=self.drop_path_rate,
            ln_eps=self.ln_eps,
            attention_impl=self.attention_impl,
            scan=self.scan_layers,
            remat_policy=self.remat_policy,
            return_layers=last_layers(self.depth, self.clip_return_layers, self.clip_return_interval),
            deterministic=not train,
            dtype=self.dtype,
            name="encoder",
        )(x)
        norm = layer_norm(self.ln_eps, name="norm")
        encoder_features = norm(aux["hidden"])
        # The official `clip_pos_embed` is the same table (its width must equal D).
        pos_vis = gather_visible(jnp.broadcast_to(pos, (x.shape[0], *pos.shape[1:])), mask, x.shape[1])
        aligned = encoder_features + pos_vis[None]
        features = jnp.stack([
            ClipDecoder(self.clip_output_dim, self.ln_eps, self.dtype, name=f"clip_decoder_{k}")(aligned[k])
            for k in range(self.clip_return_layers)
        ])
        return {"encoder_features": encoder_features, "features": features, "tokens": norm(x)}
