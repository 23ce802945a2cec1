"""The quickstart as a user runs it (README command): learns direction with 8 frames, not with 1."""
import re

import pytest

from conftest import run_module


def _last_line_metric(stdout, name="val_top1"):
    last = stdout.strip().splitlines()[-1]
    match = re.fullmatch(rf"quickstart: {name}=([0-9.]+)", last)
    assert match, f"unexpected last line: {last!r}"
    return float(match.group(1))


def test_single_frame_control_stays_near_chance(tmp_path):
    """One frame carries no direction: top-1 must stay near chance (0.25) on 512 val clips."""
    proc = run_module("vfm_jax.train", "--config=configs/quickstart.py:frames=1", f"--workdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _last_line_metric(proc.stdout) < 0.40


@pytest.mark.slow
def test_quickstart_reaches_90_percent_and_evaluates(tmp_path):
    proc = run_module("vfm_jax.train", "--config=configs/quickstart.py", f"--workdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    top1 = _last_line_metric(proc.stdout)
    assert top1 >= 0.90
    assert list(tmp_path.glob("events.out.tfevents.*")), "no TensorBoard events written"
    assert (tmp_path / "checkpoints" / "600" / "params").is_dir()

    proc = run_module("vfm_jax.evaluate", "--config=configs/quickstart.py", f"--checkpoint={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert f"val_top1={top1:.4f}" in last, last
