"""UMT stage 2 and retrieval through the one loop, and the stage-2 converter on official-layout weights.

The student and teacher weights are the official-layout tensors of
tests/fixtures/umt_pretrain; the text encoder is transformers' BERT renamed
into UMT's layout (conftest.umt_text_reference).
"""
import math
import pathlib

import jax
import numpy as np
import pytest

from conftest import ROOT, umt_text_reference
from configs.umt import retrieval, stage2
from data.synthetic import caption_vocabulary
from vfm_jax import checkpointing
from vfm_jax.convert import convert
from vfm_jax.evaluate import evaluate
from vfm_jax.train import train_and_evaluate

FIXTURE = pathlib.Path(ROOT) / "tests" / "fixtures" / "umt_pretrain"
# The fixture's student: width 48, depth 3, 4 heads, patch 8, 2 aligned layers of 24.
STUDENT = dict(width=48, depth=3, num_heads=4)
TEXT = dict(vocab=len(caption_vocabulary()), width=32, depth=3, heads=2, mlp_dim=64, fusion_layer=2,
            vision_width=48)
HEADS = dict(num_heads=4, text_num_heads=TEXT["heads"], teacher_num_heads=4)


def _fit_fixture(config):
    config.model.vision.update(STUDENT)
    config.model.text.update(width=TEXT["width"], depth=TEXT["depth"], num_heads=TEXT["heads"],
                             mlp_dim=TEXT["mlp_dim"], fusion_layer=TEXT["fusion_layer"])
    config.mesh.data = 2


def _hf_bert_file(path) -> str:
    """An HF BertForMaskedLM checkpoint (no cross-attention), torch names, as `.npz`."""
    text, _, _ = umt_text_reference(**{**TEXT, "fusion_layer": TEXT["depth"]})
    np.savez(path, **{k: v.numpy() for k, v in text.state_dict().items()})
    return str(path)


