"""GroupNorm(+scale/shift)+SiLU as Triton-style Pallas kernels (GPU; CPU in interpret mode).

A (sample, group) of a U-Net activation is far too large for one program, so
each direction takes two passes over x, every program handling one tile of
`block_rows` spatial positions x `block_c` channels of one sample:

- forward: per-tile channel moments (reads x), then y = silu(x * a + d) with
  the normalisation, affine and modulation folded into per-(sample, channel)
  a, d (reads x, writes y);
- backward: per-tile channel sums of g and g * x_hat (reads x, dy), then
  dx = g * p + x * q + o (reads x, dy, writes dx).

Between the passes, O(B * C) jnp work merges the partial sums
(`reference.two_pass_group_norm_silu`). Triton blocks need power-of-two
dims, so a tile spans the largest power-of-two divisor of C (at most 64)
channels and the rows past S in the last tile are masked.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels.groupnorm import reference

# Default tile 64 rows x 64 channels at 4 warps: on an H100 (bf16, (2, 16, 64, 64, 320)) it beat
# 128x64, 256x64 (8 warps), 32x64, 16x64, 128x32 and 64x128 (C = 640), mostly in the backward.
_TILE_ELEMENTS = 4096
_MAX_BLOCK_C = 64
_NUM_WARPS = 4


@dataclasses.dataclass(frozen=True)
class _TritonPasses:
    block_rows: int
    block_c: int
    interpret: bool

    def _launch(self, body, tiled, coefs, *, num_sums):
        """Runs `body` over a (channel tile, row tile, sample) grid, channel tiles fastest so that
        neighbouring programs read neighbouring memory.

        num_sums == 0: body(*tiles, *coefs) is a tile, written like tiled[0]; else body(valid,
        *tiles, *coefs) returns num_sums per-channel tile sums, each (1, block_c), stored as
        (B, T, C) fp32.
        """
        b, s, c = tiled[0].shape
        rows, bc = self.block_rows, self.block_c
        grid = (c // bc, pl.cdiv(s, rows), b)
        tile_spec = pl.BlockSpec((None, rows, bc), lambda j, t, i: (i, t, j))
        coef_spec = pl.BlockSpec((None, bc), lambda j, t, i: (i, j))
        if num_sums:
            sum_shape = reference.like(tiled[0], (b, grid[1], c), jnp.float32)
            out_shape = [sum_shape] * num_sums
            out_specs = [pl.BlockSpec((None, 1, bc), lambda j, t, i: (i, t, j))] * num_sums
        else:
            out_shape, out_specs = reference.like(tiled[0], tiled[0].shape, tiled[0].dtype), tile_spec

        def kernel(*refs):
            tile_refs, coef_refs = refs[: len(tiled)], refs[len(tiled) : len(tiled) + len(coefs)]
            out_refs = refs[len(tiled) + len(coefs) :]
            row = pl.program_id(1) * rows + jax.lax.broadcasted_iota(jnp.int32, (rows, bc), 0)
            valid = row < s
            tiles = [plgpu.load(ref, mask=valid, other=0) for ref in tile_refs]
            coef_vals = [ref[...] for ref in coef_refs]
            if num_sums:
                for ref, value in zip(out_refs, body(valid, *tiles, *coef_vals)):
                    ref[...] = value
            else:
                out = body(*tiles, *coef_vals)
                plgpu.store(out_refs[0], out.astype(out_refs[0].dtype), mask=valid)

        return pl.pallas_call(
            kernel,
            grid=grid,
            in_specs=[tile_spec] * len(tiled) + [coef_spec] * len(coefs),
            out_specs=out_specs,
            out_shape=out_shape,
            compiler_params=plgpu.CompilerParams(num_warps=_NUM_WARPS, num_stages=1),
            interpret=self.interpret,
        )(*tiled, *coefs)

    def moments(self, x):
        mean, m2 = self._launch(reference.tile_moments, [x], [], num_sums=2)
        return mean, m2, reference.tile_counts(x.shape[1], self.block_rows)

    def apply(self, x, coefs, activation):
        body = functools.partial(reference.tile_apply, activation=activation)
        return self._launch(body, [x], coefs, num_sums=0)

    def grad_sums(self, x, dy, coefs, activation):
        body = functools.partial(reference.tile_grad_sums, activation=activation)
        return self._launch(body, [x, dy], coefs, num_sums=2)

    def grad_input(self, x, dy, coefs, activation):
        body = functools.partial(reference.tile_grad_input, activation=activation)
        return self._launch(body, [x, dy], coefs, num_sums=0)


def _is_power_of_two(n):
    return n > 0 and n & (n - 1) == 0


def group_norm_silu(
    x, gamma, beta, *, num_groups, eps=1e-5, scale=None, shift=None, activation=True,
    block_rows=None, block_c=None, interpret=False,
):
    """See `kernels.groupnorm.group_norm_silu`; block_rows, block_c: tile override (powers of two,
    block_c dividing C), default about _TILE_ELEMENTS elements."""
    reference.check_inputs(x, gamma, beta, num_groups=num_groups, scale=scale, shift=shift)
    c = x.shape[-1]
    s = int(np.prod(x.shape[1:-1]))
    if block_c is None:
        block_c = min(c & -c, _MAX_BLOCK_C)
    if block_rows is None:
        block_rows = min(pl.next_power_of_2(s), max(1, _TILE_ELEMENTS // block_c))
    if not (_is_power_of_two(block_rows) and _is_power_of_two(block_c) and c % block_c == 0):
        raise ValueError(
            f"block_rows ({block_rows}) and block_c ({block_c}) must be powers of two, block_c dividing C ({c})"
        )
    return reference.fused_group_norm_silu(
        _TritonPasses(block_rows, block_c, interpret), x, gamma, beta, num_groups=num_groups,
        eps=eps, scale=scale, shift=shift, activation=activation,
    )
