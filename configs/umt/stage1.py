"""UMT stage 1: unmasked-token alignment of a video ViT with a frozen CLIP teacher on K710.

    python -m vfm_jax.train --workdir=DIR \
      --config=configs/umt/stage1.py:model=B16,train_list=/data/k710/train.csv,root=/data/k710 \
      --config.task.teacher_checkpoint=/ckpt/clip_b16_visual

Official recipe (`single_modality/exp/pretraining/{b16,l16}_ptk710_f8_res224.sh`):
8 frames sparse-sampled (8 segments), MultiScaleCrop (1, .875, .75, .66) to
224 + flip, ImageNet mean/std for student AND teacher; attention-guided
masking 80%; align the last 6 layers; AdamW beta (0.9, 0.95), wd 0.05,
lr 1.5e-4 * batch / 256 (1.2e-3 at batch 2048), min lr 1e-5 * batch / 256,
cosine over 201 epochs with 40 warm-up epochs; drop path 0.1 (B) / 0.2 (L).
The teacher is OpenAI CLIP ViT-B/16 (B) or ViT-L/14 fed 196 px (L),
converted with `python -m vfm_jax.convert --model clip_visual`.
Targets: the stage-1 checkpoints of MODEL_ZOO, which fine-tune to K400 top-1
87.4 (B/16) and 90.3 (L/16) with 8x3x4 views. `epochs` and the number of
lines of `train_list` give the step count. `model=tiny` is a CPU-sized
variant on the synthetic data for tests.
"""
import ml_collections

from vfm_jax.config import parse_arg
from vfm_jax.models import PRESETS

TEACHERS = {
    "B16": dict(arch="clip_vision", width=768, depth=12, num_heads=12, patch_size=16, image_size=224, output_dim=512),
    "L16": dict(arch="clip_vision", width=1024, depth=24, num_heads=16, patch_size=14, image_size=196, output_dim=768),
    # The teacher of tests/fixtures/umt_pretrain: 24 px, patch 6 -> the student's 4x4 grid at 32 px.
    "tiny": dict(arch="clip_vision", width=32, depth=4, num_heads=4, patch_size=6, image_size=24, output_dim=24),
}
STUDENTS = {
    "B16": dict(PRESETS["umt_b16"], drop_path_rate=0.1),
    "L16": dict(PRESETS["umt_l16"], drop_path_rate=0.2),
    "tiny": dict(arch="video_vit", width=32, depth=2, num_heads=2, patch_size=8, tubelet_size=1, drop_path_rate=0.1),
}


def _count_lines(path: str) -> int:
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def get_config(arg=None):
    arg = parse_arg(arg, model="B16", train_list="", root="", frames=8, batch=2048, epochs=201, warmup_epochs=40)
    if arg.model not in TEACHERS:
        raise ValueError(f"model={arg.model!r} is not one of {sorted(TEACHERS)}")
    tiny = arg.model == "tiny"
    steps_per_epoch = 4 if tiny or not arg.train_list else max(_count_lines(arg.train_list) // arg.batch, 1)

    config = ml_collections.ConfigDict()
    config.name = "umt_stage1"
    config.seed = 0
    config.batch_size = 8 if tiny else arg.batch
    config.total_steps = arg.epochs * steps_per_epoch if not tiny else 4
    config.log_every = 1 if tiny else 50
    config.eval_every = 10**9  # stage 1 has no evaluator; fine-tuning measures it
    config.checkpoint_every = 2 if tiny else 1000
    config.keep_checkpoints = 2
    config.report = ()
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    if tiny:
        config.data = ml_collections.ConfigDict(dict(
            name="moving_shapes", frames=4, clip_frames=8, size=32, train_examples=256,
            seed=0, num_workers=0,
        ))
    else:
        config.data = ml_collections.ConfigDict(dict(
            name="video_classification", train_list=arg.train_list, root=arg.root, frames=arg.frames,
            size=224, sampler="tsn", stride=1, crop="multiscale", rrc_scale=(0.08, 1.0), flip=True,
            rand_augment=False, short_side=224, test_clips=1, test_crops=1, min_frames=1,
            max_failure_rate=0.05, num_workers=8,
        ))

    student = dict(STUDENTS[arg.model])
    student["arch"] = "umt_student"
    config.model = ml_collections.ConfigDict(dict(
        **student, clip_output_dim=TEACHERS[arg.model]["output_dim"],
        clip_return_layers=2 if tiny else 6, clip_return_interval=1,
        attention_impl="auto", scan_layers=True, remat_policy="none", dtype="float32",
    ))
    config.task = ml_collections.ConfigDict(dict(
        name="umt_stage1", mask_ratio=0.8, normalization="imagenet", teacher_checkpoint="",
        teacher=ml_collections.ConfigDict(dict(
            TEACHERS[arg.model], attention_impl="auto", scan_layers=True, dtype="float32",
        )),
    ))

    base_lr, min_lr = 1.5e-4 * config.batch_size / 256, 1e-5 * config.batch_size / 256
    config.optim = ml_collections.ConfigDict(dict(
        name="adamw", lr=base_lr, min_lr=min_lr, warmup_steps=arg.warmup_epochs * steps_per_epoch if not tiny else 1,
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05, no_decay="", grad_clip=0.0, layer_decay=1.0,
    ))
    config.evals = ml_collections.ConfigDict()
    return config
