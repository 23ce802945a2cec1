"""UniFormerV2 fine-tuning: the model zoo's Kinetics runs (from CLIP, K710 post-pretraining, K400 from K710) and SSv2.

    python -m vfm_jax.train --workdir=DIR \
      --config=configs/uniformerv2/finetune.py:exp=k400_b16_f8x224,train_list=/data/k400/train.csv,val_list=/data/k400/val.csv,root=/data/k400,init=/ckpt/clip_b16

Each `exp` is one official folder, `exp/<dataset>/<exp>/run.sh` (whose values
override its config.yaml), and targets its MODEL_ZOO top-1 (views = frames x
crops x clips):

| exp                            | starts from            | top-1          |
|--------------------------------|------------------------|----------------|
| k400_b16_f8x224                | CLIP                   | 84.4 (8x3x4)   |
| k710_b16_f8x224                | CLIP                   | (K710 model)   |
| k710_l14_f8x224                | CLIP                   | (K710 model)   |
| k710_l14_f8x336                | CLIP                   | (K710 model)   |
| k400+k710_b16_f8x224           | K710 B/16              | 85.6 (8x3x4)   |
| k400+k710_l14_f8x224           | K710 L/14              | 88.8 (8x3x4)   |
| k400+k710_l14_f16x224          | K710 L/14              | 89.1 (16x3x4)  |
| k400+k710_l14_f32x224          | K710 L/14              | 89.3 (32x3x2)  |
| k400+k710_l14_f32x336          | K710 L/14@336          | 89.7 (32x3x2)  |
| k400+k710_l14_f64x336          | K710 L/14@336          | 90.0 (64x3x2)  |
| frozen_k710_l14_f8x336         | CLIP                   | (K710 model)   |
| frozen_k400_l14_f8x336         | CLIP                   | 86.7 (8x1x3)   |
| frozen_k400+k710_l14_f8x336    | frozen K710 L/14@336   | 87.8 (8x1x3)   |
| frozen_k400+k710_l14_f32x336   | frozen K710 L/14@336   | 88.9 (32x3x4)  |
| ssv2_b16_f16x224               | CLIP                   | 69.5 (16x3x1)  |
| ssv2_b16_f32x224               | CLIP                   | 70.7 (32x3x1)  |
| ssv2_l14_f16x224               | CLIP                   | 72.1 (16x3x1)  |
| ssv2_l14_f32x224               | CLIP                   | 73.0 (32x3x1)  |

Test views are those of the run.sh files (4 clips x 3 crops for Kinetics,
3 clips x 1 crop for the frozen runs, 1 clip x 3 crops for SSv2; MODEL_ZOO
lists some 32/64-frame runs as x2 clips), scored by softmax per view then
the mean over views (the official sum, same ranking).

Regimes: Kinetics runs have global UniBlocks on the last 4 layers and no
local MHRA; SSv2 runs add double local MHRA (BatchNorm3d, reduction 1.5),
temporal down-sampling of the patch conv, 8 (B) or 16 (L) global blocks,
drop path 0.2 (backbone) / 0.4 (global), and read each video twice per epoch
(`AUG.NUM_SAMPLE 2`: here a batch holds the same number of independent
clips, and an epoch is lines x 2 / batch steps). FROZEN runs train only the
global blocks and the head: the model stops the backbone's gradient and
`optim.no_decay` keeps weight decay off the backbone, so it does not move.

Shared recipe (slowfast defaults + run.sh): AdamW (0.9, 0.999), wd 0.05 on
matrices only, cosine to 1e-6 after a linear warm-up, gradient clipping 20,
cross-entropy without label smoothing, mixup or erasing; the lr of run.sh
unscaled (BASE_LR_SCALE_NUM_SHARDS False) for the global batch TRAIN.BATCH_SIZE
x NUM_SHARDS; TSN sparse sampling (the SSv2 loader `sth.py` samples the same
way), RandAugment rand-m7-n4-mstd0.5-inc1, Inception crop (0.08, 1), flip
except SSv2, slowfast mean/std (0.45, 0.225) rather than CLIP's. The L runs
with USE_CHECKPOINT rematerialise every block.

Not reproduced: the warm-up starting at 1e-6 (here 0); weight decay on the
position table and the query token (officially every weight but 1-D ones,
biases and BatchNorm decays; here kernels only); TEST_BEST (the official
test uses the best epoch); BatchNorm statistics over the global batch (the
official BatchNorm3d sees one GPU's batch).

Weights (`init=DIR`):
- from CLIP: the OpenAI ViT-B/16 (ViT-L/14, ViT-L/14@336 for L) visual tower
  as UMT's `extract_clip` writes it (the `visual.*` keys without the prefix,
  `ln_post` and `proj` kept) converted with `python -m vfm_jax.convert
  --model clip_visual --src vit_b16.pth --out DIR`; `init_from` copies
  CLIP_SUBTREES (`ln_post`/`proj` are not used). The
  temporal conv's outer slices, local MHRA, global blocks and head start
  from their init (the centre-inflated conv and zero-initialised MHRA, so
  the backbone starts as CLIP exactly).
- from K710: the released `k710_uniformerv2_*.pyth` converted with
  `python -m vfm_jax.convert --model uniformerv2 --src <pyth> --out DIR`;
  every subtree is copied and the head's rows are mapped to the K400
  classes: 'first:400' (the K710 list puts the K400 classes first, as the
  official loader assumes for 400 classes), or `class_rows=label_mixto400.json`
  (the official label map file, one K710 index per target class).

`exp=tiny` is a CPU-sized SSv2-regime model (local MHRA with BatchNorm,
temporal down-sampling, two global blocks) on the synthetic moving shapes
(direction label), from scratch or from a converted tiny CLIP (`init=DIR`).
"""
from typing import NamedTuple

