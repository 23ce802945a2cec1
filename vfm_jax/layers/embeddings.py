"""Patch/tubelet embedding and the fixed sinusoid position table."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vfm_jax.layers.common import Dtype, with_axes


def sinusoid_table(num_positions: int, dim: int) -> np.ndarray:
    """(num_positions, dim) table of the Transformer paper, sin on even and cos on odd channels.

    This is VideoMAE/UMT's `get_sinusoid_encoding_table`: not a parameter and
    not in their checkpoints, so it is regenerated here.
    """
    pos = np.arange(num_positions, dtype=np.float64)[:, None]
    channel = np.arange(dim)[None, :]
    angles = pos / np.power(10000.0, 2 * (channel // 2) / dim)
    table = np.where(channel % 2 == 0, np.sin(angles), np.cos(angles))
    return table.astype(np.float32)


class TubeletEmbed(nn.Module):
    """(B, T, H, W, C) video -> (B, T/t * H/p * W/p, D) tokens, one conv with stride = kernel."""

    width: int
    patch_size: int
    tubelet_size: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, video: jax.Array) -> jax.Array:
        b, t, h, w, _ = video.shape
        if t % self.tubelet_size or h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"video {video.shape[1:4]} (T, H, W) is not divisible by tubelet "
                f"{self.tubelet_size} and patch {self.patch_size}"
            )
        kernel = (self.tubelet_size, self.patch_size, self.patch_size)
        x = nn.Conv(
            self.width,
            kernel_size=kernel,
            strides=kernel,
            padding="VALID",
            dtype=self.dtype,
            kernel_init=with_axes(
                nn.initializers.lecun_normal(), (None, None, None, "conv_in", "embed")
            ),
            bias_init=with_axes(nn.initializers.zeros, ("embed",)),
            name="proj",
        )(video.astype(self.dtype))
        return x.reshape(b, -1, self.width)
