"""UMT's xbert text encoder weights -> `vfm_jax.models.bert.BertTextEncoder` params.

Torch layout (unmasked_teacher stage-2 checkpoints, under `text_encoder.`):
- `bert.embeddings.{word,position,token_type}_embeddings.weight`,
  `bert.embeddings.LayerNorm`, and the `bert.embeddings.position_ids` buffer
  (an arange in xbert, saved because it is a persistent buffer there);
- per layer `bert.encoder.layer.{i}.`: `attention.self.{query,key,value}`
  (Linear, out = heads * head_dim, head-major), `attention.output.{dense,
  LayerNorm}`, `intermediate.dense`, `output.{dense,LayerNorm}`; layers
  i >= fusion_layer also have `crossattention.*` whose key/value take the
  vision width as input;
- `cls.predictions.{transform.dense, transform.LayerNorm, bias}`, plus
  `decoder.weight` and `decoder.bias`, which are the tied word table and
  `cls.predictions.bias` saved a second time (BertForMaskedLM ties them). HF
  `save_pretrained` drops such duplicates, so they are optional here; when
  present they must equal what they are tied to.
There is no pooler (UMT builds BertForMaskedLM / BertModel without one).
"""
from __future__ import annotations

import numpy as np

from vfm_jax.converters.common import KeyTracker, layer_norm, linear, stack_layers


def _dense(state: KeyTracker, key: str) -> dict:
    return {"kernel": linear(state.take(f"{key}.weight")), "bias": state.take(f"{key}.bias")}


def _attention(state: KeyTracker, p: str, num_heads: int) -> dict:
    """`{p}self.{query,key,value}`, `{p}output.{dense,LayerNorm}` -> BertAttention params."""
    params = {}
    for name in ("query", "key", "value"):
        w = state.take(f"{p}self.{name}.weight")  # (H * hd, D_in)
        params[f"{name}_kernel"] = w.T.reshape(w.shape[1], num_heads, -1)
        params[f"{name}_bias"] = state.take(f"{p}self.{name}.bias").reshape(num_heads, -1)
    out = state.take(f"{p}output.dense.weight")  # (D, H * hd)
    return {
        **params,
        "out_kernel": out.T.reshape(num_heads, -1, out.shape[0]),
        "out_bias": state.take(f"{p}output.dense.bias"),
        "norm": layer_norm(state, f"{p}output.LayerNorm"),
    }


def _layer(state: KeyTracker, p: str, num_heads: int, cross: bool) -> dict:
    params = {
        "attention": _attention(state, p + "attention.", num_heads),
        "mlp": {"fc1": _dense(state, p + "intermediate.dense"), "fc2": _dense(state, p + "output.dense")},
        "mlp_norm": layer_norm(state, p + "output.LayerNorm"),
    }
    if cross:
        params["cross_attention"] = _attention(state, p + "crossattention.", num_heads)
    return params


def _stack(layers: list[dict], scan_layers: bool) -> dict:
    return {"layers": stack_layers(layers)} if scan_layers else {f"layers_{i}": p for i, p in enumerate(layers)}


def _take_tied(state: KeyTracker, key: str, tied_to: np.ndarray, what: str):
    """Consume a duplicate of a tied weight, failing if it is not the same tensor."""
    if not state.has(key):
        return
    if not np.allclose(state.take(key), tied_to):
        raise ValueError(f"{key} differs from {what}; the MLM decoder must be tied to it")


