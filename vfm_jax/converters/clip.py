"""OpenAI CLIP visual tower weights -> `vfm_jax.models.clip.CLIPVision` params.

Torch layout (OpenAI `model.visual` without the `visual.` prefix, as UMT's
`extract_clip` writes it): `conv1.weight` (D, 3, p, p), or (D, 3, 1, p, p)
in UMT's frame-wise Conv3d; `class_embedding` (D,); `positional_embedding`
(grid^2 + 1, D); `ln_pre`; per block `transformer.resblocks.{i}.` with
`attn.in_proj_weight` (3D, D) / `attn.in_proj_bias` (3D,) packing q; k; v
(each head-major), `attn.out_proj`, `ln_1`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`;
then `ln_post` and `proj` (D, out), used as `x @ proj`.

Text tower (OpenAI `CLIP` text keys, or ViCLIP's `text_encoder.*` without the
prefix): `token_embedding.weight` (vocab, D), `positional_embedding`
(context, D), the same `transformer.resblocks.{i}.*` blocks, `ln_final`, and
`text_projection` (D, out), used as `x @ text_projection`.
"""
from __future__ import annotations

from typing import Any, Mapping

from vfm_jax.converters.common import KeyTracker, layer_norm, linear, stack_layers


def _block(state: KeyTracker, i: int, num_heads: int) -> dict:
    p = f"transformer.resblocks.{i}."
    w = state.take(p + "attn.in_proj_weight")  # (3D, D) = [q; k; v] x in
    width = w.shape[1]
    head_dim = width // num_heads
    b = state.take(p + "attn.in_proj_bias").reshape(3, num_heads, head_dim)
    out = state.take(p + "attn.out_proj.weight")  # (out, in)
    return {
        "norm1": layer_norm(state, p + "ln_1"),
        "norm2": layer_norm(state, p + "ln_2"),
        "attn": {
            "qkv_kernel": w.reshape(3, num_heads, head_dim, width).transpose(3, 0, 1, 2),
            "q_bias": b[0],
            "k_bias": b[1],
            "v_bias": b[2],
            "out_kernel": out.T.reshape(num_heads, head_dim, width),
            "out_bias": state.take(p + "attn.out_proj.bias"),
        },
        "mlp": {
            "fc1": {"kernel": linear(state.take(p + "mlp.c_fc.weight")), "bias": state.take(p + "mlp.c_fc.bias")},
            "fc2": {"kernel": linear(state.take(p + "mlp.c_proj.weight")), "bias": state.take(p + "mlp.c_proj.bias")},
        },
    }


def _encoder(state: KeyTracker, num_heads: int, scan_layers: bool) -> tuple[dict, int, float]:
    """`transformer.resblocks.*` -> (Encoder params, depth, mlp_ratio)."""
    depth = state.count("transformer.resblocks.{}.attn.in_proj_weight")
    if depth == 0:
        raise ValueError("no `transformer.resblocks.N.attn.in_proj_weight` keys: not a CLIP tower state dict")
    blocks = [_block(state, i, num_heads) for i in range(depth)]
    params = {"blocks": stack_layers(blocks)} if scan_layers else {f"blocks_{i}": b for i, b in enumerate(blocks)}
    fc1 = blocks[0]["mlp"]["fc1"]["kernel"]
    return params, depth, fc1.shape[1] / fc1.shape[0]


def visual_params(state: KeyTracker, *, num_heads: int | None, scan_layers: bool) -> tuple[dict, dict]:
    """The CLIPVision keys of `state` -> (params, sizes), without `finish()`.

    Shared with towers that add keys of their own (ViCLIP's temporal table).
    Sizes come from the shapes (image size = grid * patch from the position
    table); `num_heads` defaults to width / 64, as in every OpenAI ViT.
    """
    conv = state.take("conv1.weight")
    if conv.ndim == 5:
        if conv.shape[2] != 1:
            raise ValueError(f"conv1.weight {conv.shape} has temporal kernel {conv.shape[2]}, not a frame-wise tower")
        conv = conv[:, :, 0]
    width, _, patch, _ = conv.shape
    num_heads = num_heads or width // 64
    pos = state.take("positional_embedding")
    grid = round((pos.shape[0] - 1) ** 0.5)
    if grid * grid + 1 != pos.shape[0]:
        raise ValueError(f"positional_embedding {pos.shape} is not (grid^2 + 1, D)")
    encoder, depth, mlp_ratio = _encoder(state, num_heads, scan_layers)
    proj = state.take("proj")
    params = {
        "conv1": {"kernel": conv.transpose(2, 3, 1, 0)},
        "class_embedding": state.take("class_embedding"),
        "positional_embedding": pos,
        "ln_pre": layer_norm(state, "ln_pre"),
        "encoder": encoder,
        "ln_post": layer_norm(state, "ln_post"),
        "proj": proj,
    }
    sizes = dict(
        width=int(width), depth=depth, num_heads=int(num_heads), patch_size=int(patch),
        image_size=int(grid * patch), output_dim=int(proj.shape[1]), mlp_ratio=mlp_ratio,
    )
    return params, sizes


def convert_clip_visual(
    torch_state: Mapping[str, Any], *, num_heads: int | None = None, scan_layers: bool = True
) -> tuple[dict, dict]:
    """A CLIP visual tower -> (model spec for `build_model`, {'params': ...})."""
    state = KeyTracker(torch_state)
    params, sizes = visual_params(state, num_heads=num_heads, scan_layers=scan_layers)
    state.finish()
    return dict(arch="clip_vision", **sizes, scan_layers=scan_layers), {"params": params}


def convert_clip_text(
    torch_state: Mapping[str, Any], *, num_heads: int | None = None, scan_layers: bool = True, prefix: str = ""
) -> tuple[dict, dict]:
    """A CLIP text tower -> (spec of `clip_text`, {'params': ...}).

    Every key of `torch_state` must start with `prefix` (e.g. ViCLIP's
    `text_encoder.`). Vocabulary, context length, width, depth and output
    size come from the shapes; `num_heads` defaults to width / 64 (8 for the
    512-wide B towers, 12 for the 768-wide L towers).
    """
    state = KeyTracker(torch_state, prefix=prefix)
    table = state.take("token_embedding.weight")
    vocab_size, width = table.shape
    num_heads = num_heads or width // 64
    pos = state.take("positional_embedding")
    if pos.ndim != 2 or pos.shape[1] != width:
        raise ValueError(f"positional_embedding {pos.shape} is not (context, {width})")
    encoder, depth, mlp_ratio = _encoder(state, num_heads, scan_layers)
    proj = state.take("text_projection")
    params = {
        "token_embedding": {"embedding": table},
        "positional_embedding": pos,
        "encoder": encoder,
        "ln_final": layer_norm(state, "ln_final"),
        "text_projection": proj,
    }
    state.finish()
    spec = dict(
        arch="clip_text", vocab_size=int(vocab_size), width=int(width), depth=depth, num_heads=int(num_heads),
        context_length=int(pos.shape[0]), output_dim=int(proj.shape[1]), mlp_ratio=mlp_ratio,
        scan_layers=scan_layers,
    )
    return spec, {"params": params}
