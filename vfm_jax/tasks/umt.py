"""UMT stage-1 objective: align the student's visible tokens with the CLIP teacher's.

L_UTA = mean over layers, samples and visible tokens of 2 - 2 <s, t> for
L2-normalised s and t, i.e. ||s - t||^2 (unmasked_teacher
`engine_for_pretraining_umt.py`, `clip_loss_type='l2'`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from data.masking import gather_visible


def teacher_targets(teacher_features: jax.Array, mask: jax.Array, num_visible: int | None = None) -> jax.Array:
    """(K, B, L, C) teacher features at every token, (B, L) mask (True = masked) -> (K, B, N_vis, C).

    The visible positions in position order, as the student sees them.
    """
    return jax.vmap(lambda f: gather_visible(f, mask, num_visible))(teacher_features)


def alignment_loss(student_features: jax.Array, teacher_features: jax.Array) -> jax.Array:
    """Scalar mean(2 - 2 * sum(s * t, -1)) in fp32 over (K, B, N_vis, C) features."""
    s = student_features.astype(jnp.float32)
    t = jax.lax.stop_gradient(teacher_features).astype(jnp.float32)
    return jnp.mean(2.0 - 2.0 * jnp.sum(s * t, axis=-1))
