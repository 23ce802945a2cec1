"""Objectives: each task owns its model and exposes init, loss and eval metrics to the one loop."""
from __future__ import annotations

from vfm_jax.tasks.classification import ClassificationTask
from vfm_jax.tasks.harvest import HarvestTask
from vfm_jax.tasks.umt import UMTStage1Task, UMTStage2Task
from vfm_jax.tasks.viclip import ViCLIPTask
from vfm_jax.tasks.videomae import VideoMAETask

TASKS = {
    "classification": ClassificationTask,
    "harvest": HarvestTask,
    "umt_stage1": UMTStage1Task,
    "umt_stage2": UMTStage2Task,
    "viclip": ViCLIPTask,
    "videomae": VideoMAETask,
}


def build_task(config):
    if config.task.name not in TASKS:
        raise ValueError(f"config.task.name={config.task.name!r} is not one of {sorted(TASKS)}")
    return TASKS[config.task.name](config)
