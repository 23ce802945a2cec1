"""VideoMAE pre-training model: InternVideo's masked video encoder (`Pretrain/VideoMAE/modeling_pretrain.py`).

The encoder is the video ViT over the visible tokens only (tubelet 2, q/v
biases, the fixed sinusoid table added before masking, a final `norm`),
which is UMTStudent without CLIP heads, so it is reused as is. Its params
sit at the top level (`patch_embed`, `encoder`, `norm`) through
`nn.share_scope`: `init_from` subtrees `patch_embed` + `encoder` then start a
`video_vit` classifier exactly as they do from a UMT stage-1 student.

The decoder follows the official forward: `encoder_to_decoder` (no bias)
maps the visible tokens to the decoder width; the decoder's own sinusoid
table is added at their positions, and a learned `mask_token` plus the
table stands in for every masked token. The decoder sees [visible; masked]
(each in position order, as the official concatenation), and only the
masked tokens go through `decoder_norm` and `decoder_head`, which predicts
the tubelet * patch^2 * 3 pixels of each.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from data.masking import gather_visible, visible_indices
from vfm_jax.layers.common import Dtype, layer_norm, trunc_normal, with_axes
from vfm_jax.layers.embeddings import sinusoid_table
from vfm_jax.layers.transformer import Encoder
from vfm_jax.models.umt import UMTStudent


class VideoMAEPretrain(nn.Module):
    """(B, T, H, W, 3) video and (B, L) bool mask (True = masked) -> dict of outputs.

    Every sample must hide the same number of tokens; `num_visible` (static)
    is needed under jit and read from a concrete mask otherwise. Outputs,
    N_vis = num_visible, N_mask = L - N_vis:
    - `tokens` (B, N_vis, D): the encoder's normed visible tokens;
    - `pred` (B, N_mask, tubelet * patch^2 * 3): reconstructions of the masked
      tokens in position order, pixels ordered (t, y, x, channel) as the
      official targets (`vfm_jax.tasks.videomae.patch_targets`).
    The decoder shares `mlp_ratio`, `drop_path_rate` and `ln_eps` with the
    encoder, as in the official model.
    """

    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    tubelet_size: int = 2
    decoder_width: int = 384
    decoder_depth: int = 4
    decoder_num_heads: int = 6
    drop_path_rate: float = 0.0
    ln_eps: float = 1e-6
    attention_impl: str = "auto"
    scan_layers: bool = True
    remat_policy: str = "none"
    dtype: Dtype = jnp.float32

    def setup(self):
        self.visible_encoder = UMTStudent(
            width=self.width, depth=self.depth, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
            patch_size=self.patch_size, tubelet_size=self.tubelet_size, clip_return_layers=0,
            drop_path_rate=self.drop_path_rate, ln_eps=self.ln_eps, attention_impl=self.attention_impl,
            scan_layers=self.scan_layers, remat_policy=self.remat_policy, dtype=self.dtype,
        )
        nn.share_scope(self, self.visible_encoder)

    @nn.compact
    def __call__(
        self, video: jax.Array, mask: jax.Array, *, num_visible: int | None = None, train: bool = False
    ) -> dict[str, jax.Array]:
        if mask is None:
            raise ValueError("VideoMAEPretrain reconstructs masked tokens: pass a (B, L) bool mask")
        if num_visible is None:
            num_visible = visible_indices(np.asarray(mask)).shape[-1]
        batch, length = mask.shape
        num_masked = length - num_visible
        tokens = self.visible_encoder(video, mask, num_visible=num_visible, train=train)["tokens"]

        x = nn.Dense(
            self.decoder_width, use_bias=False, dtype=self.dtype,
            kernel_init=with_axes(nn.initializers.xavier_uniform(), ("embed", "vocab")),
            name="encoder_to_decoder",
        )(tokens)
        mask_token = self.param("mask_token", with_axes(trunc_normal, ("embed",)), (self.decoder_width,))
        table = jnp.asarray(sinusoid_table(length, self.decoder_width))
        pos = jnp.broadcast_to(table, (batch, length, self.decoder_width))
        x = jnp.concatenate([
            x + gather_visible(pos, mask, num_visible).astype(self.dtype),
            (mask_token + gather_visible(pos, ~mask, num_masked)).astype(self.dtype),
        ], axis=1)
        x = Encoder(
            depth=self.decoder_depth,
            num_heads=self.decoder_num_heads,
            mlp_dim=int(self.decoder_width * self.mlp_ratio),
            qkv_bias="qv",
            drop_path_rate=self.drop_path_rate,
            ln_eps=self.ln_eps,
            attention_impl=self.attention_impl,
            scan=self.scan_layers,
            remat_policy=self.remat_policy,
            deterministic=not train,
            dtype=self.dtype,
            name="decoder",
        )(x)
        x = layer_norm(self.ln_eps, name="decoder_norm")(x[:, num_visible:])
        pred = nn.Dense(
            self.tubelet_size * self.patch_size**2 * 3, dtype=self.dtype,
            kernel_init=with_axes(nn.initializers.xavier_uniform(), ("embed", "vocab")),
            bias_init=with_axes(nn.initializers.zeros, ("vocab",)),
            name="decoder_head",
        )(x.astype(self.dtype))
        return {"tokens": tokens, "pred": pred}
