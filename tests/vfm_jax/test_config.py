"""Config loading: variants, locked overrides, and failures before anything is written."""
import pytest

from conftest import run_module
from vfm_jax.config import parse_arg


def test_parse_arg_types_and_defaults():
    arg = parse_arg("frames=16,flag=false,lr=0.5", frames=8, flag=True, lr=1.0, model="B16")
    assert (arg.frames, arg.flag, arg.lr, arg.model) == (16, False, 0.5, "B16")
    assert isinstance(arg.frames, int)
    assert parse_arg(None, frames=8).frames == 8


@pytest.mark.parametrize(
    "arg, match",
    [("framez=16", "framez"), ("frames=sixteen", "frames"), ("flag=maybe", "flag"), ("frames", "frames")],
)
def test_parse_arg_rejects_bad_variants(arg, match):
    with pytest.raises(ValueError, match=match):
        parse_arg(arg, frames=8, flag=True)


@pytest.mark.parametrize(
    "flag, key",
    [
        ("--config.modle.width=32", "modle"),  # unknown section
        ("--config.model.widht=32", "widht"),  # unknown key
        ("--config.total_steps=abc", "total_steps"),  # wrong type
        ("--config.model.attention_impl=flash", "attention impl"),  # invalid value
        ("--config.task.label=directoin", "directoin"),  # field the data lacks
    ],
)
def test_bad_override_fails_before_writing(tmp_path, flag, key):
    workdir = tmp_path / "run"
    proc = run_module(
        "vfm_jax.train", "--config=configs/quickstart.py", f"--workdir={workdir}", flag, timeout=300
    )
    assert proc.returncode != 0
    assert key in proc.stderr, proc.stderr[-3000:]
    assert not workdir.exists()


def test_unknown_variant_fails_before_writing(tmp_path):
    workdir = tmp_path / "run"
    proc = run_module(
        "vfm_jax.train", "--config=configs/quickstart.py:framez=2", f"--workdir={workdir}", timeout=300
    )
    assert proc.returncode != 0
    assert "framez" in proc.stderr, proc.stderr[-3000:]
    assert not workdir.exists()
