"""BertTextEncoder (UMT's xbert): structure, parity with transformers' BERT, and the converter's key checks.

The parity tests build the reference in transformers with random weights,
rename its state dict into UMT's checkpoint layout (`text_encoder.bert.*`,
`text_encoder.cls.predictions.*`) and load it with `convert_bert`, so every
parity test also tests the converter.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import umt_text_reference
from vfm_jax.converters.bert import convert_bert
from vfm_jax.converters.common import KeyTracker
from vfm_jax.models import PRESETS, build_model, get_model
from vfm_jax.models.bert import BertTextEncoder

VOCAB, WIDTH, DEPTH, HEADS, MLP_DIM, FUSION, VISION_WIDTH = 100, 32, 4, 4, 64, 2, 48
LENGTHS = (7, 4, 1)  # right-padded text lengths of the 3 test samples, L = 7
VISION_LENGTHS = (5, 3, 5)  # valid vision tokens of the 3 samples, N = 5
AXES = {"batch", "length", "frames", "embed", "mlp", "heads", "head_dim", "kv", "vocab", "layers", None}


def _model(**overrides):
    kwargs = dict(
        vocab_size=VOCAB, width=WIDTH, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP_DIM, fusion_layer=FUSION,
        vision_width=VISION_WIDTH,
    )
    return BertTextEncoder(**{**kwargs, **overrides})


def _inputs(seed=0):
    """Right-padded ids (pad id 0) and mask, vision tokens, and a random (B, L, D) text state."""
    rng = np.random.default_rng(seed)
    mask = (np.arange(max(LENGTHS))[None] < np.asarray(LENGTHS)[:, None]).astype(np.int64)
    ids = rng.integers(1, VOCAB, mask.shape) * mask
    vision = rng.standard_normal((len(LENGTHS), max(VISION_LENGTHS), VISION_WIDTH)).astype(np.float32)
    hidden = rng.standard_normal((*mask.shape, WIDTH)).astype(np.float32)
    return ids, mask, vision, hidden


def _random_params(model, seed=0):
    ids, mask, vision, _ = _inputs()
    params = nn.unbox(jax.jit(model.init)(jax.random.key(seed), ids, mask, vision))["params"]
    rng = np.random.default_rng(seed + 100)
    return jax.tree.map(lambda x: x + jnp.asarray(0.1 * rng.standard_normal(x.shape), x.dtype), params)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_params_carry_logical_axis_names(scan_layers):
    """Every param is boxed with vocabulary names; stacked layers lead with 'layers'."""
    ids, mask, vision, _ = _inputs()
    boxed = jax.eval_shape(_model(scan_layers=scan_layers).init, jax.random.key(0), ids, mask, vision)["params"]
    assert set(boxed) == {"embeddings", "text_layers", "fusion_layers", "mlm_head"}
    leaves = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), where
        assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= AXES, where
        stacked = scan_layers and path[0].key in ("text_layers", "fusion_layers")
        assert (leaf.names[0] == "layers") == stacked, where
        assert "layers" not in leaf.names[1:], where
    cross = boxed["fusion_layers"]["layers" if scan_layers else "layers_0"]["cross_attention"]["key_kernel"]
    assert cross.value.shape[-3] == VISION_WIDTH


def test_scan_matches_unrolled_and_methods_compose():
    """Scanned and unrolled stacks agree; __call__ is encode_text -> fuse -> mlm_logits."""
    ids, mask, vision, _ = _inputs()
    scanned, unrolled = _model(scan_layers=True), _model(scan_layers=False)
    params = _random_params(scanned)
    flat = dict(params)
    for stack, count in (("text_layers", FUSION), ("fusion_layers", DEPTH - FUSION)):
        flat[stack] = {f"layers_{i}": jax.tree.map(lambda x: x[i], params[stack]["layers"]) for i in range(count)}
    out = scanned.apply({"params": params}, ids, mask, vision)
    out_flat = unrolled.apply({"params": flat}, ids, mask, vision)
    for key in ("text", "fused", "mlm_logits"):
        np.testing.assert_allclose(out[key], out_flat[key], atol=1e-5, rtol=1e-5, err_msg=key)
    text = scanned.apply({"params": params}, ids, mask, method=BertTextEncoder.encode_text)
    fused = scanned.apply({"params": params}, text, mask, vision, method=BertTextEncoder.fuse)
    logits = scanned.apply({"params": params}, fused, method=BertTextEncoder.mlm_logits)
    np.testing.assert_array_equal(text, out["text"])
    np.testing.assert_array_equal(fused, out["fused"])
    np.testing.assert_array_equal(logits, out["mlm_logits"])
    assert logits.shape == (*ids.shape, VOCAB) and logits.dtype == jnp.float32


def test_dropout_only_in_training():
    """train=True draws from the 'dropout' rng (same key, same output); train=False ignores it."""
    ids, mask, vision, _ = _inputs()
    model = _model(dropout=0.3)
    params = _random_params(model)

    @jax.jit
    def train(seed):
        return model.apply({"params": params}, ids, mask, vision, train=True, rngs={"dropout": jax.random.key(seed)})

    a, a_again, b = train(1)["fused"], train(1)["fused"], train(2)["fused"]
    np.testing.assert_array_equal(a, a_again)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
    eval_out = model.apply({"params": params}, ids, mask, vision)["fused"]
    no_dropout = _model(dropout=0.0).apply({"params": params}, ids, mask, vision)["fused"]
    np.testing.assert_array_equal(eval_out, no_dropout)


def test_bad_inputs_raise():
    """Text longer than max_positions, a wrong vision width and fusion_layer > depth are ValueErrors."""
    ids, mask, vision, _ = _inputs()
    with pytest.raises(ValueError, match="max_positions"):
        jax.eval_shape(_model(max_positions=4).init, jax.random.key(0), ids, mask, vision)
    with pytest.raises(ValueError, match="width"):
        jax.eval_shape(_model().init, jax.random.key(0), ids, mask, vision[..., :WIDTH])
    with pytest.raises(ValueError, match="fusion_layer"):
        jax.eval_shape(_model(fusion_layer=DEPTH + 1).init, jax.random.key(0), ids, mask, vision)


@pytest.mark.parametrize("name", ["bert_base_uncased", "bert_large_uncased"])
def test_presets_build(name):
    """The BERT presets build through get_model (no num_classes injected) and init on shapes."""
    model = get_model(name, scan_layers=True)
    assert isinstance(model, BertTextEncoder) and not hasattr(model, "num_classes")
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    vision = jax.ShapeDtypeStruct((1, 4, model.width), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), ids, ids, vision)["params"]
    stacked = nn.unbox(params)["fusion_layers"]["layers"]["cross_attention"]["query_kernel"]
    assert stacked.shape[0] == PRESETS[name]["depth"] - PRESETS[name]["fusion_layer"]


# ---- parity with transformers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference():
    """transformers modules standing in for UMT's xbert and their state dict in UMT's layout (see conftest)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    text, fusion, state = umt_text_reference(
        vocab=VOCAB, width=WIDTH, depth=DEPTH, heads=HEADS, mlp_dim=MLP_DIM, fusion_layer=FUSION,
        vision_width=VISION_WIDTH,
    )
    return {"text": text, "fusion": fusion, "state": state}


