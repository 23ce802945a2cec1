"""UMT fine-tuning for action recognition: the single-modality model zoo (K710, K400, SSv2).

    python -m vfm_jax.train --workdir=DIR \
      --config=configs/umt/finetune.py:model=B16,dataset=k710,train_list=/data/k710/train.csv,val_list=/data/k710/val.csv,root=/data/k710,init=/ckpt/umt_b16_stage1

Each variant is one official script, `single_modality/exp/finetuning/<script>`,
and targets its MODEL_ZOO top-1 (views = frames x crops x clips):

| variant                          | script                                      | top-1          |
|----------------------------------|---------------------------------------------|----------------|
| model=B16,dataset=k710           | k710/b16_ptk710_ftk710_f8_res224.sh         | 81.9 (8x3x4)   |
| model=L16,dataset=k710           | k710/l16_ptk710_ftk710_f8_res224.sh         | 86.0 (8x3x4)   |
| model=B16,dataset=k400           | k400/b16_ptk710_ftk710_ftk400_f8_res224.sh  | 87.4 (8x3x4)   |
| model=L16,dataset=k400           | k400/l16_ptk710_ftk710_ftk400_f8_res224.sh  | 90.3 (8x3x4)   |
| model=L16,dataset=k400,frames=16 | k400/l16_ptk710_ftk710_ftk400_f16_res224.sh | 90.6 (16x3x4)  |
| model=B16,dataset=ssv2           | ssv2/b16_ptk710_ftssv2_f8_res224.sh         | 70.8           |
| model=L16,dataset=ssv2           | ssv2/l16_ptk710_ftssv2_f8_res224.sh         | 74.7           |

Shared recipe (`run_class_finetuning.py` defaults): AdamW (0.9, 0.999), wd
0.05 on matrices only, cosine to min lr 1e-6 * batch / 256 after linear
warm-up, layer decay 0.75 unless the script says (0.85 for L), drop path 0.1
unless the script says (0.2 for L), label smoothing 0.1, mixup 0.8 / cutmix
1.0 with switch prob 0.5 (one lambda per batch), RandAugment
rand-m7-n4-mstd0.5-inc1, RandomResizedCrop (0.08, 1) to 224, flip (not for
SSv2), ImageNet mean/std, random erasing p 0.25 (one box per clip, pixel
noise, `task.random_erasing`). Test: resize the short side to 224,
`test_clips` clips x `test_crops` crops, softmax averaged over views.

Batch and lr: the scripts run 16 GPUs x `--batch_size` videos, each video read
twice with its own augmentation (`--num_sample 2`, repeated augmentation), and
scale lr = lr * (16 * batch_size) * 2 / 256. Here a batch holds the same
number of clips, 16 * batch_size * 2 (512, or 256 for 16 frames) independent
draws, with the same lr (lr_script * batch / 256) and the same step count
(epochs * lines * 2 / batch).

Not reproduced: the head's init scale 0.001; the
warm-up starting at 1e-6 * batch / 256 (here 0); mixing within each GPU's
batch (here the global batch is reversed); `--test_best` (the official test
uses the epoch with the best single-view val top-1, here the last).

Frames: Kinetics uses the TSN-style sparse sampler of `kinetics_sparse.py`
(`sampler='tsn'`). SSv2 uses `ssv2.py`'s (`sampler='segment'`): one frame
at a random offset of each of 8 equal segments (len // 8 * k +
randint(len // 8)); test clips at offsets 0 and len / 16 of each segment.
Both samplers' formulas are the official ones.

Position table: the official model always starts from the 8 x 14 x 14 sinusoid
of pre-training and stretches it linearly along time for another frame count
(`model.pos_table_frames=8`); the 16-frame K400 run needs it.

Weights (`init=DIR`, `init_from` copies the named param subtrees):
- K710 and SSv2 start from the stage-1 student (`b16_ptk710_f8_res224.pth`,
  `l16_ptk710_f8_res224.pth`): `python -m vfm_jax.convert --model umt_pretrain
  --src <pth> --out DIR`; subtrees patch_embed + encoder, fresh fc_norm and head.
- K400 starts from the K710 fine-tuned classifier (`--model umt_classifier`)
  with its head cut to the first 400 classes (the K710 label list puts the
  K400 classes first): subtrees patch_embed + encoder + fc_norm + head, and
  `init_from.class_rows='first:400'` selects the head's rows.

`model=tiny` is a CPU-sized variant of the same recipe on the synthetic moving
shapes (direction label), sized like the tests' converted stage-1 fixture
student (width 48, depth 3, 4 heads) so it can start from it.
"""
import ml_collections

from configs._finetune import adamw, classification_config
from vfm_jax.config import parse_arg
from vfm_jax.models import PRESETS

GPUS = 16  # every official fine-tuning script
NUM_SAMPLE = 2  # `--num_sample` (repeated augmentation), the default of every script

