"""Video classification on your own videos: a Kinetics-style list of `path,label` lines.

    python -m vfm_jax.train --workdir=DIR \
      --config=configs/video_classification.py:train_list=/data/k400/train.csv,val_list=/data/k400/val.csv,root=/data/k400/videos,classes=400

Recipe of UMT/VideoMAE fine-tuning: 8 TSN-sampled frames, RandomResizedCrop
224 + flip, ImageNet mean/std; test with 2 temporal clips x 3 crops of the
224 short side, softmax per view then mean. From scratch by default, or
from converted pre-training weights with `--config.init_from.checkpoint=DIR`;
it reproduces no published number yet (the model-zoo fine-tuning configs
come with their own files). `model` picks a preset of
vfm_jax.models.PRESETS (`umt_b16` by default, `vit_tiny_video` for a quick run).
"""
import ml_collections

from vfm_jax.config import parse_arg
from vfm_jax.models import PRESETS


def get_config(arg=None):
    arg = parse_arg(
        arg, train_list="", val_list="", root="", classes=400, model="umt_b16", frames=8,
        size=224, batch=64, steps=10_000,
    )
    classifiers = sorted(name for name, spec in PRESETS.items() if spec["arch"] == "video_vit")
    if arg.model not in classifiers:
        raise ValueError(f"model={arg.model!r} is not one of the video classifiers {classifiers}")
    config = ml_collections.ConfigDict()
    config.name = "video_classification"
    config.seed = 0
    config.total_steps = arg.steps
    config.batch_size = arg.batch
    config.log_every = 50
    config.eval_every = 2_000
    config.checkpoint_every = 1_000
    config.keep_checkpoints = 3
    config.report = ("val_top1",)

    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # Fine-tune from pre-training: e.g. a UMT stage-1 student converted with
    # `python -m vfm_jax.convert --model umt_pretrain` (its patch_embed and encoder).
    config.init_from = ml_collections.ConfigDict(dict(
        checkpoint="", subtrees=("patch_embed", "encoder"), class_rows="", class_subtree="head",
    ))

    config.data = ml_collections.ConfigDict(dict(
        name="video_classification", train_list=arg.train_list, val_list=arg.val_list,
        root=arg.root, frames=arg.frames, size=arg.size, sampler="tsn", stride=1, crop="rrc",
        rrc_scale=(0.08, 1.0), flip=True, rand_augment=False, short_side=arg.size,
        test_clips=2, test_crops=3, min_frames=1, max_failure_rate=0.05, num_workers=8,
    ))

    config.task = ml_collections.ConfigDict(dict(
        name="classification", label="label", label_smoothing=0.1, normalization="imagenet",
        mixup=0.0, cutmix=0.0, mixup_switch_prob=0.5, random_erasing=0.0,  # UMT: 0.8, 1.0, 0.25
    ))

    config.model = ml_collections.ConfigDict(dict(
        **PRESETS[arg.model], num_classes=arg.classes, drop_path_rate=0.1, dropout=0.0,
        head_dropout=0.0, attention_impl="auto", scan_layers=True, remat_policy="none",
        dtype="float32",
    ))

    config.optim = ml_collections.ConfigDict(dict(
        name="adamw", lr=5e-4, min_lr=1e-6, warmup_steps=500, b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=0.05, no_decay="", grad_clip=0.0, layer_decay=1.0,
    ))

    config.evals = ml_collections.ConfigDict({
        "val": ml_collections.ConfigDict(dict(type="classification", split="val", batch_size=arg.batch)),
    })
    return config
