"""Test-session setup: 8 fake CPU devices so sharding tests need no accelerator.

The flag must be set before JAX initialises its backend, hence at import time.
"""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import subprocess  # noqa: E402

import pytest  # noqa: E402


def _tiny_config(**overrides):
    """The quickstart config shrunk for tests: depth 1, small batches, no periodic evals."""
    from configs.quickstart import get_config

    config = get_config("steps=4")
    config.model.depth = 1
    config.batch_size = 16
    config.log_every = 1
    config.eval_every = 1000
    config.checkpoint_every = 1000
    config.data.val_examples = 64
    config.evals.val.batch_size = 32
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


@pytest.fixture
def tiny_config():
    """Factory: tiny_config(**{'mesh.fsdp': 8, 'total_steps': 3}) -> ConfigDict."""
    return _tiny_config


def run_module(*args, devices: int = 1, timeout: int = 600, **popen):
    """`python -m <args>` from the repo root with `devices` fake CPU devices; returns CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=subprocess_env(devices), capture_output=True, text=True,
        timeout=timeout, **popen,
    )


def subprocess_env(devices: int = 1) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONUNBUFFERED"] = "1"
    return env