# (model, dataset, frames) -> the script's values: per-GPU batch, lr before scaling,
# epochs, warm-up epochs, drop path, layer decay, test clips x crops.
RECIPES = {
    ("B16", "k710", 8): dict(batch=16, lr=2e-4, epochs=35, warmup=2, drop_path=0.1, layer_decay=0.75, clips=4, crops=3),
    ("L16", "k710", 8): dict(batch=16, lr=1e-4, epochs=20, warmup=2, drop_path=0.2, layer_decay=0.85, clips=4, crops=3),
    ("B16", "k400", 8): dict(batch=16, lr=2e-5, epochs=5, warmup=1, drop_path=0.1, layer_decay=0.75, clips=4, crops=3),
    ("L16", "k400", 8): dict(batch=16, lr=1e-5, epochs=5, warmup=1, drop_path=0.2, layer_decay=0.85, clips=4, crops=3),
    # The script tests 4 clips x 1 crop; MODEL_ZOO lists this run as 16x3x4.
    ("L16", "k400", 16): dict(batch=8, lr=1e-5, epochs=5, warmup=1, drop_path=0.2, layer_decay=0.85, clips=4, crops=1),
    # The SSv2 scripts test 2 clips x 3 crops; MODEL_ZOO lists them as 8x3x4.
    ("B16", "ssv2", 8): dict(batch=16, lr=2e-4, epochs=30, warmup=5, drop_path=0.1, layer_decay=0.75, clips=2, crops=3),
    ("L16", "ssv2", 8): dict(batch=16, lr=4e-4, epochs=14, warmup=4, drop_path=0.2, layer_decay=0.85, clips=2, crops=3),
}
CLASSES = {"k710": 710, "k400": 400, "ssv2": 174}
MODELS = {"B16": "umt_b16", "L16": "umt_l16"}
# Model keys every variant shares: no dropout, the official 8-frame position table.
# The official fine-tuning recipe of every script: label smoothing, mixup/cutmix, random erasing.
TASK = dict(label_smoothing=0.1, normalization="imagenet", mixup=0.8, cutmix=1.0, random_erasing=0.25)
MODEL_COMMON = dict(dropout=0.0, head_dropout=0.0, pos_table_frames=8, attention_impl="auto", scan_layers=True)


def _count_lines(path: str) -> int:
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def get_config(arg=None):
    arg = parse_arg(arg, model="B16", dataset="k400", frames=8, train_list="", val_list="", root="", init="")
    if arg.model == "tiny":
        return _tiny_config()
    key = (arg.model, arg.dataset, arg.frames)
    if key not in RECIPES:
        raise ValueError(f"no official recipe for model={arg.model},dataset={arg.dataset},frames={arg.frames}; "
                         f"available: {sorted(RECIPES)} and model=tiny")
    recipe = RECIPES[key]
    batch = GPUS * recipe["batch"] * NUM_SAMPLE
    steps_per_epoch = max(_count_lines(arg.train_list) * NUM_SAMPLE // batch, 1) if arg.train_list else 1

    config = classification_config("umt_finetune", batch, steps_per_epoch * recipe["epochs"], **TASK)
    config.eval_every = 5 * steps_per_epoch  # multi-view evaluation is costly: every 5 epochs and at the end
    config.checkpoint_every = steps_per_epoch
    from_classifier = arg.dataset == "k400"
    config.init_from = ml_collections.ConfigDict(dict(
        checkpoint=arg.init,
        subtrees=("patch_embed", "encoder", "fc_norm", "head") if from_classifier else ("patch_embed", "encoder"),
        class_rows=f"first:{CLASSES[arg.dataset]}" if from_classifier else "", class_subtree="head",
    ))
    config.data = ml_collections.ConfigDict(dict(
        name="video_classification", train_list=arg.train_list, val_list=arg.val_list, root=arg.root,
        frames=arg.frames, size=224, sampler="segment" if arg.dataset == "ssv2" else "tsn", stride=1,
        crop="rrc", rrc_scale=(0.08, 1.0),
        flip=arg.dataset != "ssv2", rand_augment=True, short_side=224, test_clips=recipe["clips"],
        test_crops=recipe["crops"], min_frames=1, max_failure_rate=0.05, num_workers=8,
    ))
    config.model = ml_collections.ConfigDict(dict(
        **PRESETS[MODELS[arg.model]], num_classes=CLASSES[arg.dataset], drop_path_rate=recipe["drop_path"],
        # The official L runs checkpoint activations (`--use_checkpoint`); they train in fp16 autocast.
        remat_policy="full" if arg.model == "L16" else "none", dtype="bfloat16", **MODEL_COMMON,
    ))
    config.optim = adamw(recipe["lr"] * batch / 256, 1e-6 * batch / 256, recipe["warmup"] * steps_per_epoch,
                         layer_decay=recipe["layer_decay"])
    return config


def _tiny_config() -> ml_collections.ConfigDict:
    """The recipe at CPU size: 4 steps of batch 8 on 4-frame 32 px moving shapes, 4 direction classes."""
    config = classification_config("umt_finetune", batch=8, total_steps=4, **TASK)
    config.log_every = 1
    config.eval_every = 4
    config.checkpoint_every = 4
    config.init_from = ml_collections.ConfigDict(dict(
        checkpoint="", subtrees=("patch_embed", "encoder"), class_rows="", class_subtree="head",
    ))
    config.data = ml_collections.ConfigDict(dict(
        name="moving_shapes", frames=4, clip_frames=8, size=32, train_examples=256, val_examples=32,
        seed=0, num_workers=0,
    ))
    config.task.label = "direction"
    config.model = ml_collections.ConfigDict(dict(
        arch="video_vit", num_classes=4, width=48, depth=3, num_heads=4, patch_size=8, tubelet_size=1,
        drop_path_rate=0.1, remat_policy="none", dtype="float32", **MODEL_COMMON,
    ))
    config.optim = adamw(1e-3, 1e-5, 1, layer_decay=0.75)
    config.evals.val.batch_size = 16
    return config
