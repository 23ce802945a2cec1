"""Resuming: a corrupt or half-written newest step is skipped and the run continues bit-exactly."""
import logging
import shutil

import jax
import numpy as np
import pytest

from vfm_jax import checkpointing
from vfm_jax.train import train_and_evaluate


def _corrupt(step_dir, how):
    if how == "truncated":  # every file of the params item cut to zero bytes
        for f in (step_dir / "params").rglob("*"):
            if f.is_file():
                f.write_bytes(b"")
    elif how == "missing_item":  # the train item never got written
        shutil.rmtree(step_dir / "train")
    elif how == "garbage_metadata":
        (step_dir / "params" / "_METADATA").write_text("{not json")
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["truncated", "missing_item", "garbage_metadata"])
def test_corrupt_newest_step_is_skipped(tiny_config, tmp_path, caplog, how):
    config = tiny_config(total_steps=6, checkpoint_every=2, keep_checkpoints=3)
    train_and_evaluate(config, tmp_path)
    uninterrupted = checkpointing.load_variables(tmp_path)
    ckpt_dir = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir() if p.name.isdigit()) == ["2", "4", "6"]
    # The run "died" while writing step 6 (a temporary folder is left) after step 4 got corrupted.
    shutil.rmtree(ckpt_dir / "6")
    (ckpt_dir / "6.orbax-checkpoint-tmp-1234").mkdir()
    _corrupt(ckpt_dir / "4", how)

    with caplog.at_level(logging.WARNING):
        train_and_evaluate(config, tmp_path)
    assert "checkpoint step 4" in caplog.text and "cannot be restored" in caplog.text
    assert len(list((tmp_path / "corrupt_checkpoints").iterdir())) == 1
    # Resumed from step 2, so the result equals the run that was never interrupted.
    resumed = checkpointing.load_variables(tmp_path)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_metadata_records_layout(tiny_config, tmp_path):
    train_and_evaluate(tiny_config(total_steps=1), tmp_path)
    meta = checkpointing.read_metadata(tmp_path)
    assert meta["scan_layers"] is True and meta["model"]["arch"] == "video_vit"
    assert meta["step"] == 1 and meta["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
    assert meta["param_dtype"] == "float32" and meta["compute_dtype"] == "float32"


def test_two_source_run_resumes_identically(tiny_config, tmp_path):
    """Batches of a second corpus (another batch size) alternate with config.data's; a resume replays both."""
    import ml_collections

    from data.pipeline import SourceMix

    config = tiny_config(total_steps=6, checkpoint_every=2, keep_checkpoints=3, **{"data.train_examples": 64})
    config.extra_train_data = ml_collections.ConfigDict(dict(other=dict(config.data.to_dict(), batch_size=8, seed=7)))
    # 64 / 16 = 4 main batches and 64 / 8 = 8 others per round: the first 6 steps use both.
    order = SourceMix({"data": None, "other": None}, {"data": 4, "other": 8}, config.seed).order(0)
    assert set(order[:6].tolist()) == {0, 1}
    train_and_evaluate(config, tmp_path)
    uninterrupted = checkpointing.load_variables(tmp_path)
    for step in ("4", "6"):
        shutil.rmtree(tmp_path / "checkpoints" / step)
    train_and_evaluate(config, tmp_path)  # resumes at step 2, mid-round
    resumed = checkpointing.load_variables(tmp_path)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="extra_train_data.other.batch_size=6"):
        config.extra_train_data.other.batch_size = 6
        train_and_evaluate(config, tmp_path / "bad")
