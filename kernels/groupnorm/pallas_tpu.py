"""GroupNorm(+scale/shift)+SiLU as Mosaic Pallas kernels (TPU).

The same two passes each way as `pallas_gpu` (moments, then the folded
normalise+SiLU; grad sums, then dx), with the tile math shared through
`reference`. A tile is `block_rows` spatial positions x all C channels of one
sample (Mosaic accepts a full last dim of any size), so each program reads one
contiguous slab. Rows past S in the last tile hold garbage on load and are
dropped on store; the reductions mask them. Every grid step writes its own
output block, so both grid axes are parallel (split over megacore TensorCores).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels.groupnorm import reference

# Elements per tile: 256 KiB per bf16 buffer. The fattest pass (x, dy in and dx out, double
# buffered, plus fp32 temporaries) then stays far inside v5e's 16 MiB default scoped VMEM.
_TILE_ELEMENTS = 1 << 17


@dataclasses.dataclass(frozen=True)
class _MosaicPasses:
    block_rows: int
    interpret: bool

    def _launch(self, body, tiled, coefs, *, num_sums):
        """Runs `body` over a (sample, row tile) grid.

        num_sums == 0: body(*tiles, *coefs) is a tile, written like tiled[0]; else body(valid,
        *tiles, *coefs) returns num_sums per-channel tile sums, each (1, C), stored as (B, T, C) fp32.
        """
        b, s, c = tiled[0].shape
        rows = self.block_rows
        grid = (b, pl.cdiv(s, rows))
        tile_spec = pl.BlockSpec((None, rows, c), lambda i, t: (i, t, 0))
        coef_spec = pl.BlockSpec((None, 1, c), lambda i, t: (i, 0, 0))
        if num_sums:
            out_shape = [reference.like(tiled[0], (b, grid[1], 1, c), jnp.float32)] * num_sums
            out_specs = [pl.BlockSpec((None, None, 1, c), lambda i, t: (i, t, 0, 0))] * num_sums
        else:
            out_shape, out_specs = reference.like(tiled[0], tiled[0].shape, tiled[0].dtype), tile_spec

        def kernel(*refs):
            tile_refs, coef_refs = refs[: len(tiled)], refs[len(tiled) : len(tiled) + len(coefs)]
            out_refs = refs[len(tiled) + len(coefs) :]
            tiles = [ref[...] for ref in tile_refs]
            coef_vals = [ref[...] for ref in coef_refs]
            if num_sums:
                row = pl.program_id(1) * rows + jax.lax.broadcasted_iota(jnp.int32, (rows, c), 0)
                for ref, value in zip(out_refs, body(row < s, *tiles, *coef_vals)):
                    ref[...] = value
            else:
                out_refs[0][...] = body(*tiles, *coef_vals).astype(out_refs[0].dtype)

        outs = pl.pallas_call(
            kernel,
            grid=grid,
            in_specs=[tile_spec] * len(tiled) + [coef_spec] * len(coefs),
            out_specs=out_specs,
            out_shape=out_shape,
            compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
            interpret=self.interpret,
        )(*tiled, *(v[:, None, :] for v in coefs))
        return [o[:, :, 0, :] for o in outs] if num_sums else outs

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


def _sublanes(dtype):
    """Rows of one native Mosaic tile: 8 for 32-bit, 16 for 16-bit, 32 for 8-bit types."""
    return 8 * 4 // jnp.dtype(dtype).itemsize


def group_norm_silu(
    x, gamma, beta, *, num_groups, eps=1e-5, scale=None, shift=None, activation=True,
    block_rows=None, interpret=False,
):
    """See `kernels.groupnorm.group_norm_silu`; block_rows: tile override (a multiple of the dtype's
    sublane tile, 8 rows for fp32 and 16 for bf16, or >= S), default about _TILE_ELEMENTS elements."""
    reference.check_inputs(x, gamma, beta, num_groups=num_groups, scale=scale, shift=shift)
    c = x.shape[-1]
    s = int(np.prod(x.shape[1:-1]))
    align = _sublanes(x.dtype)
    if block_rows is None:
        block_rows = max(align, pl.next_power_of_2(_TILE_ELEMENTS // c + 1) // 2)
    if block_rows >= s:
        block_rows = s
    elif block_rows % align:
        raise ValueError(f"block_rows ({block_rows}) must be a multiple of {align} for {x.dtype} or >= S ({s})")
    return reference.fused_group_norm_silu(
        _MosaicPasses(block_rows, interpret), x, gamma, beta, num_groups=num_groups, eps=eps,
        scale=scale, shift=shift, activation=activation,
    )