def convert_bert(
    state: KeyTracker, *, prefix: str = "", num_heads: int | None = None, scan_layers: bool = True,
    fusion_layer: int | None = None,
) -> tuple[dict, dict]:
    """Keys under `{prefix}bert.` and `{prefix}cls.predictions.` -> (params, model spec for `build_model`).

    Sizes, depth and fusion_layer come from the keys and shapes; `num_heads`
    (not visible in shapes) defaults to width / 64, as in every BERT release.
    For a BERT without cross-attention (HF `bert-base-uncased`), `fusion_layer`
    puts the layers from there on into `fusion_layers` without their
    cross-attention, which then starts from its initialisation, as when UMT
    builds its text encoder from the HF weights.
    Every mapped key is taken from `state`; the caller calls `state.finish()`.
    """
    b, cls = f"{prefix}bert.", f"{prefix}cls.predictions."
    word = state.take(b + "embeddings.word_embeddings.weight")
    vocab_size, width = word.shape
    num_heads = num_heads or width // 64
    positions = state.take(b + "embeddings.position_embeddings.weight")
    if state.has(b + "embeddings.position_ids"):
        ids = state.take(b + "embeddings.position_ids").reshape(-1)
        if not np.array_equal(ids, np.arange(len(positions))):
            raise ValueError(f"{b}embeddings.position_ids is not arange({len(positions)}); positions would differ")
    type_table = state.take(b + "embeddings.token_type_embeddings.weight")

    depth = state.count(b + "encoder.layer.{}.attention.self.query.weight")
    if depth == 0:
        raise ValueError(f"no `{b}encoder.layer.N.attention.self.query.weight` keys: not a BERT state dict")
    cross = [state.has(f"{b}encoder.layer.{i}.crossattention.self.query.weight") for i in range(depth)]
    if any(cross):
        found = cross.index(True)
        if fusion_layer not in (None, found):
            raise ValueError(f"fusion_layer={fusion_layer}, but the checkpoint cross-attends from layer {found}")
        fusion_layer = found
        if not all(cross[fusion_layer:]):
            raise ValueError(f"cross-attention layers {[i for i, c in enumerate(cross) if c]} are not the last ones")
    elif fusion_layer is None:
        fusion_layer = depth
    elif not 0 <= fusion_layer <= depth:
        raise ValueError(f"fusion_layer={fusion_layer} outside a depth-{depth} BERT")
    layers = [_layer(state, f"{b}encoder.layer.{i}.", num_heads, cross[i]) for i in range(depth)]

    bias = state.take(cls + "bias")
    _take_tied(state, cls + "decoder.weight", word, f"{b}embeddings.word_embeddings.weight")
    _take_tied(state, cls + "decoder.bias", bias, f"{cls}bias")
    params = {
        "embeddings": {
            "word_embeddings": {"embedding": word},
            "position_embeddings": {"embedding": positions},
            "token_type_embeddings": {"embedding": type_table},
            "norm": layer_norm(state, b + "embeddings.LayerNorm"),
        },
        "mlm_head": {
            "transform": _dense(state, cls + "transform.dense"),
            "norm": layer_norm(state, cls + "transform.LayerNorm"),
            "bias": bias,
        },
    }
    if fusion_layer:
        params["text_layers"] = _stack(layers[:fusion_layer], scan_layers)
    if fusion_layer < depth:
        params["fusion_layers"] = _stack(layers[fusion_layer:], scan_layers)
    vision_width = layers[-1]["cross_attention"]["key_kernel"].shape[0] if any(cross) else None
    spec = dict(
        arch="bert_text", vocab_size=int(vocab_size), width=int(width), depth=depth, num_heads=int(num_heads),
        mlp_dim=int(layers[0]["mlp"]["fc1"]["kernel"].shape[1]), fusion_layer=fusion_layer,
        vision_width=None if vision_width is None else int(vision_width), max_positions=int(len(positions)),
        type_vocab_size=int(len(type_table)), scan_layers=scan_layers,
    )
    return params, spec


def convert_bert_checkpoint(
    torch_state, *, num_heads: int | None = None, scan_layers: bool = True, fusion_layer: int | None = None
) -> tuple[dict, dict]:
    """A BERT file (UMT text encoder, HF BertForMaskedLM / BertForPreTraining) -> (spec, {'params': ...}).

    For `python -m vfm_jax.convert --model bert`. The HF pre-training heads
    UMT does not use, `bert.pooler` and `cls.seq_relationship` (next-sentence
    prediction), are dropped by name; every other key must be mapped.
    """
    state = KeyTracker(torch_state)
    prefix = "text_encoder." if state.has("text_encoder.bert.embeddings.word_embeddings.weight") else ""
    params, spec = convert_bert(
        state, prefix=prefix, num_heads=num_heads, scan_layers=scan_layers, fusion_layer=fusion_layer
    )
    state.finish(ignore=(f"{prefix}bert.pooler.", f"{prefix}cls.seq_relationship."))
    return spec, {"params": params}
