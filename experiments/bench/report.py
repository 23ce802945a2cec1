"""What every benchmark shares: the machine it ran on, how a config's train step is timed, how JSON is written."""
from __future__ import annotations

import json
import os
import platform
import tempfile

import jax


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "devices": [d.device_kind for d in jax.devices()],
    }


def write(result: dict, out: str | None):
    """Print the result as JSON and, with `out`, write it there too."""
    text = json.dumps({**result, "machine": machine()}, indent=2)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


def train_step_time(config, steps: int) -> dict:
    """Run `config` for `steps` steps through the train loop; its own timing of the compiled step.

    Evaluation and checkpoints are off; the loop's steps/s excludes compilation.
    """
    config.total_steps = steps
    config.log_every = steps
    config.eval_every = 10**9
    config.checkpoint_every = 10**9
    config.evals = {}
    config.report = ()
    from vfm_jax.train import train_and_evaluate  # the GPU suite imports this module without the train loop's deps

    with tempfile.TemporaryDirectory() as workdir:
        results = train_and_evaluate(config, workdir)
    return {
        "step_time_ms": 1000.0 / results["steps_per_sec"],
        "clips_per_sec": results["examples_per_sec"],
        "xla_flops_per_step": results["flops_per_sec"] / results["steps_per_sec"],
    }
