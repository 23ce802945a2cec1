"""InternVideo-MM weights -> `vfm_jax.models.internvideo_mm.InternVideoMM` params.

Torch layout (the released `InternVideo-MM-*.ckpt`: a Lightning checkpoint
whose `state_dict` keys start with `clip.`, which the official
`internvideo.load_model` keeps and strips, dropping the rest):
- `visual.{conv1 (D, 3, 1, p, p), class_embedding, positional_embedding,
  ln_pre, transformer.resblocks.*}` (CLIP blocks, see `converters.clip`) and
  `visual.transformer.{temporal_cls_token, dpe.j, dec.j, balance}` (see
  `converters.uniblocks`); `visual_ln_post`, `visual_proj` (D, out);
- the CLIP text tower at the top level (`token_embedding`,
  `positional_embedding`, `transformer.*`, `ln_final`, `text_projection`);
- `logit_scale` (0-d) and `text_mask_embedding` (1, 1, D_text).
"""
from __future__ import annotations

from typing import Any, Mapping

from absl import logging

from vfm_jax.converters.clip import convert_clip_text, encoder_params
from vfm_jax.converters.common import KeyTracker, layer_norm
from vfm_jax.converters.uniblocks import global_blocks_params

TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


def _clip_part(torch_state: Mapping[str, Any]) -> dict:
    """The `clip.*` keys without the prefix when the file is the Lightning checkpoint, else all keys."""
    if not any(k.startswith("clip.") for k in torch_state):
        return dict(torch_state)
    others = sorted(k for k in torch_state if not k.startswith("clip."))
    if others:
        logging.warning("dropping %d non-`clip.` keys as the official loader does (e.g. %s)", len(others), others[0])
    return {k[len("clip."):]: v for k, v in torch_state.items() if k.startswith("clip.")}


def convert_internvideo_mm(
    torch_state: Mapping[str, Any], *, num_heads: int | None = None, text_num_heads: int | None = None,
    scan_layers: bool = True,
) -> tuple[dict, dict]:
    """An InternVideo-MM state dict -> (spec of `internvideo_mm`, {'params': ...}).

    Sizes come from the shapes; the global blocks sit on the layers the
    blocks count back from the last (the released `return_list`), and use
    the backbone's head count. Head counts default to width / 64 (as in the
    B/16 and L/14 releases); `num_heads` sets the video tower's,
    `text_num_heads` the text tower's.
    """
    torch_state = _clip_part(torch_state)
    if "visual.conv1.weight" not in torch_state:
        raise ValueError("no `visual.conv1.weight`: not an InternVideo-MM state dict")
    text_state = {k: v for k, v in torch_state.items() if k.startswith(TEXT_KEYS)}
    state = KeyTracker({k: v for k, v in torch_state.items() if k not in text_state})

    conv = state.take("visual.conv1.weight")
    if conv.ndim != 5 or conv.shape[2] != 1:
        raise ValueError(f"visual.conv1.weight {conv.shape} is not a frame-wise Conv3d (D, 3, 1, p, p)")
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    num_heads = num_heads or width // 64
    pos = state.take("visual.positional_embedding")
    grid = round((pos.shape[0] - 1) ** 0.5)
    if grid * grid + 1 != pos.shape[0]:
        raise ValueError(f"visual.positional_embedding {pos.shape} is not (grid^2 + 1, D)")
    encoder, depth, mlp_ratio = encoder_params(state.scoped("visual."), num_heads, scan_layers)
    global_blocks, count = global_blocks_params(state, "visual.transformer.", num_heads)
    proj = state.take("visual_proj")
    vision = {
        "conv1": {"kernel": conv[:, :, 0].transpose(2, 3, 1, 0)},
        "class_embedding": state.take("visual.class_embedding"),
        "positional_embedding": pos,
        "ln_pre": layer_norm(state, "visual.ln_pre"),
        "encoder": encoder,
        "global_blocks": global_blocks,
        "ln_post": layer_norm(state, "visual_ln_post"),
        "proj": proj,
    }
    logit_scale = state.take("logit_scale").reshape(())
    mask_embedding = state.take("text_mask_embedding").reshape(-1)
    state.finish()

    text_spec, text = convert_clip_text(text_state, num_heads=text_num_heads, scan_layers=scan_layers)
    embed_dim = int(proj.shape[1])
    if text_spec["output_dim"] != embed_dim:
        raise ValueError(f"text_projection gives {text_spec['output_dim']} features, visual_proj {embed_dim}")
    fc1 = global_blocks["block_0"]["mlp"]["fc1"]["kernel"]
    spec = dict(
        arch="internvideo_mm", embed_dim=embed_dim,
        vision=dict(
            width=width, depth=depth, num_heads=int(num_heads), patch_size=patch, image_size=int(grid * patch),
            mlp_ratio=mlp_ratio, global_layers=list(range(depth - count, depth)),
            global_mlp_ratio=fc1.shape[1] / fc1.shape[0],
        ),
        text={k: v for k, v in text_spec.items() if k not in ("arch", "output_dim", "scan_layers")},
        scan_layers=scan_layers,
    )
    params = {
        "vision_encoder": vision, "text_encoder": text["params"], "logit_scale": logit_scale,
        "text_mask_embedding": mask_embedding,
    }
    return spec, {"params": params}
