"""Fine-tuning starts from another checkpoint's encoder: a converted UMT stage-1 student."""
import pathlib

import jax
import numpy as np
import pytest

from conftest import ROOT
from vfm_jax import checkpointing
from vfm_jax.convert import convert
from vfm_jax.train import train_and_evaluate

STUDENT = pathlib.Path(ROOT) / "tests" / "fixtures" / "umt_pretrain" / "student_state_dict.npz"


def _config(tiny_config, checkpoint):
    import ml_collections

    config = tiny_config(total_steps=1, **{"model.width": 48, "model.depth": 3, "model.num_heads": 4,
                                           "optim.lr": 0.0, "optim.min_lr": 0.0})
    config.init_from = ml_collections.ConfigDict(dict(checkpoint=str(checkpoint), subtrees=("patch_embed", "encoder")))
    return config


def test_classifier_starts_from_a_converted_stage1_student(tiny_config, tmp_path):
    convert("umt_pretrain", str(STUDENT), str(tmp_path / "student"), num_heads=4)
    train_and_evaluate(_config(tiny_config, tmp_path / "student"), tmp_path / "run")  # lr 0: weights stay
    student = checkpointing.load_variables(tmp_path / "student")["params"]
    run = checkpointing.load_variables(tmp_path / "run")["params"]
    for key in ("patch_embed", "encoder"):
        for a, b in zip(jax.tree.leaves(run[key]), jax.tree.leaves(student[key])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert "head" in run and "head" not in student


def test_init_from_mismatch_fails_naming_the_subtree(tiny_config, tmp_path):
    convert("umt_pretrain", str(STUDENT), str(tmp_path / "student"), num_heads=4)
    config = _config(tiny_config, tmp_path / "student")
    config.model.width = 64
    with pytest.raises(ValueError, match="params\\['patch_embed'\\]"):
        train_and_evaluate(config, tmp_path / "run")
    config = _config(tiny_config, tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="init_from"):
        train_and_evaluate(config, tmp_path / "run2")
    assert not (tmp_path / "run2").exists()


CLASSIFIER = pathlib.Path(ROOT) / "tests" / "fixtures" / "umt_finetune" / "state_dict.npz"


@pytest.mark.parametrize("rows", ["first:4", "json"])
def test_head_rows_are_selected_from_a_larger_classifier(tiny_config, tmp_path, rows):
    """K400 from K710: a 10-class converted classifier starts a 4-class run with the chosen head rows."""
    import json

    import ml_collections

    convert("umt_classifier", str(CLASSIFIER), str(tmp_path / "k10"), num_heads=4)
    wanted = np.arange(4) if rows == "first:4" else np.asarray([9, 0, 3, 5])
    if rows == "json":
        rows = str(tmp_path / "label_map.json")
        (tmp_path / "label_map.json").write_text(json.dumps(wanted.tolist()))
    config = tiny_config(total_steps=1, **{"model.depth": 2, "data.frames": 4, "optim.lr": 0.0, "optim.min_lr": 0.0})
    subtrees = ("patch_embed", "encoder", "fc_norm", "head")
    config.init_from = ml_collections.ConfigDict(dict(
        checkpoint=str(tmp_path / "k10"), subtrees=subtrees, class_rows=rows, class_subtree="head",
    ))
    train_and_evaluate(config, tmp_path / "run")
    source = checkpointing.load_variables(tmp_path / "k10")["params"]
    run = checkpointing.load_variables(tmp_path / "run")["params"]
    np.testing.assert_array_equal(run["head"]["kernel"], np.asarray(source["head"]["kernel"])[:, wanted])
    np.testing.assert_array_equal(run["head"]["bias"], np.asarray(source["head"]["bias"])[wanted])
    np.testing.assert_array_equal(run["fc_norm"]["scale"], source["fc_norm"]["scale"])


def test_head_rows_fail_clearly(tiny_config, tmp_path):
    import ml_collections

    convert("umt_classifier", str(CLASSIFIER), str(tmp_path / "k10"), num_heads=4)
    config = tiny_config(total_steps=1, **{"model.depth": 2, "data.frames": 4})
    for rows, message in [("first:11", "out of range"), ("nonsense", "neither 'first:N'"),
                          ("first:4", "has shapes")]:
        subtrees = ("patch_embed", "encoder", "fc_norm", "head")
        if message == "has shapes":  # no selection: the 10-row head does not fit 4 classes
            rows = ""
        config.init_from = ml_collections.ConfigDict(dict(
            checkpoint=str(tmp_path / "k10"), subtrees=subtrees, class_rows=rows, class_subtree="head",
        ))
        with pytest.raises(ValueError, match=message):
            train_and_evaluate(config, tmp_path / f"run_{message[:3]}")
