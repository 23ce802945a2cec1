"""What the `python -m vfm_jax.<verb>` entry points share: logging setup and the result line."""
from __future__ import annotations

import logging as logging_std

from absl import logging


class _QuietLibraries(logging_std.Filter):
    """Drop the per-save INFO chatter of Orbax and grain; their warnings still show."""

    def filter(self, record):
        noisy = "/orbax/" in record.pathname or "/grain/" in record.pathname
        return record.levelno >= logging_std.WARNING or not noisy


def setup_logging():
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_QuietLibraries())


def print_results(name: str, results: dict[str, float]):
    """`<name>: key=value ...` on stdout: the last line a run prints, for people and scripts."""
    print(f"{name}: " + " ".join(f"{k}={v:.4f}" for k, v in results.items()), flush=True)
