"""UMT / VideoMAE video ViT weights -> `vfm_jax.models.vit.VideoViT` / `umt.UMTStudent` params.

Torch layouts (unmasked_teacher `modeling_finetune.py` / `modeling_pretrain_umt.py`):
`patch_embed.proj.weight` (D, C, t, p, p); per block `attn.qkv.weight` (3D, D)
without bias plus `attn.q_bias`, `attn.v_bias` (the k bias is zero);
`attn.proj`, `norm1`, `norm2`, `mlp.fc1`, `mlp.fc2`; then `fc_norm` and `head`
for classifiers. `pos_embed` (1, L, D) is present only when the token count
differs from pre-training (the official code then stores the interpolated
sinusoid); otherwise the fixed table is regenerated. Stage-1 (pre-training)
checkpoints prefix the ViT with `encoder.` (with a final `encoder.norm`, no
`fc_norm`/`head`) and add `clip_decoder.{k}.{head, norm}`.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from vfm_jax.converters.bert import convert_bert
from vfm_jax.converters.clip import convert_clip_visual
from vfm_jax.converters.common import KeyTracker, layer_norm, linear, stack_layers

# Heads of the released widths whose head size is not 64 (ViT-H / g: 16 heads of 80 / 88 / 104).
HEADS_BY_WIDTH = {1280: 16, 1408: 16, 1664: 16}


def default_num_heads(width: int) -> int:
    """Head count of a released video ViT of this width (not visible in the weight shapes)."""
    return HEADS_BY_WIDTH.get(width, width // 64)


def _block(state: KeyTracker, i: int, num_heads: int, prefix: str = "") -> dict:
    p = f"{prefix}blocks.{i}."
    qkv = state.take(p + "attn.qkv.weight")  # (3D, D): rows are [q; k; v], each head-major
    width = qkv.shape[1]
    head_dim = width // num_heads
    out = state.take(p + "attn.proj.weight")  # (D, D) = (out, in)
    return {
        "norm1": layer_norm(state, p + "norm1"),
        "norm2": layer_norm(state, p + "norm2"),
        "attn": {
            "qkv_kernel": qkv.reshape(3, num_heads, head_dim, width).transpose(3, 0, 1, 2),
            "q_bias": state.take(p + "attn.q_bias").reshape(num_heads, head_dim),
            "v_bias": state.take(p + "attn.v_bias").reshape(num_heads, head_dim),
            "out_kernel": out.T.reshape(num_heads, head_dim, width),
            "out_bias": state.take(p + "attn.proj.bias"),
        },
        "mlp": {
            "fc1": {"kernel": linear(state.take(p + "mlp.fc1.weight")), "bias": state.take(p + "mlp.fc1.bias")},
            "fc2": {"kernel": linear(state.take(p + "mlp.fc2.weight")), "bias": state.take(p + "mlp.fc2.bias")},
        },
    }


def convert_classifier(
    torch_state: Mapping[str, Any], *, num_heads: int | None = None, scan_layers: bool = True
) -> tuple[dict, dict]:
    """A fine-tuned UMT/VideoMAE classifier -> (model spec for `build_model`, {'params': ...}).

    Sizes come from the tensor shapes; `num_heads` (not visible in shapes)
    defaults to `default_num_heads(width)` (64-wide heads; 16 for ViT-H and wider).
    """
    state = KeyTracker(torch_state)
    conv = state.take("patch_embed.proj.weight")  # (D, C, t, p, p)
    width, _, tubelet, patch, _ = conv.shape
    num_heads = num_heads or default_num_heads(width)
    depth = state.count("blocks.{}.attn.qkv.weight")
    if depth == 0:
        raise ValueError("no `blocks.N.attn.qkv.weight` keys: not a UMT/VideoMAE ViT state dict")
    blocks = [_block(state, i, num_heads) for i in range(depth)]
    head = state.take("head.weight")
    params: dict[str, Any] = {
        "patch_embed": {"proj": {"kernel": conv.transpose(2, 3, 4, 1, 0), "bias": state.take("patch_embed.proj.bias")}},
        "fc_norm": layer_norm(state, "fc_norm"),
        "head": {"kernel": linear(head), "bias": state.take("head.bias")},
    }
    learned_pos = state.has("pos_embed")
    if learned_pos:
        params["pos_embed"] = state.take("pos_embed")[0]
    if scan_layers:
        params["encoder"] = {"blocks": stack_layers(blocks)}
    else:
        params["encoder"] = {f"blocks_{i}": b for i, b in enumerate(blocks)}
    state.finish()
    spec = dict(
        arch="video_vit", num_classes=int(head.shape[0]), width=int(width), depth=depth,
        num_heads=int(num_heads), mlp_ratio=blocks[0]["mlp"]["fc1"]["kernel"].shape[1] / width,
        patch_size=int(patch), tubelet_size=int(tubelet), qkv_bias="qv",
        pos_embedding="learned" if learned_pos else "sinusoid", scan_layers=scan_layers,
    )
    return spec, {"params": params}


def convert_pretrain(
    torch_state: Mapping[str, Any],
    *,
    num_heads: int | None = None,
    clip_return_interval: int = 1,
    scan_layers: bool = True,
) -> tuple[dict, dict]:
    """A UMT stage-1 student -> (model spec for `build_model`, {'params': ...}).

    The number of aligned layers is the number of `clip_decoder.{k}` heads
    (none in the vision encoder of a retrieval fine-tuned stage-2 model);
    `clip_return_interval` (the spacing of those layers, the official
    `clip_student_return_interval`) and `num_heads` (default_num_heads) are
    not visible in the shapes.
    """
    state = KeyTracker(torch_state)
    conv = state.take("encoder.patch_embed.proj.weight")  # (D, C, t, p, p)
    width, _, tubelet, patch, _ = conv.shape
    num_heads = num_heads or default_num_heads(width)
    depth = state.count("encoder.blocks.{}.attn.qkv.weight")
    num_decoders = state.count("clip_decoder.{}.head.weight")
    if depth == 0:
        raise ValueError("no `encoder.blocks.N.attn.qkv.weight` keys: not a UMT student state dict")
    blocks = [_block(state, i, num_heads, prefix="encoder.") for i in range(depth)]
    params: dict[str, Any] = {
        "patch_embed": {"proj": {
            "kernel": conv.transpose(2, 3, 4, 1, 0), "bias": state.take("encoder.patch_embed.proj.bias"),
        }},
        "norm": layer_norm(state, "encoder.norm"),
        "encoder": (
            {"blocks": stack_layers(blocks)} if scan_layers else {f"blocks_{i}": b for i, b in enumerate(blocks)}
        ),
    }
    for k in range(num_decoders):
        head = state.take(f"clip_decoder.{k}.head.weight")  # (out, D)
        if head.shape[1] != width:
            raise ValueError(f"clip_decoder.{k}.head takes {head.shape[1]} features, the encoder gives {width}")
        params[f"clip_decoder_{k}"] = {
            "head": {"kernel": linear(head), "bias": state.take(f"clip_decoder.{k}.head.bias")},
            "norm": layer_norm(state, f"clip_decoder.{k}.norm"),
        }
    state.finish()
    spec = dict(
        arch="umt_student", width=int(width), depth=depth, num_heads=int(num_heads),
        mlp_ratio=blocks[0]["mlp"]["fc1"]["kernel"].shape[1] / width, patch_size=int(patch),
        tubelet_size=int(tubelet), clip_return_layers=num_decoders, clip_return_interval=clip_return_interval,
        scan_layers=scan_layers,
    )
    if num_decoders:
        spec["clip_output_dim"] = int(params["clip_decoder_0"]["head"]["kernel"].shape[1])
    return spec, {"params": params}


def _strip(torch_state: Mapping[str, Any], prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in torch_state.items() if k.startswith(prefix)}


def convert_video_text(
    torch_state: Mapping[str, Any], *, num_heads: int | None = None, scan_layers: bool = True,
    text_num_heads: int | None = None, teacher_num_heads: int | None = None,
) -> tuple[dict, dict]:
    """A UMT stage-2 (multi-modality) model -> (spec of `umt_video_text`, variables).

    Keys: `vision_encoder.{encoder, clip_decoder}.*` (the stage-1 layout;
    retrieval fine-tuned files have no `clip_decoder`), `vision_encoder.pool_norm`,
    `text_encoder.{bert, cls.predictions}.*`, `vision_proj`, `text_proj`,
    `itm_head`, `temp`, and, in pre-trained files, the CLIP teacher
    `clip_teacher.*`, which becomes the `teacher` collection. Head counts
    (student, text, teacher) default to width / 64, as in every release.
    """
    vision_state = _strip(torch_state, "vision_encoder.")
    pool_norm = {k: vision_state.pop(f"pool_norm.{k}", None) for k in ("weight", "bias")}
    if not vision_state or any(v is None for v in pool_norm.values()):
        raise ValueError("no `vision_encoder.*` / `vision_encoder.pool_norm` keys: not a UMT stage-2 state dict")
    vision_spec, vision = convert_pretrain(vision_state, num_heads=num_heads, scan_layers=scan_layers)
    rest = KeyTracker({k: v for k, v in torch_state.items() if not k.startswith(("vision_encoder.", "clip_teacher."))})
    text, text_spec = convert_bert(rest, prefix="text_encoder.", num_heads=text_num_heads, scan_layers=scan_layers)
    proj = rest.take("vision_proj.weight")
    params = {
        "vision_encoder": vision["params"],
        "pool_norm": {"scale": np.asarray(pool_norm["weight"], np.float32),
                      "bias": np.asarray(pool_norm["bias"], np.float32)},
        "text_encoder": text,
        "vision_proj": {"kernel": linear(proj), "bias": rest.take("vision_proj.bias")},
        "text_proj": {"kernel": linear(rest.take("text_proj.weight")), "bias": rest.take("text_proj.bias")},
        "itm_head": {"kernel": linear(rest.take("itm_head.weight")), "bias": rest.take("itm_head.bias")},
        "temp": rest.take("temp").reshape(()),
    }
    rest.finish()
    variables = {"params": params}
    teacher_state = _strip(torch_state, "clip_teacher.")
    if teacher_state:
        _, teacher = convert_clip_visual(teacher_state, num_heads=teacher_num_heads, scan_layers=scan_layers)
        variables["teacher"] = teacher["params"]
    vision_spec.pop("arch")
    text_spec.pop("arch")
    spec = dict(
        arch="umt_video_text", vision=vision_spec, text={k: v for k, v in text_spec.items() if k != "vision_width"},
        embed_dim=int(proj.shape[0]),
    )
    return spec, variables
