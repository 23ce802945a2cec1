"""What the `python -m vfm_jax.<verb>` entry points share: logging, multi-process start-up, the result line."""
from __future__ import annotations

import logging as logging_std
import os

import jax
from absl import app, flags, logging


class _QuietLibraries(logging_std.Filter):
    """Drop the per-save INFO chatter of Orbax and grain; their warnings still show."""

    def filter(self, record):
        noisy = "/orbax/" in record.pathname or "/grain/" in record.pathname
        return record.levelno >= logging_std.WARNING or not noisy


def setup_logging():
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_QuietLibraries())


def define_distributed_flags():
    """Flags of `initialize_distributed`; an entry point defines them next to its own."""
    flags.DEFINE_enum(
        "distributed", "auto", ["auto", "on", "off"],
        "Start JAX's distributed runtime (jax.distributed.initialize). auto: when a flag below or "
        "JAX_COORDINATOR_ADDRESS is set, or JAX detects a cluster (Cloud TPU slice, SLURM, Open MPI, "
        "Kubernetes), else run as one process; on: always (fails if nothing says how); off: never.",
    )
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, reachable from every process.")
    flags.DEFINE_integer("num_processes", None, "Number of processes in the run.")
    flags.DEFINE_integer("process_id", None, "This process's index, in [0, num_processes).")
    flags.DEFINE_list("local_device_ids", None, "Devices this process drives (e.g. one GPU per process: its local rank).")


def initialize_distributed():
    """`jax.distributed.initialize` as the flags ask; values left unset come from JAX's cluster detection.

    Call before anything touches a JAX device. Starting the runtime also
    starts JAX's preemption service, which the train loop uses to stop every
    process at the same step.
    """
    mode = flags.FLAGS.distributed
    given = {
        "coordinator_address": flags.FLAGS.coordinator_address,
        "num_processes": flags.FLAGS.num_processes,
        "process_id": flags.FLAGS.process_id,
        "local_device_ids": [int(i) for i in flags.FLAGS.local_device_ids or []] or None,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if mode == "off":
        if given:
            raise app.UsageError(f"--distributed=off contradicts {sorted(given)}")
        return
    if mode == "auto" and not given and "JAX_COORDINATOR_ADDRESS" not in os.environ:
        try:
            jax.distributed.initialize()
        except ValueError as e:  # JAX found no cluster environment to read the values from
            logging.info("single process: no cluster environment detected (%s)", e)
            return
    else:
        jax.distributed.initialize(**given)
    logging.info("process %d of %d, %d local devices of %d",
                 jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())


def print_results(name: str, results: dict[str, float]):
    """`<name>: key=value ...` on stdout: the last line a run prints, for people and scripts."""
    print(f"{name}: " + " ".join(f"{k}={v:.4f}" for k, v in results.items()), flush=True)
