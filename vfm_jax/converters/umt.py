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

from vfm_jax.converters.common import KeyTracker, layer_norm, linear, stack_layers


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
    defaults to width / 64, the head size of every released ViT.
    """
    state = KeyTracker(torch_state)
    conv = state.take("patch_embed.proj.weight")  # (D, C, t, p, p)
    width, _, tubelet, patch, _ = conv.shape
    num_heads = num_heads or width // 64
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

    The number of aligned layers is the number of `clip_decoder.{k}` heads;
    `clip_return_interval` (the spacing of those layers, the official
    `clip_student_return_interval`) and `num_heads` (default width / 64) are
    not visible in the shapes.
    """
    state = KeyTracker(torch_state)
    conv = state.take("encoder.patch_embed.proj.weight")  # (D, C, t, p, p)
    width, _, tubelet, patch, _ = conv.shape
    num_heads = num_heads or width // 64
    depth = state.count("encoder.blocks.{}.attn.qkv.weight")
    num_decoders = state.count("clip_decoder.{}.head.weight")
    if depth == 0 or num_decoders == 0:
        raise ValueError(
            "no `encoder.blocks.N.attn.qkv.weight` or `clip_decoder.N.head.weight` keys: "
            "not a UMT stage-1 state dict"
        )
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
        tubelet_size=int(tubelet), clip_output_dim=int(params["clip_decoder_0"]["head"]["kernel"].shape[1]),
        clip_return_layers=num_decoders, clip_return_interval=clip_return_interval, scan_layers=scan_layers,
    )
    return spec, {"params": params}
