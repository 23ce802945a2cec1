"""UniFormerV2 weights (the released `.pyth` files) -> `vfm_jax.models.uniformerv2.UniFormerV2` variables.

Torch layout (`slowfast/models/uniformerv2{,_model}.py`): a slowfast checkpoint
`{'model_state': state_dict, ...}` (unwrapped by `torch_io.load_weights`)
whose keys start with `backbone.`:
- `conv1.weight` (D, 3, t, p, p): t = 1 frame-wise, t = 3 with temporal
  down-sampling (SSv2); `class_embedding`, `positional_embedding`, `ln_pre`;
- `transformer.resblocks.{i}.*`: CLIP blocks (see `converters.clip`), plus
  with local MHRA `lmhra{1,2}.pos_embed.{0: BatchNorm3d (weight, bias,
  running_mean, running_var, num_batches_tracked), 1: Conv3d 1x1x1 D->r,
  2: depthwise Conv3d (3,1,1) over r, 3: Conv3d 1x1x1 r->D}`;
- `transformer.temporal_cls_token` (1, 1, D), `transformer.balance` (D,)
  (absent when FROZEN), `transformer.dpe.{j}` depthwise Conv3d (D, 1, 3, 3, 3)
  with bias, `transformer.dec.{j}` Extractors (`attn.in_proj_weight` (3D, D)
  packing q; k; v, `attn.out_proj`, `ln_1`, `ln_2`, `ln_3`, `mlp.c_fc`,
  `mlp.c_proj`);
- `transformer.proj.0` LayerNorm and `transformer.proj.2` Linear (the head).

The BatchNorm running statistics go to the `batch_stats` collection.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence


from vfm_jax.converters.clip import encoder_params
from vfm_jax.converters.common import KeyTracker, layer_norm, linear, stack_layers
from vfm_jax.converters.uniblocks import global_blocks_params

PREFIX = "backbone."
DW_REDUCTION = 1.5  # every released model


def _lmhra(state: KeyTracker, key: str) -> tuple[dict, dict]:
    """`{key}.pos_embed.*` -> (params, batch_stats) of one LocalMHRA."""
    p = f"{key}.pos_embed."
    state.take(p + "0.num_batches_tracked")  # only used by torch's momentum=None (cumulative) mode
    params = {
        "norm": {"scale": state.take(p + "0.weight"), "bias": state.take(p + "0.bias")},
        "down": {"kernel": state.take(p + "1.weight")[:, :, 0, 0, 0].T, "bias": state.take(p + "1.bias")},
        # (r, 1, 3, 1, 1) -> flax depthwise (3, 1, 1, 1, r)
        "temporal": {"kernel": state.take(p + "2.weight").transpose(2, 3, 4, 1, 0), "bias": state.take(p + "2.bias")},
        "up": {"kernel": state.take(p + "3.weight")[:, :, 0, 0, 0].T, "bias": state.take(p + "3.bias")},
    }
    stats = {"norm": {"mean": state.take(p + "0.running_mean"), "var": state.take(p + "0.running_var")}}
    return params, stats


def convert_uniformerv2(
    torch_state: Mapping[str, Any], *, num_heads: int | None = None, scan_layers: bool = True,
    global_heads: int | None = None, global_layers: Sequence[int] | None = None,
) -> tuple[dict, dict]:
    """A UniFormerV2 state dict -> (spec of `uniformerv2`, {'params': ..., 'batch_stats': ...}).

    Sizes and options come from the shapes and key names: width, depth,
    patch, image size (from the position table), temporal down-sampling
    (conv1's temporal kernel 3), local MHRA (`lmhra1`/`lmhra2` keys; its
    hidden width must be int(D // 1.5), as in every release), the number of global blocks, their MLP ratio, FROZEN (no
    `balance`) and the classes. Not visible there: head counts (default
    width / 64, as in CLIP) and which layers the global blocks follow
    (default the last K, as in every release: RETURN_LIST [8..11] or
    [20..23] for Kinetics, [4..11] / [8..23] for SSv2).
    """
    if PREFIX + "transformer.temporal_cls_token" not in torch_state:
        raise ValueError(f"no `{PREFIX}transformer.temporal_cls_token` key: not a UniFormerV2 state dict")
    frozen = PREFIX + "transformer.balance" not in torch_state
    state = KeyTracker(torch_state, prefix=PREFIX)
    conv = state.take("conv1.weight")  # (D, 3, t, p, p)
    width, _, kt, patch, _ = conv.shape
    if kt not in (1, 3):
        raise ValueError(f"conv1.weight {conv.shape}: temporal kernel {kt} is neither 1 nor 3")
    num_heads = num_heads or width // 64
    global_heads = global_heads or num_heads
    pos = state.take("positional_embedding")
    grid = round((pos.shape[0] - 1) ** 0.5)
    if grid * grid + 1 != pos.shape[0]:
        raise ValueError(f"positional_embedding {pos.shape} is not (grid^2 + 1, D)")

    encoder, depth, mlp_ratio = encoder_params(state, num_heads, scan_layers)
    lmhra = state.has("transformer.resblocks.0.lmhra1.pos_embed.0.weight")
    double_lmhra = state.has("transformer.resblocks.0.lmhra2.pos_embed.0.weight")
    stats = {}
    if lmhra:
        names = ("lmhra1", "lmhra2") if double_lmhra else ("lmhra1",)
        per_layer = [{n: _lmhra(state, f"transformer.resblocks.{i}.{n}") for n in names} for i in range(depth)]
        params_i = [{n: v[0] for n, v in layer.items()} for layer in per_layer]
        stats_i = [{n: v[1] for n, v in layer.items()} for layer in per_layer]
        if scan_layers:
            encoder["blocks"].update(stack_layers(params_i))
            stats = {"encoder": {"blocks": stack_layers(stats_i)}}
        else:
            for i in range(depth):
                encoder[f"blocks_{i}"].update(params_i[i])
            stats = {"encoder": {f"blocks_{i}": s for i, s in enumerate(stats_i)}}
        hidden = params_i[0]["lmhra1"]["down"]["kernel"].shape[1]
        if int(width // DW_REDUCTION) != hidden:
            raise ValueError(f"local MHRA width {hidden} is not int({width} // DW_REDUCTION={DW_REDUCTION})")

    global_params, count = global_blocks_params(state, "transformer.", global_heads)
    global_layers = tuple(range(depth - count, depth)) if global_layers is None else tuple(global_layers)
    if len(global_layers) != count:
        raise ValueError(f"{count} global blocks in the checkpoint, global_layers has {len(global_layers)}")

    head = state.take("transformer.proj.2.weight")
    params = {
        "conv1": {"kernel": conv[:, :, kt // 2].transpose(2, 3, 1, 0)},
        "class_embedding": state.take("class_embedding"),
        "positional_embedding": pos,
        "ln_pre": layer_norm(state, "ln_pre"),
        "encoder": encoder,
        "global": global_params,
        "head_norm": layer_norm(state, "transformer.proj.0"),
        "head": {"kernel": linear(head), "bias": state.take("transformer.proj.2.bias")},
    }
    if kt == 3:  # the outer time slices of the (3, p, p) conv: (2, p, p, 3, D)
        params["conv1_temporal"] = {"kernel": conv[:, :, [0, 2]].transpose(2, 3, 4, 1, 0)}
    state.finish()
    fc1 = global_params["block_0"]["mlp"]["fc1"]["kernel"]
    spec = dict(
        arch="uniformerv2", num_classes=int(head.shape[0]), width=int(width), depth=depth,
        num_heads=int(num_heads), patch_size=int(patch), image_size=int(grid * patch), mlp_ratio=mlp_ratio,
        temporal_downsample=kt == 3, lmhra=lmhra, double_lmhra=double_lmhra, lmhra_reduction=DW_REDUCTION,
        global_layers=global_layers, global_heads=int(global_heads), global_mlp_ratio=fc1.shape[1] / fc1.shape[0],
        frozen=frozen, scan_layers=scan_layers,
    )
    variables = {"params": params}
    if stats:
        variables["batch_stats"] = stats
    return spec, variables
