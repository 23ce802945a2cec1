"""Optimizer and learning-rate schedule from `config.optim`.

AdamW with linear warm-up then cosine decay, weight decay on kernels only
(biases, norms, embeddings-like vectors excluded), optional global-norm
clipping, and layer-wise lr decay (`layer_decay` < 1) for models that say
which layer each param belongs to (`model.layer_ids`).
"""
from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util


def schedule(cfg, total_steps: int) -> optax.Schedule:
    """0 -> lr over `warmup_steps`, then cosine down to `min_lr` at `total_steps`."""
    warmup = min(cfg.warmup_steps, total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.min_lr,
    )


def decay_mask(params, no_decay: str) -> Any:
    """True where weight decay applies: leaves named `*kernel` not matching the `no_decay` regex."""
    pattern = re.compile(no_decay) if no_decay else None

    def decays(path, _):
        name = "/".join(path)
        return path[-1].endswith("kernel") and not (pattern and pattern.search(name))

    return traverse_util.path_aware_map(decays, params)


def scale_by_layer(layer_ids, num_layers: int, decay: float) -> optax.GradientTransformation:
    """Multiply each update by decay**(num_layers + 1 - layer_id) (BEiT/VideoMAE layer decay).

    A layer id may be a vector over a scanned `layers` axis; it broadcasts over
    the leading dimension of the stacked param.
    """
    scales = jax.tree.map(lambda i: jnp.asarray(decay ** (num_layers + 1 - i), jnp.float32), layer_ids)

    def update(updates, state, params=None):
        del params

        def scale(u, s):
            return u * s.reshape(s.shape + (1,) * (u.ndim - s.ndim)).astype(u.dtype)

        return jax.tree.map(scale, updates, scales), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(
    cfg, total_steps: int, params, layer_ids_fn: Callable[[Any], Any] | None = None,
    num_layers: int | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    if cfg.name != "adamw":
        raise ValueError(f"optim.name={cfg.name!r}: only 'adamw' is available")
    lr = schedule(cfg, total_steps)
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(
        optax.adamw(
            lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
            mask=decay_mask(params, cfg.no_decay),
        )
    )
    if cfg.layer_decay != 1.0:
        if layer_ids_fn is None:
            raise ValueError("optim.layer_decay != 1 but this model defines no layer_ids")
        parts.append(scale_by_layer(layer_ids_fn(params), num_layers, cfg.layer_decay))
    return optax.chain(*parts), lr
