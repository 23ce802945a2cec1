"""Quickstart: a tiny video ViT learns the motion direction of the synthetic moving shapes.

    python -m vfm_jax.train --config=configs/quickstart.py --workdir=/tmp/quickstart

Expected: validation top-1 >= 0.90 (chance 0.25) in a few minutes on a 2-core
CPU; the last line printed is `quickstart: val_top1=<value>`.

Variants (`configs/quickstart.py:frames=1`): `frames` frames sampled from
each 8-frame clip. With `frames=1` the direction cannot be seen and top-1
stays near chance: the control that shows the model uses time.
"""
import ml_collections

from vfm_jax.config import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, frames=8, steps=600)
    config = ml_collections.ConfigDict()
    config.name = "quickstart"
    config.seed = 0
    config.total_steps = arg.steps
    config.batch_size = 32
    config.log_every = 50
    config.eval_every = 200
    config.checkpoint_every = 200
    config.keep_checkpoints = 2
    config.report = ("val_top1",)

    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    config.data = ml_collections.ConfigDict(dict(
        name="moving_shapes", frames=arg.frames, clip_frames=8, size=32,
        train_examples=50_000, val_examples=512, seed=0, num_workers=0,
    ))

    config.task = ml_collections.ConfigDict(dict(
        name="classification", label="direction", label_smoothing=0.0, normalization="imagenet",
        mixup=0.0, cutmix=0.0, mixup_switch_prob=0.5, random_erasing=0.0,
    ))

    config.model = ml_collections.ConfigDict(dict(
        arch="video_vit", num_classes=4, width=64, depth=3, num_heads=4, mlp_ratio=4.0,
        patch_size=8, tubelet_size=1, drop_path_rate=0.0, dropout=0.0, head_dropout=0.0,
        attention_impl="auto", scan_layers=True, remat_policy="none", dtype="float32",
    ))

    config.optim = ml_collections.ConfigDict(dict(
        name="adamw", lr=1e-3, min_lr=1e-5, warmup_steps=50, b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=0.05, no_decay="", grad_clip=1.0, layer_decay=1.0,
    ))

    config.evals = ml_collections.ConfigDict({
        "val": ml_collections.ConfigDict(dict(type="classification", split="val", batch_size=64)),
    })
    return config
