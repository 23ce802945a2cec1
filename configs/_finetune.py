"""What every video-classification fine-tuning config shares (UMT, UniFormerV2, InternVideo CMA):
the run fields, a data-parallel mesh, the classification task with its recipe fields, a val
evaluator, and AdamW with a warm-up cosine schedule."""
from __future__ import annotations

import ml_collections


def classification_config(name: str, batch: int, total_steps: int, **task) -> ml_collections.ConfigDict:
    """`task` sets the recipe (label smoothing, normalisation preset, mixup/cutmix, random erasing, ...)."""
    config = ml_collections.ConfigDict()
    config.name = name
    config.seed = 0
    config.batch_size = batch
    config.total_steps = total_steps
    config.log_every = 50
    config.keep_checkpoints = 3
    config.report = ("val_top1",)
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.task = ml_collections.ConfigDict({
        "name": "classification", "label": "label", "label_smoothing": 0.0, "normalization": "imagenet",
        "mixup": 0.0, "cutmix": 0.0, "mixup_switch_prob": 0.5, "random_erasing": 0.0, **task,
    })
    config.evals = ml_collections.ConfigDict({
        "val": ml_collections.ConfigDict(dict(type="classification", split="val", batch_size=32)),
    })
    return config


def adamw(lr: float, min_lr: float, warmup_steps: int, *, layer_decay: float = 1.0, no_decay: str = "",
          grad_clip: float = 0.0) -> ml_collections.ConfigDict:
    """AdamW (0.9, 0.999), weight decay 0.05 (off for `no_decay` params), cosine from `lr` to `min_lr`."""
    return ml_collections.ConfigDict(dict(
        name="adamw", lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=0.05, no_decay=no_decay, grad_clip=grad_clip, layer_decay=layer_decay,
    ))
