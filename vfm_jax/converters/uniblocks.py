"""UniFormerV2 global-block weights -> `vfm_jax.layers.uniblocks.GlobalUniBlocks` params.

Torch layout (under the tower's `transformer.`, shared by UniFormerV2 and
InternVideo-MM): `temporal_cls_token` (1, 1, D); per block j `dpe.{j}`, a
depthwise Conv3d (D, 1, 3, 3, 3) with bias, and `dec.{j}` (`Extractor`):
`attn.in_proj_weight` (3D, D) packing q; k; v (each head-major),
`attn.in_proj_bias`, `attn.out_proj`, `ln_1`, `ln_2`, `ln_3`, `mlp.c_fc`,
`mlp.c_proj`; then `balance` (D,).
"""
from __future__ import annotations

from vfm_jax.converters.common import KeyTracker, layer_norm, linear


def _extractor(state: KeyTracker, p: str, num_heads: int) -> dict:
    w = state.take(p + "attn.in_proj_weight")
    width = w.shape[1]
    head_dim = width // num_heads
    b = state.take(p + "attn.in_proj_bias").reshape(3, num_heads, head_dim)
    # (3D, D) rows [q; k; v] of (out, in) -> three (in, heads, head_dim) kernels.
    q, k, v = (part.T.reshape(width, num_heads, head_dim) for part in w.reshape(3, width, width))
    return {
        "q_kernel": q, "k_kernel": k, "v_kernel": v, "q_bias": b[0], "k_bias": b[1], "v_bias": b[2],
        "out_kernel": state.take(p + "attn.out_proj.weight").T.reshape(num_heads, head_dim, width),
        "out_bias": state.take(p + "attn.out_proj.bias"),
    }


def global_blocks_params(state: KeyTracker, prefix: str, num_heads: int) -> tuple[dict, int]:
    """`{prefix}{temporal_cls_token, dpe.j, dec.j, balance}` -> (GlobalUniBlocks params, block count).

    `balance` is absent in UniFormerV2's FROZEN models (`fuse=False`); then the params have none.
    """
    count = state.count(prefix + "dec.{}.attn.in_proj_weight")
    if count == 0 or state.count(prefix + "dpe.{}.weight") != count:
        raise ValueError(f"expected as many `{prefix}dpe.j` as `{prefix}dec.j` blocks (at least one)")
    params = {"temporal_cls_token": state.take(prefix + "temporal_cls_token").reshape(-1)}
    if state.has(prefix + "balance"):
        params["balance"] = state.take(prefix + "balance")
    for j in range(count):
        d = f"{prefix}dec.{j}."
        params[f"block_{j}"] = {
            # (D, 1, 3, 3, 3) depthwise -> (3, 3, 3, 1, D).
            "dpe": {"kernel": state.take(f"{prefix}dpe.{j}.weight").transpose(2, 3, 4, 1, 0),
                    "bias": state.take(f"{prefix}dpe.{j}.bias")},
            "attn": _extractor(state, d, num_heads),
            "ln_1": layer_norm(state, d + "ln_1"),
            "ln_2": layer_norm(state, d + "ln_2"),
            "ln_3": layer_norm(state, d + "ln_3"),
            "mlp": {
                "fc1": {"kernel": linear(state.take(d + "mlp.c_fc.weight")), "bias": state.take(d + "mlp.c_fc.bias")},
                "fc2": {"kernel": linear(state.take(d + "mlp.c_proj.weight")), "bias": state.take(d + "mlp.c_proj.bias")},
            },
        }
    return params, count
