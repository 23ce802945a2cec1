"""InternVideo cross-model attention (CMA): the masked and the multimodal video encoder coordinated on Kinetics-400.

    python -m vfm_jax.convert --model umt_classifier --src videomae_h16_k400.pth --out /ckpt/videomae_h16_k400 \
      --scan_layers=false
    python -m vfm_jax.convert --model internvideo_mm --src InternVideo-MM-L-14.ckpt --out /ckpt/internvideo_mm_l14 \
      --scan_layers=false --allow_unknown_classes
    python -m vfm_jax.train --workdir=DIR \
      --config=configs/internvideo/cma_finetune.py:exp=k400,videomae=/ckpt/videomae_h16_k400,mm=/ckpt/internvideo_mm_l14:vision_encoder,train_list=/data/k400/train.csv,val_list=/data/k400/val.csv,root=/data/k400

The model is `vfm_jax.models.internvideo_cma` (its docstring says what the
paper states and what is ours). `exp=k400`: the masked video encoder is a
VideoMAE ViT-H/16 classifier fine-tuned on K400 (16 frames, tubelet 2), the
multimodal one InternVideo-MM L/14 (every other frame: 8), four stages with
a CMA after each of the first three in the masked encoder and one on the
multimodal class token; both backbones frozen but for the two heads and the
multimodal query token (the paper's setting), the two scores fused by
learned weights. `cma=false` is the ablation: the same two frozen encoders
and heads, no CMA (a score-level ensemble). `frozen=false` fine-tunes
everything.

Target: the paper's K400 top-1 91.1 comes from CMA plus an ensemble of
models (UMT, arXiv 2303.16058, excludes it from its comparison as an
ensemble) with its largest, unreleased encoders (issue #20); the paper gives
no CMA training recipe, so this config reproduces no published number. Its
recipe is ours: the UniFormerV2 fine-tuning shape for frozen backbones
(AdamW 0.9/0.999, wd 0.05 on matrices outside the frozen encoders, cosine
to 1e-6, gradient clipping 20, no mixup), lr 1e-4 at batch 256 for 10
epochs (train_list lines / 256 steps each) with 1 warm-up epoch, UMT's K400
data pipeline at 16 frames (TSN sampling, RandAugment, Inception crop,
flip, ImageNet mean/std for the task; the model re-normalises the
multimodal branch to CLIP's), 4 clips x 3 crops at test.

Weights (`videomae=DIR`, `mm=DIR:vision_encoder`, loaded into the params
subtrees `videomae` and `mm` through `task.pretrained`): both converted with
the unrolled layout (`--scan_layers=false`), as the encoders run a stage at
a time. The VideoMAE folder must carry a 400-class head (it is loaded
whole); the multimodal head, the CMAs and the fusion weights start fresh
(the CMAs at zero: each encoder's features start as they were).

`exp=tiny` is the same model at CPU size on the synthetic moving shapes
(direction label): a 4-layer VideoMAE ViT and a multimodal encoder shaped
like the tests' InternVideo-MM fixture (width 32, 6 layers, global blocks on
layers 2-5), two stages, trained from scratch and not frozen; `frozen`
applies when both `videomae=` and `mm=` name converted encoders.
"""
import ml_collections

from configs._finetune import adamw, classification_config
from vfm_jax.config import parse_arg
from vfm_jax.models import PRESETS

# Params that `frozen` keeps fixed get no weight decay either (their gradient is zero, their kernels would decay).
FROZEN = r"^(videomae/(patch_embed|pos_embed|encoder|fc_norm)|mm/(?!global_blocks/temporal_cls_token))"


def _count_lines(path: str) -> int:
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def _encoders(videomae: str, mm: str) -> tuple[dict, dict]:
    """The two branches' VideoViT / InternVideoMMVision arguments from presets (no `arch`, no head)."""
    videomae = {k: v for k, v in PRESETS[videomae].items() if k != "arch"}
    vision = dict(PRESETS[mm]["vision"], output_dim=PRESETS[mm]["embed_dim"])
    return videomae, vision


