"""What every benchmark shares: the machine it ran on and how its JSON is written."""
from __future__ import annotations

import json
import os
import platform

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