def _convert(state, scan_layers=True):
    tracker = KeyTracker(state)
    params, spec = convert_bert(tracker, prefix="text_encoder.", num_heads=HEADS, scan_layers=scan_layers)
    tracker.finish()
    return params, build_model(spec)


def _additive(mask):
    """(B, Lk) 1/0 -> the (B, 1, 1, Lk) additive mask transformers' eager attention takes."""
    import torch

    mask = torch.as_tensor(np.asarray(mask), dtype=torch.float32)
    return (1.0 - mask[:, None, None, :]) * torch.finfo(torch.float32).min


def _fusion_reference(fusion, hidden, text_mask, vision, vision_mask):
    import torch

    h = torch.from_numpy(np.asarray(hidden))
    with torch.no_grad():
        for layer in fusion:
            h = layer(
                h, attention_mask=_additive(text_mask), encoder_hidden_states=torch.from_numpy(vision),
                encoder_attention_mask=_additive(vision_mask),
            )
    return h.numpy()


def _max_err(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


@pytest.mark.parity
@pytest.mark.parametrize("scan_layers", [True, False])
def test_converter_rebuilds_the_model(reference, scan_layers):
    """Every key is consumed, the spec rebuilds the module, and the tree matches its init exactly."""
    params, model = _convert(reference["state"], scan_layers)
    assert isinstance(model, BertTextEncoder)
    sizes = (model.depth, model.fusion_layer, model.width, model.vision_width, model.vocab_size, model.mlp_dim)
    assert sizes == (DEPTH, FUSION, WIDTH, VISION_WIDTH, VOCAB, MLP_DIM)
    assert (model.max_positions, model.type_vocab_size, model.scan_layers) == (64, 2, scan_layers)
    ids, mask, vision, _ = _inputs()
    want = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), ids, mask, vision))["params"]
    assert jax.tree.map(np.shape, params) == jax.tree.map(lambda x: x.shape, want)


