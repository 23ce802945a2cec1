"""Patch/tubelet embedding, CLIP's patch stem, and the fixed sinusoid position table."""
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


def clip_patch_conv(width: int, patch_size: int, dtype: Dtype) -> nn.Conv:
    """CLIP's bias-free patch convolution, `conv1`: (N, H, W, C) frames -> (N, H/p, W/p, D).

    Built inside the calling module's compact method, so its params sit in
    that module as `conv1` (the name every CLIP-based converter writes).
    """
    return nn.Conv(
        width, kernel_size=(patch_size, patch_size), strides=(patch_size, patch_size), padding="VALID",
        use_bias=False, dtype=dtype,
        kernel_init=with_axes(nn.initializers.lecun_normal(), (None, None, "conv_in", "embed")), name="conv1",
    )


def clip_token_tables(module: nn.Module, width: int, image_size: int, patch_size: int,
                      grid: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """CLIP's `class_embedding` (D,) and `positional_embedding`, params of `module`.

    The table is stored for the pre-training size (1 + (image_size/p)^2, D)
    and returned resized to `grid` (`resize_positional_embedding`).
    """
    init = nn.initializers.normal(width ** -0.5)
    g = image_size // patch_size
    cls = module.param("class_embedding", with_axes(init, ("embed",)), (width,))
    pos = module.param("positional_embedding", with_axes(init, ("length", "embed")), (g * g + 1, width))
    return cls, resize_positional_embedding(pos, grid)


def resize_positional_embedding(table: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """(1 + g*g, D) CLIP table -> (1 + gh*gw, D) for another input size; the class row is kept.

    The official loader resizes with torch bicubic (a = -0.75, no antialias)
    once, when the checkpoint is loaded; here it happens on the fly with
    `jax.image.resize` bicubic (Keys a = -0.5, antialias off), so values
    differ slightly from the official resized table.
    """
    g = round((table.shape[0] - 1) ** 0.5)
    if (g, g) == tuple(grid):
        return table
    patches = table[1:].reshape(g, g, table.shape[1])
    patches = jax.image.resize(patches, (*grid, table.shape[1]), method="bicubic", antialias=False)
    return jnp.concatenate([table[:1], patches.reshape(-1, table.shape[1])], axis=0)
