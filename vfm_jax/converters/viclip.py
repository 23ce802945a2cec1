"""InternVid ViCLIP weights -> `vfm_jax.models.viclip.ViCLIP` params.

Torch layout (`torch.load(p)['model']` of the released `ViClip-InternVid-*.pth`):
- `vision_encoder.*`: a CLIP visual tower (see `converters.clip`) whose
  `conv1.weight` is a Conv3d (D, 3, 1, p, p), plus
  `temporal_positional_embedding` (1, T, D);
- `text_encoder.*`: a CLIP text tower with a 32-row `positional_embedding`;
- `temp`, the contrastive temperature (a 0-d tensor).
"""
from __future__ import annotations

from typing import Any, Mapping

from vfm_jax.converters.clip import convert_clip_text, visual_params
from vfm_jax.converters.common import KeyTracker

PARTS = ("vision_encoder.", "text_encoder.")


def convert_viclip(
    torch_state: Mapping[str, Any], *, num_heads: int | None = None, text_num_heads: int | None = None,
    scan_layers: bool = True,
) -> tuple[dict, dict]:
    """A ViCLIP state dict -> (spec of `viclip`, {'params': ...}).

    Sizes come from the shapes (frames from the temporal table, image size
    from the position table, context from the text table); head counts are
    not visible there and default to width / 64 (`num_heads` for the video
    tower, `text_num_heads` for the text tower), as in every release.
    """
    parts = {p: {k: v for k, v in torch_state.items() if k.startswith(p)} for p in PARTS}
    for prefix, part in parts.items():
        if not part:
            raise ValueError(f"no `{prefix}*` keys: not a ViCLIP state dict")
    rest = KeyTracker({k: v for k, v in torch_state.items() if not k.startswith(PARTS)})
    temp = rest.take("temp")
    rest.finish()

    vision_state = KeyTracker(parts["vision_encoder."], prefix="vision_encoder.")
    vision, sizes = visual_params(vision_state, num_heads=num_heads, scan_layers=scan_layers)
    temporal = vision_state.take("temporal_positional_embedding")
    if temporal.ndim != 3 or temporal.shape[0] != 1 or temporal.shape[2] != sizes["width"]:
        raise ValueError(f"temporal_positional_embedding {temporal.shape} is not (1, T, {sizes['width']})")
    vision["temporal_positional_embedding"] = temporal[0]
    vision_state.finish()

    text_spec, text = convert_clip_text(
        parts["text_encoder."], num_heads=text_num_heads, scan_layers=scan_layers, prefix="text_encoder."
    )
    embed_dim = sizes.pop("output_dim")
    if text_spec["output_dim"] != embed_dim:
        raise ValueError(f"text_projection gives {text_spec['output_dim']} features, the video `proj` {embed_dim}")
    text_sizes = {k: v for k, v in text_spec.items() if k not in ("arch", "output_dim", "scan_layers")}
    spec = dict(
        arch="viclip", embed_dim=embed_dim, vision=dict(**sizes, num_frames=int(temporal.shape[1])),
        text=text_sizes, scan_layers=scan_layers,
    )
    params = {"vision_encoder": vision, "text_encoder": text["params"], "temp": temp.reshape(())}
    return spec, {"params": params}