@pytest.mark.parity
@pytest.mark.parametrize("scan_layers", [True, False])
def test_text_mode_matches_bert_model(reference, scan_layers):
    """encode_text == BertModel (fusion_layer layers, eval) last_hidden_state on right-padded ids.

    Compared at every position: padded query positions are computed the same
    way in both (they attend to the sample's valid keys; only keys are masked).
    """
    import torch

    params, model = _convert(reference["state"], scan_layers)
    ids, mask, _, _ = _inputs()
    with torch.no_grad():
        want = reference["text"].bert(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    ours = model.apply({"params": params}, ids, mask, method=BertTextEncoder.encode_text)
    assert _max_err(ours, want.numpy()) <= 1e-4


@pytest.mark.parity
@pytest.mark.parametrize("padded_vision", [False, True])
def test_fusion_layers_match_bert_layers(reference, padded_vision):
    """fuse == the cross-attention BertLayers (see `reference`) applied with bidirectional padding masks.

    Vision width (48) differs from the text width (32); with `padded_vision`
    some vision tokens are masked by `vision_lengths` (UMT itself uses all).
    """
    params, model = _convert(reference["state"])
    _, mask, vision, hidden = _inputs()
    lengths = np.asarray(VISION_LENGTHS if padded_vision else [vision.shape[1]] * len(LENGTHS))
    vision_mask = (np.arange(vision.shape[1])[None] < lengths[:, None]).astype(np.float32)
    want = _fusion_reference(reference["fusion"], hidden, mask, vision, vision_mask)
    ours = model.apply(
        {"params": params}, hidden, mask, vision, vision_lengths=jnp.asarray(lengths) if padded_vision else None,
        method=BertTextEncoder.fuse,
    )
    assert _max_err(ours, want) <= 1e-4
    # The reference is bidirectional: a later token changes the first position's output.
    later = hidden.copy()
    later[0, 3] += 1.0
    assert _max_err(_fusion_reference(reference["fusion"], later, mask, vision, vision_mask)[0, 0], want[0, 0]) > 1e-3


@pytest.mark.parity
def test_mlm_logits_match_bert_for_masked_lm_head(reference):
    """mlm_logits == BertForMaskedLM.cls (transform, LayerNorm, tied decoder + bias) on the same states."""
    import torch

    params, model = _convert(reference["state"])
    _, _, _, hidden = _inputs()
    with torch.no_grad():
        want = reference["text"].cls(torch.from_numpy(hidden)).numpy()
    ours = model.apply({"params": params}, hidden, method=BertTextEncoder.mlm_logits)
    assert _max_err(ours, want) <= 1e-4


@pytest.mark.parity
def test_full_forward_matches_reference_chain(reference):
    """__call__ == text BertModel -> fusion BertLayers -> MLM head, UMT's MLM path end to end."""
    import torch

    params, model = _convert(reference["state"])
    ids, mask, vision, _ = _inputs()
    with torch.no_grad():
        text = reference["text"].bert(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
        fused = _fusion_reference(reference["fusion"], text.numpy(), mask, vision, np.ones(vision.shape[:2]))
        logits = reference["text"].cls(torch.from_numpy(fused)).numpy()
    out = model.apply({"params": params}, ids, mask, vision)
    assert _max_err(out["text"], text.numpy()) <= 1e-4
    assert _max_err(out["fused"], fused) <= 1e-4
    assert _max_err(out["mlm_logits"], logits) <= 1e-4


@pytest.mark.parity
def test_converter_key_errors(reference):
    """An unexpected key fails at finish(), a missing one at take(), an untied decoder in convert_bert."""
    state = dict(reference["state"])
    with pytest.raises(ValueError, match="text_encoder.bert.pooler.dense.weight"):
        _convert({**state, "text_encoder.bert.pooler.dense.weight": np.zeros((WIDTH, WIDTH), np.float32)})

    missing = "text_encoder.bert.encoder.layer.3.crossattention.output.dense.bias"
    with pytest.raises(KeyError, match=missing):
        _convert({k: v for k, v in state.items() if k != missing})

    untied = dict(state)
    untied["text_encoder.cls.predictions.decoder.weight"] = untied["text_encoder.cls.predictions.decoder.weight"] + 1
    with pytest.raises(ValueError, match="tied"):
        _convert(untied)

    shifted = {**state, "text_encoder.bert.embeddings.position_ids": np.arange(1, 65)[None]}
    with pytest.raises(ValueError, match="position_ids"):
        _convert(shifted)


@pytest.mark.parity
def test_converter_without_tied_duplicates(reference):
    """A state dict saved without the tied duplicates and the buffer (HF save_pretrained) converts the same."""
    dropped = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias", "bert.embeddings.position_ids")
    state = {k: v for k, v in reference["state"].items() if not k.endswith(dropped)}
    assert len(state) == len(reference["state"]) - 3
    params, _ = _convert(state)
    want, _ = _convert(reference["state"])
    jax.tree.map(np.testing.assert_array_equal, params, want)
