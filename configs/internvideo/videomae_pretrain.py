"""InternVideo's masked video encoder: VideoMAE pre-training on UnlabeledHybrid.

    python -m vfm_jax.train --workdir=DIR \
      --config=configs/internvideo/videomae_pretrain.py:model=H16,train_list=/data/hybrid/train.csv,root=/data/hybrid

Recipe of InternVideo1 `Pretrain/VideoMAE` (`run_mae_pretraining.py` and the
scripts in `scripts/pretrain/`): 16 frames 4 apart (dense sampling from a
random start), TSN MultiScaleCrop (1, .875, .75, .66) to 224 without flip,
ImageNet mean/std; tube masking 0.9; targets are per-token normalised
pixels, MSE on the masked tokens; AdamW (0.9, 0.95), wd 0.05, no grad clip,
drop path 0, lr and min lr scaled by (videos per step) / 256, linear
warm-up then cosine.

Variants, one per script `scripts/pretrain/slurm_train_vit_{h,l,b}_hybrid_pt.sh`:

| variant | encoder  | decoder (width, blocks, heads) | GPUs x videos x views | lr (min lr), unscaled | epochs (warm-up) |
|---------|----------|--------------------------------|-----------------------|-----------------------|------------------|
| H16     | ViT-H/16 | 512, 8, 8                      | 64 x 6 x 4            | 1e-3 (5e-5)           | 301 (15)         |
| L16     | ViT-L/16 | 512, 12, 8                     | 48 x 24 x 1           | 1.5e-4 (1e-5)         | 801 (40)         |
| B16     | ViT-B/16 | 384, 4, 6                      | 32 x 64 x 1           | 1.5e-4 (1e-5)         | 801 (40)         |

H16 is the masked encoder of the InternVideo paper, trained on
`hybridv2_sp_train.csv` (B16 and L16: `hybrid_1m_sp_train.csv`). Its weights
are not released, and the paper's K400 91.1 / SSv2 77.2 belong to the whole
system (with InternVideo-MM, cross-model attention and an ensemble), so it
has no standalone target here. B16 targets the released
`vit_b_hybrid_pt_800e.pth`, which fine-tunes to K400 top-1 81.52 (16x5x3
views); convert it with `python -m vfm_jax.convert --model videomae` and
fine-tune with `init_from` subtrees `patch_embed` + `encoder` (tubelet-2
`videomae_b16` classifier).

Views: the H16 script reads each video once and augments it 4 times
(`--num_sample 4`, repeated augmentation) while its lr scaling and epoch
length count videos. Here a batch holds the same number of clips
(64 * 6 * 4 = 1536) as independent draws, with the script's lr and step
count (epochs * lines / 384). `train_list` holds one `path,label` line per
video (the label is not used).

Not reproduced: the warm-up starting at (5e-6 for H16, else 1e-6) *
videos / 256 (here 0); the official fp16 autocast (here `model.dtype`,
bf16 by default, for the whole model).

`model=tiny` is a CPU-sized variant on the synthetic moving shapes (4
frames, 32 px) for tests.
"""
import ml_collections

from vfm_jax.config import parse_arg
from vfm_jax.models import PRESETS

# Per variant: the script's GPUs, per-GPU videos, views per video, lr and min lr before
# scaling, epochs, warm-up epochs.
RECIPES = {
    "H16": dict(preset="videomae_pretrain_h16", gpus=64, batch=6, views=4, lr=1e-3, min_lr=5e-5,
                epochs=301, warmup=15),
    "L16": dict(preset="videomae_pretrain_l16", gpus=48, batch=24, views=1, lr=1.5e-4, min_lr=1e-5,
                epochs=801, warmup=40),
    "B16": dict(preset="videomae_pretrain_b16", gpus=32, batch=64, views=1, lr=1.5e-4, min_lr=1e-5,
                epochs=801, warmup=40),
}
# Model keys every variant shares: no drop path (the scripts' default), no remat (no `--with_checkpoint`).
MODEL_COMMON = dict(drop_path_rate=0.0, attention_impl="auto", scan_layers=True, remat_policy="none")
TINY_MODEL = dict(
    arch="videomae_pretrain", width=32, depth=2, num_heads=2, patch_size=8, tubelet_size=2,
    decoder_width=16, decoder_depth=1, decoder_num_heads=2,
)


def _count_lines(path: str) -> int:
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def get_config(arg=None):
    arg = parse_arg(arg, model="H16", train_list="", root="")
    if arg.model == "tiny":
        return _tiny_config()
    if arg.model not in RECIPES:
        raise ValueError(f"model={arg.model!r} is not one of {sorted(RECIPES)} or 'tiny'")
    recipe = RECIPES[arg.model]
    videos = recipe["gpus"] * recipe["batch"]
    steps_per_epoch = max(_count_lines(arg.train_list) // videos, 1) if arg.train_list else 1
    config = _common(
        batch=videos * recipe["views"], total_steps=recipe["epochs"] * steps_per_epoch,
        lr=recipe["lr"] * videos / 256, min_lr=recipe["min_lr"] * videos / 256,
        warmup_steps=recipe["warmup"] * steps_per_epoch,
    )
    config.log_every = 50
    config.checkpoint_every = 1000
    config.data = ml_collections.ConfigDict(dict(
        name="video_classification", train_list=arg.train_list, root=arg.root, frames=16, size=224,
        sampler="dense", stride=4, crop="multiscale", rrc_scale=(0.08, 1.0), flip=False,
        rand_augment=False, short_side=224, test_clips=1, test_crops=1, min_frames=1,
        max_failure_rate=0.05, num_workers=8,
    ))
    # bf16 compute: the official runs train under fp16 autocast.
    config.model = ml_collections.ConfigDict(dict(**PRESETS[recipe["preset"]], **MODEL_COMMON, dtype="bfloat16"))
    return config


def _tiny_config() -> ml_collections.ConfigDict:
    config = _common(batch=8, total_steps=20, lr=1e-3, min_lr=1e-5, warmup_steps=1)
    config.log_every = 1
    config.checkpoint_every = 10
    config.data = ml_collections.ConfigDict(dict(
        name="moving_shapes", frames=4, clip_frames=8, size=32, train_examples=256, seed=0, num_workers=0,
    ))
    config.model = ml_collections.ConfigDict(dict(**TINY_MODEL, **MODEL_COMMON, dtype="float32"))
    return config


def _common(*, batch: int, total_steps: int, lr: float, min_lr: float, warmup_steps: int) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = "internvideo_videomae_pretrain"
    config.seed = 0
    config.batch_size = batch
    config.total_steps = total_steps
    config.eval_every = 10**9  # no evaluator: fine-tuning measures the encoder
    config.keep_checkpoints = 2
    config.report = ()
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.task = ml_collections.ConfigDict(dict(
        name="videomae", mask_ratio=0.9, normalization="imagenet", normalize_target=True,
    ))
    config.optim = ml_collections.ConfigDict(dict(
        name="adamw", lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, b1=0.9, b2=0.95, eps=1e-8,
        weight_decay=0.05, no_decay="", grad_clip=0.0, layer_decay=1.0,
    ))
    config.evals = ml_collections.ConfigDict()
    return config
