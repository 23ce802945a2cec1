"""The one GroupNorm(+scale/shift)+SiLU entry point of the video-diffusion U-Net ResBlocks.

`group_norm_silu(x, gamma, beta, num_groups=..., scale=..., shift=..., impl=...)`
takes channels-last x (B, *spatial, C) and, with per-(sample, group) statistics
in fp32, computes silu((x_hat * gamma + beta) * (1 + scale) + shift), the
norm of a diffusers ResnetBlock2D with time_embedding_norm='scale_shift'.
Unfused, XLA reads and writes the activation several times; the kernels read
x twice forward (statistics, then normalise) and x, dy twice backward.
Implementations:

- ``xla``: the reference in `kernels.groupnorm.reference`, runs everywhere.
- ``pallas``: the two-pass kernels of this package, Triton-style on GPU
  (`pallas_gpu`), Mosaic on TPU (`pallas_tpu`); on CPU the GPU kernel runs in
  Pallas interpret mode (slow; for tests).
- ``auto``: Pallas on GPU and TPU, XLA on CPU.
"""
from __future__ import annotations

import jax

from kernels.groupnorm.reference import check_inputs, group_norm_silu_reference

IMPLEMENTATIONS = ("auto", "xla", "pallas")


def group_norm_silu(
    x: jax.Array,
    gamma: jax.Array,
    beta: jax.Array,
    *,
    num_groups: int,
    eps: float = 1e-5,
    scale: jax.Array | None = None,
    shift: jax.Array | None = None,
    activation: bool = True,
    impl: str = "auto",
) -> jax.Array:
    """GroupNorm, affine, optional per-sample modulation, optional SiLU.

    Args:
      x: (B, *spatial, C) channels-last, e.g. (B, H, W, C) or (B, T, H, W, C).
      gamma, beta: (C,) affine parameters.
      num_groups: groups of C / num_groups channels; C must be divisible by it.
      eps: added to the biased group variance.
      scale, shift: optional (B, C) modulation, y * (1 + scale) + shift.
      activation: apply SiLU last.
      impl: one of IMPLEMENTATIONS.

    Returns:
      x's shape and dtype. Differentiable in x, gamma, beta, scale and shift.
    """
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"group norm impl {impl!r} is not one of {IMPLEMENTATIONS}")
    check_inputs(x, gamma, beta, num_groups=num_groups, scale=scale, shift=shift)
    backend = jax.default_backend()
    if impl == "auto":
        impl = "pallas" if backend in ("gpu", "tpu") else "xla"
    if impl == "pallas":
        if backend == "tpu":
            from kernels.groupnorm import pallas_tpu as kernel
        else:
            from kernels.groupnorm import pallas_gpu as kernel
        return kernel.group_norm_silu(
            x, gamma, beta, num_groups=num_groups, eps=eps, scale=scale, shift=shift,
            activation=activation, interpret=backend == "cpu",
        )
    return group_norm_silu_reference(
        x, gamma, beta, num_groups=num_groups, eps=eps, scale=scale, shift=shift,
        activation=activation,
    )