import ml_collections

from configs._finetune import adamw, classification_config
from vfm_jax.config import parse_arg
from vfm_jax.models import PRESETS

# The CLIP visual tower's params inside UniFormerV2 (same names and shapes as `clip_vision`).
CLIP_SUBTREES = (
    "conv1", "class_embedding", "positional_embedding", "ln_pre",
    "encoder/blocks/norm1", "encoder/blocks/attn", "encoder/blocks/norm2", "encoder/blocks/mlp",
)
ALL_SUBTREES = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "encoder", "global", "head_norm", "head")
BACKBONE = r"^(conv1|conv1_temporal|class_embedding|positional_embedding|ln_pre|encoder)/"  # what FROZEN keeps fixed

MODELS = {"b16": "uniformerv2_b16", "l14": "uniformerv2_l14", "l14_336": "uniformerv2_l14_336"}
CLASSES = {"k400": 400, "k710": 710, "ssv2": 174}
# The official recipe: no label smoothing, mixup, cutmix or erasing; SlowFast's normalisation.
TASK = dict(normalization="slowfast")
# Global blocks of the SSv2 runs (RETURN_LIST); Kinetics runs use the presets' last 4 layers.
SSV2_GLOBAL = {"b16": tuple(range(4, 12)), "l14": tuple(range(8, 24))}


class Recipe(NamedTuple):
    """One run.sh: global batch = TRAIN.BATCH_SIZE x NUM_SHARDS; `init` 'clip' or 'k710'; remat = USE_CHECKPOINT."""

    model: str
    data: str
    frames: int
    batch: int
    lr: float
    epochs: int
    warmup: int  # epochs
    views: tuple[int, int]  # test clips x crops
    init: str
    frozen: bool = False
    remat: bool = False


RECIPES = {
    "k400_b16_f8x224": Recipe("b16", "k400", 8, 256, 1e-5, 55, 5, (4, 3), "clip"),
    "k710_b16_f8x224": Recipe("b16", "k710", 8, 256, 1e-5, 55, 5, (4, 3), "clip"),
    "k710_l14_f8x224": Recipe("l14", "k710", 8, 512, 1e-5, 40, 5, (4, 3), "clip"),
    "k710_l14_f8x336": Recipe("l14_336", "k710", 8, 256, 5e-6, 40, 5, (4, 3), "clip"),
    "k400+k710_b16_f8x224": Recipe("b16", "k400", 8, 256, 2e-6, 5, 1, (4, 3), "k710"),
    "k400+k710_l14_f8x224": Recipe("l14", "k400", 8, 256, 1.5e-6, 5, 1, (4, 3), "k710"),
    "k400+k710_l14_f16x224": Recipe("l14", "k400", 16, 256, 1.5e-6, 5, 1, (4, 3), "k710"),
    "k400+k710_l14_f32x224": Recipe("l14", "k400", 32, 128, 1.5e-6, 5, 1, (4, 3), "k710"),
    "k400+k710_l14_f32x336": Recipe("l14_336", "k400", 32, 128, 1.5e-6, 5, 1, (4, 3), "k710", remat=True),
    "k400+k710_l14_f64x336": Recipe("l14_336", "k400", 64, 128, 1.5e-6, 5, 1, (4, 3), "k710", remat=True),
    "frozen_k710_l14_f8x336": Recipe("l14_336", "k710", 8, 512, 8e-4, 50, 0, (3, 1), "clip", frozen=True),
    "frozen_k400_l14_f8x336": Recipe("l14_336", "k400", 8, 512, 8e-4, 50, 0, (3, 1), "clip", frozen=True),
    "frozen_k400+k710_l14_f8x336": Recipe("l14_336", "k400", 8, 512, 5e-5, 5, 1, (3, 1), "k710", frozen=True),
    "frozen_k400+k710_l14_f32x336": Recipe("l14_336", "k400", 32, 256, 5e-5, 5, 1, (3, 1), "k710", frozen=True),
    "ssv2_b16_f16x224": Recipe("b16", "ssv2", 16, 128, 4e-5, 22, 5, (1, 3), "clip"),
    "ssv2_b16_f32x224": Recipe("b16", "ssv2", 32, 128, 4e-5, 22, 5, (1, 3), "clip"),
    "ssv2_l14_f16x224": Recipe("l14", "ssv2", 16, 128, 2e-5, 22, 5, (1, 3), "clip", remat=True),
    "ssv2_l14_f32x224": Recipe("l14", "ssv2", 32, 128, 2e-5, 22, 5, (1, 3), "clip", remat=True),
}