def get_config(arg=None):
    arg = parse_arg(arg, exp="k400", cma=True, frozen=True, videomae="", mm="", train_list="", val_list="", root="")
    if arg.exp == "tiny":
        return _tiny_config(arg)
    if arg.exp != "k400":
        raise ValueError(f"exp={arg.exp!r} is not one of ['k400', 'tiny']")
    batch, epochs = 256, 10
    steps_per_epoch = max(_count_lines(arg.train_list) // batch, 1) if arg.train_list else 1
    config = classification_config("internvideo_cma_finetune", batch, steps_per_epoch * epochs, **_task(arg))
    config.eval_every = 5 * steps_per_epoch  # multi-view evaluation is costly: every 5 epochs and at the end
    config.checkpoint_every = steps_per_epoch
    config.data = ml_collections.ConfigDict(dict(
        name="video_classification", train_list=arg.train_list, val_list=arg.val_list, root=arg.root,
        frames=16, size=224, sampler="tsn", stride=1, crop="rrc", rrc_scale=(0.08, 1.0), flip=True,
        rand_augment=True, short_side=224, test_clips=4, test_crops=3, min_frames=1, max_failure_rate=0.05,
        num_workers=8,
    ))
    videomae, vision = _encoders("videomae_h16", "internvideo_mm_l14")
    config.model = _model(arg.cma, arg.frozen, 400, videomae, vision, num_stages=4, mm_frame_stride=2)
    config.model.update(remat_policy="full", dtype="bfloat16")
    config.optim = adamw(1e-4, 1e-6, steps_per_epoch, no_decay=FROZEN if arg.frozen else "", grad_clip=20.0)
    return config


def _task(arg) -> dict:
    """ImageNet-normalised clips, no mixup or erasing; the two encoders come from converted folders."""
    return dict(pretrained=ml_collections.ConfigDict(dict(videomae=arg.videomae, mm=arg.mm)))


def _model(cma: bool, frozen: bool, classes: int, videomae: dict, mm: dict, **extra) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        arch="internvideo_cma", num_classes=classes, videomae=videomae, mm=mm, cma=cma, frozen=frozen,
        input_normalization="imagenet", videomae_normalization="imagenet", mm_normalization="clip",
        head_dropout=0.0, attention_impl="auto", scan_layers=False, remat_policy="none", dtype="float32", **extra,
    ))


def _tiny_config(arg) -> ml_collections.ConfigDict:
    """8-frame 32 px moving shapes, 4 direction classes; frozen only from two converted encoders."""
    frozen = arg.frozen and bool(arg.videomae and arg.mm)  # frozen random encoders give the CMAs little to coordinate
    config = classification_config("internvideo_cma_finetune", batch=16, total_steps=400, **_task(arg))
    config.log_every = 50
    config.eval_every = 400
    config.checkpoint_every = 400
    config.data = ml_collections.ConfigDict(dict(
        name="moving_shapes", frames=8, clip_frames=8, size=32, train_examples=10_000, val_examples=128,
        seed=0, num_workers=0,
    ))
    config.task.label = "direction"
    videomae = dict(width=32, depth=4, num_heads=4, patch_size=8, tubelet_size=2)
    mm = dict(width=32, depth=6, num_heads=4, patch_size=8, image_size=32, output_dim=16, global_layers=(2, 3, 4, 5))
    config.model = _model(arg.cma, frozen, 4, videomae, mm, num_stages=2, mm_frame_stride=2)
    config.optim = adamw(1e-3, 1e-6, 50, no_decay=FROZEN if frozen else "", grad_clip=20.0)
    config.optim.update(min_lr=1e-5, grad_clip=1.0)
    config.evals.val.batch_size = 32
    return config
