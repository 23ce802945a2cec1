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

Full models (`convert_clip`): OpenAI's `CLIP.state_dict()` and OpenCLIP's
standard ViT `CLIP` share one layout: the visual tower under `visual.`, the
text tower's keys at the top level, and `logit_scale` (0-d in OpenAI's
files, (1,) in OpenCLIP's `nonscalar_logit_scale` models). OpenAI's
TorchScript files also hold `input_resolution`, `context_length` and
`vocab_size` as one-element tensors. OpenAI's files store float16 weights.
"""
from __future__ import annotations

from typing import Any, Mapping

from vfm_jax.converters.common import KeyTracker, layer_norm, linear, stack_layers
from vfm_jax.layers.mlp import ACTIVATIONS


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


def encoder_params(state: KeyTracker, num_heads: int, scan_layers: bool) -> tuple[dict, int, float]:
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
    encoder, depth, mlp_ratio = encoder_params(state, num_heads, scan_layers)
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


def text_params(
    state: KeyTracker, *, num_heads: int | None, scan_layers: bool, context_length: int | None = None
) -> tuple[dict, dict]:
    """The CLIPText keys of `state` -> (params, sizes), without `finish()`.

    Vocabulary, context length, width, depth and output size come from the
    shapes; `num_heads` defaults to width / 64 (8 for the 512-wide B towers,
    12 for the 768-wide L towers). `context_length` keeps the first rows of
    the position table, as ViCLIP's loader cuts CLIP's 77 to 32.
    """
    table = state.take("token_embedding.weight")
    vocab_size, width = table.shape
    num_heads = num_heads or width // 64
    pos = state.take("positional_embedding")
    if pos.ndim != 2 or pos.shape[1] != width:
        raise ValueError(f"positional_embedding {pos.shape} is not (context, {width})")
    if context_length is not None:
        if not 0 < context_length <= pos.shape[0]:
            raise ValueError(f"context_length={context_length} must be in [1, {pos.shape[0]}] (the position table)")
        pos = pos[:context_length]
    encoder, depth, mlp_ratio = encoder_params(state, num_heads, scan_layers)
    proj = state.take("text_projection")
    params = {
        "token_embedding": {"embedding": table},
        "positional_embedding": pos,
        "encoder": encoder,
        "ln_final": layer_norm(state, "ln_final"),
        "text_projection": proj,
    }
    sizes = dict(
        vocab_size=int(vocab_size), width=int(width), depth=depth, num_heads=int(num_heads),
        context_length=int(pos.shape[0]), output_dim=int(proj.shape[1]), mlp_ratio=mlp_ratio,
    )
    return params, sizes


def convert_clip_text(
    torch_state: Mapping[str, Any], *, num_heads: int | None = None, scan_layers: bool = True, prefix: str = "",
    context_length: int | None = None,
) -> tuple[dict, dict]:
    """A CLIP text tower -> (spec of `clip_text`, {'params': ...}); see `text_params`.

    Every key of `torch_state` must start with `prefix` (e.g. ViCLIP's
    `text_encoder.`).
    """
    state = KeyTracker(torch_state, prefix=prefix)
    params, sizes = text_params(state, num_heads=num_heads, scan_layers=scan_layers, context_length=context_length)
    state.finish()
    return dict(arch="clip_text", **sizes, scan_layers=scan_layers), {"params": params}


def _check_layout(torch_state: Mapping[str, Any]):
    """Fail on the OpenCLIP layouts `convert_clip` does not map, naming their keys."""
    def named(keys):
        return ", ".join(keys[:5]) + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "")

    custom_text = sorted(k for k in torch_state if k.startswith("text."))
    if custom_text:
        raise ValueError(
            f"a custom text tower ({named(custom_text)}): OpenCLIP's CustomTextCLIP (HF or SigLIP-style text "
            "towers) is not supported, only the OpenAI layout (`token_embedding.weight`, `transformer.resblocks.*`)"
        )
    if "visual.class_embedding" not in torch_state:
        visual = sorted(k for k in torch_state if k.startswith("visual."))
        raise ValueError(
            f"the visual tower is not a CLIP ViT (no `visual.class_embedding`; it has {named(visual) or 'no keys'}): "
            "ModifiedResNet (`visual.layer1.*`) and timm (`visual.trunk.*`) towers are not supported"
        )
    if "logit_bias" in torch_state:
        raise ValueError("`logit_bias`: a sigmoid-loss (SigLIP-style) model; only softmax CLIP models are supported")


def convert_clip(
    torch_state: Mapping[str, Any], *, num_heads: int | None = None, text_num_heads: int | None = None,
    scan_layers: bool = True, activation: str = "quick_gelu", context_length: int | None = None,
) -> tuple[dict, dict]:
    """An OpenAI or OpenCLIP ViT CLIP state dict -> (spec of `clip`, {'params': ...}).

    Sizes come from the shapes; head counts default to width / 64
    (`num_heads` for the image tower, `text_num_heads` for the text tower),
    as in every OpenAI and OpenCLIP ViT. The MLP activation is not in the
    weights: `quick_gelu` for OpenAI, DFN and MetaCLIP weights, `gelu` for
    OpenCLIP's LAION and DataComp ones. `context_length` cuts the text
    position table (see `text_params`).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not one of {sorted(ACTIVATIONS)}")
    _check_layout(torch_state)
    state = KeyTracker(torch_state)
    vision, sizes = visual_params(state.scoped("visual."), num_heads=num_heads, scan_layers=scan_layers)
    text, text_sizes = text_params(
        state, num_heads=text_num_heads, scan_layers=scan_layers, context_length=context_length
    )
    logit_scale = state.take("logit_scale")
    if logit_scale.size != 1:
        raise ValueError(f"logit_scale {logit_scale.shape} is not a scalar")
    # The sizes OpenAI's TorchScript files record, checked against the shapes.
    shapes = {
        "input_resolution": sizes["image_size"],
        "context_length": torch_state["positional_embedding"].shape[0],
        "vocab_size": text_sizes["vocab_size"],
    }
    for key, value in shapes.items():
        recorded = int(state.take(key).item()) if state.has(key) else value
        if recorded != value:
            raise ValueError(f"the checkpoint's {key}={recorded} disagrees with its weights' {value}")
    state.finish()
    embed_dim, text_dim = sizes.pop("output_dim"), text_sizes.pop("output_dim")
    if text_dim != embed_dim:
        raise ValueError(f"text_projection gives {text_dim} features, visual.proj {embed_dim}")
    spec = dict(
        arch="clip", embed_dim=embed_dim, activation=activation, vision=sizes, text=text_sizes,
        scan_layers=scan_layers,
    )
    params = {"vision_encoder": vision, "text_encoder": text, "logit_scale": logit_scale.reshape(())}
    return spec, {"params": params}