def _count_lines(path: str) -> int:
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def get_config(arg=None):
    arg = parse_arg(arg, exp="k400_b16_f8x224", train_list="", val_list="", root="", init="", class_rows="")
    if arg.exp == "tiny":
        return _tiny_config(arg.init)
    if arg.exp not in RECIPES:
        raise ValueError(f"no official run exp={arg.exp!r}; available: {sorted(RECIPES)} and tiny")
    r = RECIPES[arg.exp]
    ssv2 = r.data == "ssv2"
    num_sample = 2 if ssv2 else 1
    steps_per_epoch = max(_count_lines(arg.train_list) * num_sample // r.batch, 1) if arg.train_list else 1

    config = classification_config("uniformerv2_finetune", r.batch, steps_per_epoch * r.epochs, **TASK)
    config.eval_every = 5 * steps_per_epoch  # multi-view evaluation is costly: every 5 epochs and at the end
    config.checkpoint_every = steps_per_epoch
    from_k710 = r.init == "k710"
    if arg.class_rows and not from_k710:
        raise ValueError(f"class_rows maps a K710 head; exp={arg.exp} starts from CLIP")
    config.init_from = ml_collections.ConfigDict(dict(
        checkpoint=arg.init, subtrees=ALL_SUBTREES if from_k710 else CLIP_SUBTREES,
        class_rows=(arg.class_rows or f"first:{CLASSES[r.data]}") if from_k710 else "", class_subtree="head",
    ))
    preset = PRESETS[MODELS[r.model]]
    size = preset["image_size"]
    clips, crops = r.views
    config.data = ml_collections.ConfigDict(dict(
        name="video_classification", train_list=arg.train_list, val_list=arg.val_list, root=arg.root,
        frames=r.frames, size=size, sampler="tsn", stride=1, crop="rrc", rrc_scale=(0.08, 1.0), flip=not ssv2,
        rand_augment=True, short_side=size, test_clips=clips, test_crops=crops, min_frames=1,
        max_failure_rate=0.05, num_workers=8,
    ))
    config.model = ml_collections.ConfigDict(dict(
        **preset, num_classes=CLASSES[r.data], frozen=r.frozen,
        global_mlp_dropout=0.5, head_dropout=0.5, attention_impl="auto", scan_layers=True,
        remat_policy="full" if r.remat else "none", dtype="bfloat16",
    ))
    # Kinetics: global blocks on the presets' last 4 layers only; SSv2: local MHRA, temporal down-sampling, more.
    config.model.update(dict(
        lmhra=ssv2, double_lmhra=True, temporal_downsample=ssv2, drop_path_rate=0.2 if ssv2 else 0.0,
        global_drop_path_rate=0.4 if ssv2 else 0.0,
    ))
    if ssv2:
        config.model.global_layers = SSV2_GLOBAL[r.model]
    config.optim = adamw(r.lr, 1e-6, r.warmup * steps_per_epoch, no_decay=BACKBONE if r.frozen else "", grad_clip=20.0)
    return config


def _tiny_config(init: str) -> ml_collections.ConfigDict:
    """The SSv2 regime at CPU size: 8-frame 32 px moving shapes, 4 direction classes."""
    config = classification_config("uniformerv2_finetune", batch=16, total_steps=400, **TASK)
    config.log_every = 50
    config.eval_every = 400
    config.checkpoint_every = 400
    config.init_from = ml_collections.ConfigDict(dict(
        checkpoint=init, subtrees=CLIP_SUBTREES, class_rows="", class_subtree="head",
    ))
    config.data = ml_collections.ConfigDict(dict(
        name="moving_shapes", frames=8, clip_frames=8, size=32, train_examples=10_000, val_examples=128,
        seed=0, num_workers=0,
    ))
    config.task.label = "direction"
    config.model = ml_collections.ConfigDict(dict(
        arch="uniformerv2", num_classes=4, width=32, depth=3, num_heads=4, patch_size=8, image_size=32,
        lmhra=True, double_lmhra=True, temporal_downsample=True, global_layers=(1, 2), drop_path_rate=0.0,
        global_drop_path_rate=0.0, global_mlp_dropout=0.0, head_dropout=0.0, frozen=False, attention_impl="auto",
        scan_layers=True, remat_policy="none", dtype="float32",
    ))
    config.optim = adamw(3e-3, 1e-5, 20, grad_clip=20.0)
    config.evals.val.batch_size = 32
    return config