@pytest.mark.slow
def test_tiny_stage2_from_converted_student_teacher_and_hf_bert(tmp_path):
    convert("clip_visual", str(FIXTURE / "teacher_state_dict.npz"), str(tmp_path / "teacher"), num_heads=4)
    convert("umt_pretrain", str(FIXTURE / "student_state_dict.npz"), str(tmp_path / "student"), num_heads=4)
    convert("bert", _hf_bert_file(tmp_path / "bert.npz"), str(tmp_path / "bert"), num_heads=2,
            fusion_layer=TEXT["fusion_layer"])
    config = stage2.get_config("model=tiny")
    _fit_fixture(config)
    config.task.update(teacher_checkpoint=str(tmp_path / "teacher"), vision_checkpoint=str(tmp_path / "student"),
                       text_checkpoint=str(tmp_path / "bert"))
    results = train_and_evaluate(config, tmp_path / "run", devices=jax.devices()[:2])
    for k in ("uta", "vtc", "vtm", "mlm"):
        assert math.isfinite(results[f"train_loss_{k}"]), k
    assert 0.001 <= results["train_temp"] <= 0.5
    for k in ("t2v_r1", "t2v_r10", "v2t_r5", "mean_recall", "t2v_r1_vtc"):
        assert 0.0 <= results[f"val_{k}"] <= 1.0
    assert results["val_t2v_r10"] >= results["val_t2v_r1"]

    saved = checkpointing.load_variables(tmp_path / "run")
    teacher = checkpointing.load_variables(tmp_path / "teacher")["params"]
    for a, b in zip(jax.tree.leaves(saved["teacher"]), jax.tree.leaves(teacher)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # loaded, then never updated
    # The fusion layers' cross-attention exists (HF BERT has none: it started from init).
    assert "cross_attention" in saved["params"]["text_encoder"]["fusion_layers"]["layers"]
    # The student and BERT started from their converted weights: 4 steps at lr <= 1e-4 move
    # them by far less than the distance between two random initialisations.
    for part, folder, path in (("vision_encoder", "student", ("patch_embed", "proj", "kernel")),
                               ("text_encoder", "bert", ("embeddings", "word_embeddings", "embedding"))):
        start = checkpointing.load_variables(tmp_path / folder)["params"]
        trained = saved["params"][part]
        for key in path:
            start, trained = start[key], trained[key]
        assert np.abs(np.asarray(trained) - np.asarray(start)).max() < 1e-2, part


def _official_stage2_state(seed=0) -> dict:
    """A stage-2 state dict with every key of the official layout, built from independent sources."""
    rng = np.random.default_rng(seed)
    state = {f"vision_encoder.{k}": v for k, v in np.load(FIXTURE / "student_state_dict.npz").items()}
    state.update({f"clip_teacher.{k}": v for k, v in np.load(FIXTURE / "teacher_state_dict.npz").items()})
    _, _, text = umt_text_reference(**TEXT)
    state.update(text)
    embed = 24
    state.update({
        "vision_encoder.pool_norm.weight": rng.normal(1, 0.1, 48), "vision_encoder.pool_norm.bias": rng.normal(0, 0.1, 48),
        "vision_proj.weight": rng.normal(0, 0.2, (embed, 48)), "vision_proj.bias": rng.normal(0, 0.2, embed),
        "text_proj.weight": rng.normal(0, 0.2, (embed, 32)), "text_proj.bias": rng.normal(0, 0.2, embed),
        "itm_head.weight": rng.normal(0, 0.2, (2, 32)), "itm_head.bias": rng.normal(0, 0.2, 2),
        "temp": np.array(0.05),
    })
    return {k: np.asarray(v, np.float32) if v.dtype.kind == "f" else v for k, v in state.items()}


@pytest.mark.parity
def test_stage2_converter_maps_every_key_and_evaluates(tmp_path):
    """convert (official layout) -> zero-shot retrieval evaluation, and the heads equal the torch formulas."""
    state = _official_stage2_state()
    np.savez(tmp_path / "stage2.npz", **state)
    spec = convert("umt_video_text", str(tmp_path / "stage2.npz"), str(tmp_path / "converted"), num_heads=4,
                   text_num_heads=TEXT["heads"], teacher_num_heads=4)
    assert spec["vision"]["clip_return_layers"] == 2 and spec["text"]["fusion_layer"] == TEXT["fusion_layer"]
    variables = checkpointing.load_variables(tmp_path / "converted")
    assert set(variables) == {"params", "teacher"}
    np.testing.assert_allclose(variables["params"]["temp"], 0.05)

    # Zero-shot retrieval: the evaluation model has no alignment heads and no teacher.
    config = retrieval.get_config("model=tiny,mode=zero_shot")
    _fit_fixture(config)
    config.model.embed_dim = 24
    results = evaluate(config, str(tmp_path / "converted"), devices=jax.devices()[:2])
    assert set(results) >= {"val_t2v_r1", "val_v2t_r10", "val_mean_recall_vtc"}

    # The projection and matching heads against their torch definitions.
    from vfm_jax.models import build_model

    model = build_model(spec)
    hidden = np.random.default_rng(1).normal(size=(3, 5, 32)).astype(np.float32)
    got = model.apply({"params": variables["params"]}, hidden, method="embed_text")
    want = hidden[:, 0] @ state["text_proj.weight"].T + state["text_proj.bias"]
    np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=-1, keepdims=True), atol=1e-5)


def test_stage2_converter_rejects_unknown_and_missing_keys(tmp_path):
    from vfm_jax.converters.umt import convert_video_text

    state = _official_stage2_state()
    with pytest.raises(ValueError, match="not mapped.*itm_head.extra"):
        convert_video_text({**state, "itm_head.extra": np.zeros(1, np.float32)}, **HEADS)
    with pytest.raises(KeyError, match="text_proj.bias"):
        convert_video_text({k: v for k, v in state.items() if k != "text_proj.bias"}, **HEADS)


@pytest.mark.slow
def test_tiny_retrieval_finetune_runs(tmp_path):
    config = retrieval.get_config("model=tiny,mode=finetune")
    config.mesh.data = 2
    results = train_and_evaluate(config, tmp_path / "run", devices=jax.devices()[:2])
    assert math.isfinite(results["train_loss_vtc"]) and math.isfinite(results["train_loss_vtm"])
    assert "train_loss_mlm" not in results and "train_loss_uta" not in results
    assert 0.0 <= results["val_t2v_r1"] <= 1.0
