"""Kill and resume: SIGTERM at a random step, resume, and end bit-identical to an uninterrupted run."""
import random
import re
import signal
import subprocess
import sys

import jax
import numpy as np

from conftest import ROOT, run_module, subprocess_env
from vfm_jax import checkpointing

N = 20
ARGS = (
    "--config=configs/quickstart.py",
    f"--config.total_steps={2 * N}",
    f"--config.checkpoint_every={N}",
    "--config.log_every=1",
    "--config.eval_every=1000",
    "--config.data.val_examples=64",
)


def _train(workdir):
    proc = run_module("vfm_jax.train", *ARGS, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_sigterm_then_resume_is_bitwise_identical(tmp_path):
    reference = tmp_path / "reference"
    _train(reference)

    workdir = tmp_path / "preempted"
    kill_at = random.Random().randint(3, N)  # the first half leaves the signal time to land
    proc = subprocess.Popen(
        [sys.executable, "-m", "vfm_jax.train", *ARGS, f"--workdir={workdir}"],
        cwd=ROOT, env=subprocess_env(), stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    log = []
    for line in proc.stderr:
        log.append(line)
        logged = re.search(r"\] \[(\d+)\] .*steps_per_sec=", line)
        if logged and int(logged.group(1)) >= kill_at:
            proc.send_signal(signal.SIGTERM)
            break
    _, rest = proc.communicate(timeout=300)
    log = "".join(log) + rest
    assert proc.returncode == 0, log[-3000:]
    stopped = re.search(r"SIGTERM: saving the checkpoint of step (\d+)", log)
    assert stopped, log[-3000:]
    stopped_at = int(stopped.group(1))
    assert kill_at <= stopped_at < 2 * N
    assert checkpointing.read_metadata(workdir)["step"] == stopped_at

    _train(workdir)  # resumes from the SIGTERM checkpoint
    assert checkpointing.read_metadata(workdir)["step"] == 2 * N
    a, b = checkpointing.load_variables(reference), checkpointing.load_variables(workdir)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))



def test_a_resumed_run_reports_its_start_step_before_training(tiny_config, tmp_path, monkeypatch):
    """JAX's sync manager saves one past the step last reported, or at step 1 when a notice comes before
    any report. A run resumed at step 3 reports 3 before its first step, so a notice that lands then is
    saved at step 4 (without that report the manager would wait for a step 1 that never comes)."""
    from vfm_jax import train

    train.train_and_evaluate(tiny_config(total_steps=3), tmp_path)
    reported, sync = [], []

    def manager(step):  # the notice lands right after the first report
        reported.append(step)
        if not sync:
            sync.append(step + 1)
        return step == sync[0]

    monkeypatch.setattr(train.multihost_utils, "reached_preemption_sync_point", manager)
    train.train_and_evaluate(tiny_config(total_steps=6), tmp_path)
    assert reported[:2] == [3, 4]
    assert checkpointing.read_metadata(tmp_path)["step"] == 4
