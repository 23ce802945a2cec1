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
