"""Schedule, weight-decay mask, AdamW step, layer-wise lr decay and clipping, checked by hand."""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from vfm_jax import optim
from vfm_jax.models import get_model

VIDEO = jnp.zeros((1, 2, 16, 16, 3))


def _cfg(**overrides):
    cfg = dict(
        name="adamw", lr=0.1, min_lr=1e-3, warmup_steps=10, b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=0.0, no_decay="", grad_clip=0.0, layer_decay=1.0,
    )
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


@functools.cache
def _vit(scan_layers=True):
    model = get_model("vit_tiny_video", num_classes=4, scan_layers=scan_layers)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), VIDEO))["params"]
    return model, params


def _random_like(tree, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype), tree)


def _first_update(tx, grads, params):
    return jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(grads, params)


def test_schedule_warmup_then_cosine():
    """0 at step 0, linear warm-up to lr, cosine to min_lr at total_steps (closed form)."""
    lr, min_lr, warmup, total = 0.1, 1e-3, 10, 110
    sched = optim.schedule(_cfg(lr=lr, min_lr=min_lr, warmup_steps=warmup), total)
    assert float(sched(0)) == 0.0
    np.testing.assert_allclose(sched(warmup // 2), lr / 2, rtol=1e-6)
    np.testing.assert_allclose(sched(warmup), lr, rtol=1e-6)
    np.testing.assert_allclose(sched(total), min_lr, rtol=1e-6)
    for frac in (0.25, 0.5, 0.8):
        step = warmup + int(frac * (total - warmup))
        want = min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * frac))
        np.testing.assert_allclose(sched(step), want, rtol=1e-5)
    np.testing.assert_allclose(sched(warmup + (total - warmup) // 2), (lr + min_lr) / 2, rtol=1e-5)


DECAYED = {
    ("patch_embed", "proj", "kernel"),
    ("encoder", "blocks", "attn", "qkv_kernel"),
    ("encoder", "blocks", "attn", "out_kernel"),
    ("encoder", "blocks", "mlp", "fc1", "kernel"),
    ("encoder", "blocks", "mlp", "fc2", "kernel"),
    ("head", "kernel"),
}


def _true_paths(mask):
    return {path for path, on in traverse_util.flatten_dict(mask).items() if on}


def test_decay_mask_kernels_only():
    """Only the kernels of the tiny ViT decay: biases, q/v biases and norm scales do not."""
    _, params = _vit()
    mask = optim.decay_mask(params, "")
    assert set(traverse_util.flatten_dict(mask)) == set(traverse_util.flatten_dict(params))
    assert _true_paths(mask) == DECAYED


def test_decay_mask_regex_excludes_kernels():
    """A no_decay regex matched against the '/'-joined path removes matching kernels."""
    _, params = _vit()
    mask = optim.decay_mask(params, r"^head/|attn/qkv")
    assert _true_paths(mask) == DECAYED - {
        ("head", "kernel"), ("encoder", "blocks", "attn", "qkv_kernel")
    }


def test_adamw_weight_decay_zero_grads():
    """With zero grads the Adam term is 0: a kernel moves by -lr*wd*value, a bias not at all."""
    lr, wd = 0.1, 0.05
    params = {"dense": {"kernel": jnp.asarray([[1.0, -2.0], [3.0, 0.5]]), "bias": jnp.asarray([1.0, -1.0])}}
    tx, _ = optim.make_optimizer(
        _cfg(lr=lr, min_lr=lr, warmup_steps=0, weight_decay=wd, grad_clip=1.0), 100, params
    )
    updates = _first_update(tx, jax.tree.map(jnp.zeros_like, params), params)
    np.testing.assert_allclose(updates["dense"]["kernel"], -lr * wd * params["dense"]["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(updates["dense"]["bias"], np.zeros(2))


def test_adamw_first_step_by_hand():
    """First AdamW step: -lr * (g / (|g| + eps) + wd * p) on kernels, without the wd term on biases."""
    lr, wd, eps = 0.1, 0.05, 1e-3
    _, params = _vit()
    grads = _random_like(params, 1, scale=1e-2)
    tx, _ = optim.make_optimizer(
        _cfg(lr=lr, min_lr=lr, warmup_steps=0, weight_decay=wd, eps=eps), 100, params
    )
    updates = traverse_util.flatten_dict(_first_update(tx, grads, params))
    flat_p, flat_g = traverse_util.flatten_dict(params), traverse_util.flatten_dict(grads)
    for path, u in updates.items():
        g, p = np.asarray(flat_g[path]), np.asarray(flat_p[path])
        want = -lr * (g / (np.abs(g) + eps) + (wd * p if path in DECAYED else 0.0))
        np.testing.assert_allclose(u, want, rtol=1e-5, atol=1e-7, err_msg=str(path))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_layer_decay(scan_layers):
    """decay 0.5, depth 3: block i scaled by 0.5**(3 - i), patch_embed 0.5**4, head and fc_norm by 1."""
    model, params = _vit(scan_layers)
    depth, decay = model.num_layers, 0.5
    assert depth == 3
    grads = _random_like(params, 2)

    def updates(layer_decay):
        tx, _ = optim.make_optimizer(
            _cfg(warmup_steps=0, weight_decay=0.05, grad_clip=1.0, layer_decay=layer_decay), 100, params,
            layer_ids_fn=model.layer_ids, num_layers=model.num_layers,
        )
        return traverse_util.flatten_dict(_first_update(tx, grads, params))

    base, decayed = updates(1.0), updates(decay)
    checked = set()
    for path, u in decayed.items():
        u, b = np.asarray(u), np.asarray(base[path])
        top = path[0]
        if top == "encoder" and scan_layers:
            assert path[1] == "blocks"
            for i in range(depth):
                np.testing.assert_allclose(u[i], decay ** (depth - i) * b[i], rtol=1e-6, err_msg=str(path))
        elif top == "encoder":
            i = int(path[1].removeprefix("blocks_"))
            np.testing.assert_allclose(u, decay ** (depth - i) * b, rtol=1e-6, err_msg=str(path))
        elif top == "patch_embed":
            np.testing.assert_allclose(u, decay ** (depth + 1) * b, rtol=1e-6, err_msg=str(path))
        else:
            assert top in ("head", "fc_norm")
            np.testing.assert_allclose(u, b, rtol=1e-6, err_msg=str(path))
        checked.add(top if top != "encoder" else path[1])
    want_tops = {"patch_embed", "head", "fc_norm"}
    want_tops |= {"blocks"} if scan_layers else {f"blocks_{i}" for i in range(depth)}
    assert checked == want_tops


def test_layer_decay_needs_layer_ids():
    """layer_decay != 1 without a layer_ids_fn, or an optimizer other than adamw, is a ValueError."""
    params = {"kernel": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match="layer_ids"):
        optim.make_optimizer(_cfg(layer_decay=0.75), 100, params)
    with pytest.raises(ValueError, match="sgd"):
        optim.make_optimizer(_cfg(name="sgd"), 100, params)


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_grad_clip_two_steps_by_hand(grad_clip):
    """Two AdamW steps match a hand-written Adam fed the globally clipped grads.

    Adam is invariant to one global scale of all grads, so clipping is only
    visible when it scales steps differently: step 1 has global norm 50
    (clipped to 1), step 2 norm 0.5 (untouched). Run with and without
    clipping, so the hand formula must pick the right grads to agree.
    """
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    rng = np.random.default_rng(3)
    params = {"a": {"bias": jnp.zeros(3)}, "b": {"bias": jnp.zeros((2, 2))}}

    def with_norm(norm):
        g = {k: {"bias": rng.standard_normal(v["bias"].shape)} for k, v in params.items()}
        total = math.sqrt(sum(float(np.sum(x ** 2)) for x in jax.tree.leaves(g)))
        return jax.tree.map(lambda x: norm / total * x, g)

    steps = [with_norm(50.0), with_norm(0.5)]
    tx, _ = optim.make_optimizer(
        _cfg(lr=lr, min_lr=lr, warmup_steps=0, b1=b1, b2=b2, eps=eps, grad_clip=grad_clip), 100, params
    )
    state = tx.init(params)
    for g in steps:
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, params)

    def clipped(g):
        total = math.sqrt(sum(float(np.sum(x ** 2)) for x in jax.tree.leaves(g)))
        factor = min(1.0, grad_clip / total) if grad_clip > 0 else 1.0
        return jax.tree.map(lambda x: factor * x, g)

    g1, g2 = clipped(steps[0]), clipped(steps[1])
    for key in params:
        x1, x2 = g1[key]["bias"], g2[key]["bias"]
        m = b1 * (1 - b1) * x1 + (1 - b1) * x2
        v = b2 * (1 - b2) * x1 ** 2 + (1 - b2) * x2 ** 2
        want = -lr * (m / (1 - b1 ** 2)) / (np.sqrt(v / (1 - b2 ** 2)) + eps)
        np.testing.assert_allclose(updates[key]["bias"], want, rtol=1e-4, err_msg=key)
