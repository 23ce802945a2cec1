"""VideoMAE pre-training checkpoints -> `vfm_jax.models.videomae.VideoMAEPretrain` params.

Two namings of the same weights are read:
- official (InternVideo1 / MCG-NJU `modeling_pretrain.py`, the `model` entry
  of the released `.pth`): `encoder.{patch_embed.proj, blocks.N.*, norm}`,
  `decoder.{blocks.N.*, norm, head}`, `encoder_to_decoder.weight` (no
  bias), `mask_token` (1, 1, D_dec); blocks as in UMT (`attn.qkv.weight`,
  `attn.q_bias`, `attn.v_bias`, ...). The sinusoid tables are not stored.
- transformers `VideoMAEForPreTraining`: `videomae.{embeddings, encoder.layer.N,
  layernorm}.*`, `decoder.{decoder_layers.N, norm, head}.*`,
  `encoder_to_decoder`, `mask_token`; the q/v biases are `query.bias` /
  `value.bias`, or `q_bias` / `v_bias` in the hub's files.
transformers names are rewritten to the official ones first, so one path
maps every key and fails on any left over.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from vfm_jax.converters.common import KeyTracker, layer_norm, linear, stack_layers
from vfm_jax.converters.umt import _block, convert_pretrain, default_num_heads

# transformers name -> official name, applied in order (attention.output before output).
_RENAMES = (
    (r"^videomae\.embeddings\.patch_embeddings\.projection\.", "encoder.patch_embed.proj."),
    (r"^videomae\.encoder\.layer\.(\d+)\.", r"encoder.blocks.\1."),
    (r"^videomae\.layernorm\.", "encoder.norm."),
    (r"^decoder\.decoder_layers\.(\d+)\.", r"decoder.blocks.\1."),
    (r"\.attention\.attention\.(query\.bias|q_bias)$", ".attn.q_bias"),
    (r"\.attention\.attention\.(value\.bias|v_bias)$", ".attn.v_bias"),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
)


def official_names(torch_state: Mapping[str, Any]) -> dict:
    """A transformers `VideoMAEForPreTraining` state dict under the official names.

    The separate query/key/value weights are stacked into `attn.qkv.weight`
    (rows [q; k; v]); keys that match no rule keep their name, so the
    converter reports them as unexpected.
    """
    state = {}
    for key, value in torch_state.items():
        for pattern, repl in _RENAMES:
            key = re.sub(pattern, repl, key)
        state[key] = value
    suffix = ".attention.attention.query.weight"
    for query in [k for k in state if k.endswith(suffix)]:
        prefix = query[: -len(suffix)]
        parts = []
        for name in ("query", "key", "value"):
            key = f"{prefix}.attention.attention.{name}.weight"
            if key not in state:
                raise KeyError(f"checkpoint has {query!r} but no {key!r}")
            parts.append(np.asarray(state.pop(key)))
        state[f"{prefix}.attn.qkv.weight"] = np.concatenate(parts)
    return state


def _heads(heads: int, width: int, option: str) -> int:
    if heads < 1 or width % heads:
        raise ValueError(f"{heads} heads do not split width {width}: pass {option}")
    return heads


def convert_videomae(
    torch_state: Mapping[str, Any], *, num_heads: int | None = None, scan_layers: bool = True,
    decoder_num_heads: int | None = None,
) -> tuple[dict, dict]:
    """A VideoMAE pre-training model -> (spec of `videomae_pretrain`, {'params': ...}).

    Sizes come from the shapes; head counts do not show in them. `num_heads`
    (encoder) defaults to the released models' count for the width (ViT-H/16:
    16 heads of 80, others width / 64), `decoder_num_heads` to the decoder
    width / 64, as in every release.
    """
    if any(k.startswith("videomae.") for k in torch_state):
        torch_state = official_names(torch_state)
    encoder_state = {k: v for k, v in torch_state.items() if k.startswith("encoder.")}
    if "encoder.patch_embed.proj.weight" not in encoder_state:
        raise ValueError("no `encoder.patch_embed.proj.weight` (or transformers `videomae.*`) key: "
                         "not a VideoMAE pre-training state dict")
    width = encoder_state["encoder.patch_embed.proj.weight"].shape[0]
    num_heads = _heads(num_heads or default_num_heads(width), width, "num_heads")
    encoder_spec, encoder = convert_pretrain(encoder_state, num_heads=num_heads, scan_layers=scan_layers)

    state = KeyTracker({k: v for k, v in torch_state.items() if not k.startswith("encoder.")})
    to_decoder = state.take("encoder_to_decoder.weight")  # (D_dec, D)
    decoder_width = to_decoder.shape[0]
    decoder_heads = _heads(decoder_num_heads or decoder_width // 64, decoder_width, "decoder_num_heads")
    decoder_depth = state.count("decoder.blocks.{}.attn.qkv.weight")
    if decoder_depth == 0:
        raise ValueError("no `decoder.blocks.N.attn.qkv.weight` keys: the checkpoint has no decoder")
    blocks = [_block(state, i, decoder_heads, prefix="decoder.") for i in range(decoder_depth)]
    mlp_ratio = blocks[0]["mlp"]["fc1"]["kernel"].shape[1] / decoder_width
    if mlp_ratio != encoder_spec["mlp_ratio"]:
        raise ValueError(f"decoder mlp ratio {mlp_ratio} differs from the encoder's {encoder_spec['mlp_ratio']}")
    head = state.take("decoder.head.weight")  # (tubelet * p * p * 3, D_dec)
    want = encoder_spec["tubelet_size"] * encoder_spec["patch_size"] ** 2 * 3
    if head.shape[0] != want:
        raise ValueError(f"decoder.head predicts {head.shape[0]} values per token; tubelet and patch need {want}")
    params = {
        **encoder["params"],
        "encoder_to_decoder": {"kernel": linear(to_decoder)},
        "mask_token": state.take("mask_token").reshape(decoder_width),
        "decoder": (
            {"blocks": stack_layers(blocks)} if scan_layers else {f"blocks_{i}": b for i, b in enumerate(blocks)}
        ),
        "decoder_norm": layer_norm(state, "decoder.norm"),
        "decoder_head": {"kernel": linear(head), "bias": state.take("decoder.head.bias")},
    }
    state.finish()
    spec = dict(
        arch="videomae_pretrain", decoder_width=int(decoder_width), decoder_depth=decoder_depth,
        decoder_num_heads=int(decoder_heads),
        **{k: encoder_spec[k] for k in ("width", "depth", "num_heads", "mlp_ratio", "patch_size", "tubelet_size")},
        scan_layers=scan_layers,
    )
    return spec, {"params": params}
