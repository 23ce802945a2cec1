"""ViCLIP (InternVid) video-text contrastive pre-training.

    python -m vfm_jax.train --workdir=DIR \
      --config=configs/viclip/pretrain.py:model=L14,train_list=/data/internvid_10m_flt.json,root=/data/internvid,val_list=/data/msrvtt_ret_test1k.json,val_root=/data/msrvtt,bpe_file=/data/bpe_simple_vocab_16e6.txt.gz

Official recipe (InternVideo1/Pretrain/ViCLIP, `exp/exp_pretrain_ViCLIP/
our_0613_filtered` (L/14) and `viclip_base` (B/16)): InternVid-10M-FLT, 8
frames ("rand" in training, "middle" to test), 224 px, RandomResizedCrop
(0.5, 1) + flip, ImageNet mean/std (the encoder name contains "vit"), 90%
of the video tokens dropped, drop path 0.1, CLIP BPE captions of 32
tokens, batch 512 per GPU on 64 GPUs (L; the B script does not name its
GPU count: `gpus=`), AdamW lr 4e-4 (B: 2e-4), beta (0.9, 0.98), wd 0.2,
cosine over 10 epochs down to 0.01 lr after a 0.5-epoch warm-up, temp
1/100 clamped to >= 1/100, the text tower trained (L's `run.sh:
model.freeze_text False`), gradient checkpointing of every L block; the
zero-shot MSRVTT-1kA retrieval after each epoch (plain and dual softmax,
as `tasks/retrieval_utils.py:evaluation_video_clip`).

Targets (`Data/InternVid/README.md`, 10M-FLT models): zero-shot K400 top-1
64.8 (L/14) and 58.52 (B/16), measured with `configs/viclip/zero_shot.py`;
zero-shot MSRVTT T2V R@1 42.4 (L/14, paper; issues #106/#139 reproduce
37.7-39.4). The B script keeps the text tower frozen (config default
`freeze_text=True`): `model=B16` sets `task.freeze_text` and keeps the tower
out of weight decay. Deviations: the towers start from random weights
unless `task.vision_checkpoint` / `task.text_checkpoint` (converted CLIP
towers, e.g. `python -m vfm_jax.convert --model clip --context_length 32`
then `<folder>:vision_encoder` / `<folder>:text_encoder`) are set, where
the official run starts from CLIP; weight decay skips `proj` and
`text_projection` (only `*kernel` params decay here); test clips are
short-side resized and centre-cropped,
where the official test transform resizes to 224 x 224.

`model=tiny` trains a CPU-sized ViCLIP from scratch in about a minute on the
synthetic moving shapes at 16 px, whose captions name the motion direction,
marker order and blink count; its text tower reads the shipped WordPiece
vocabulary (pooling at [SEP], the last real token). Its evals: zero-shot
direction classification and text-to-video retrieval on 128 validation
clips. Sized for that: 2x2 patches per frame (the motion crosses patches),
50% of the 32 tokens dropped (90% would leave 4), the temporal table drawn
from N(0, 1) (from zero it takes most of the run to order the frames), lr
2e-3 with 10% warm-up, wd 0.05.
"""
import ml_collections

from data.synthetic import DIRECTIONS, PALETTE, SHAPES, VOCAB_FILE, caption_vocabulary
from vfm_jax.config import parse_arg
from vfm_jax.models import PRESETS

MODELS = {
    "B16": PRESETS["viclip_b16"],
    "L14": PRESETS["viclip_l14"],
    "tiny": dict(
        arch="viclip", embed_dim=32,
        vision=dict(width=64, depth=2, num_heads=4, patch_size=8, image_size=16, num_frames=8,
                    drop_ratio=0.5, drop_path_rate=0.0, temporal_init_std=1.0),
        text=dict(vocab_size=len(caption_vocabulary()), width=64, depth=2, num_heads=4, context_length=32),
    ),
}
LR = {"B16": 2e-4, "L14": 4e-4, "tiny": 2e-3}
CORPUS_SIZE = 10_000_000  # InternVid-10M-FLT clips
# Zero-shot prompts of the synthetic data, written like its captions for every colour and shape (the
# marker order and blink count fixed): the ensemble averages out all but the motion direction.
SYNTHETIC_TEMPLATES = tuple(
    f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape} moves {{}}; "
    "the red marker flashes before the blue marker; the white dot blinks twice."
    for colour, _ in PALETTE for shape in SHAPES
)


def model_config(model: str) -> ml_collections.ConfigDict:
    """`config.model` of a named ViCLIP size (B16 | L14 | tiny), temperature 1/100 clamped at 1/100."""
    return ml_collections.ConfigDict(dict(
        MODELS[model], temp_init=0.01, temp_min=0.01, attention_impl="auto", scan_layers=True,
        remat_policy="full" if model == "L14" else "none", dtype="float32",
    ))


def synthetic_data() -> ml_collections.ConfigDict:
    """MovingShapes at 16 px with WordPiece captions; the validation clips are the retrieval candidates."""
    return ml_collections.ConfigDict(dict(
        name="moving_shapes", frames=8, clip_frames=8, size=16, train_examples=100_000, val_examples=128,
        seed=0, num_workers=0, tokenizer="bert", tokenizer_file=VOCAB_FILE, max_text_length=32,
    ))


def video_text_data(*, train_list, val_list, root, val_root, bpe_file) -> ml_collections.ConfigDict:
    """VINDLU-format JSONs, CLIP BPE captions of 32 tokens, 8 frames at 224 px."""
    return ml_collections.ConfigDict(dict(
        name="video_text", annotation_format="vindlu", train_list=train_list, val_list=val_list, root=root,
        val_root=val_root, frames=8, size=224, sampler="vindlu", stride=1, crop="rrc", rrc_scale=(0.5, 1.0),
        flip=True, rand_augment=False, short_side=224, test_clips=1, test_crops=1, min_frames=1,
        max_failure_rate=0.05, num_workers=8, tokenizer="clip", tokenizer_file=bpe_file, max_text_length=32,
        paragraph=False,
    ))


def retrieval_eval(batch_size: int) -> ml_collections.ConfigDict:
    """Dual-encoder retrieval, plain and with ViCLIP's dual softmax (on the raw cosine: scale 1)."""
    return ml_collections.ConfigDict(dict(
        type="dual_encoder_retrieval", split="val", batch_size=batch_size, dual_softmax=True,
        dual_softmax_scale=1.0,
    ))


def synthetic_zero_shot_eval(batch_size: int) -> ml_collections.ConfigDict:
    """Zero-shot motion direction of the synthetic validation clips."""
    return ml_collections.ConfigDict(dict(
        type="zero_shot", split="val", batch_size=batch_size, label="direction", class_names=DIRECTIONS,
        class_names_file="", templates=SYNTHETIC_TEMPLATES, ensemble="clip", clean_text=False,
    ))


def get_config(arg=None):
    arg = parse_arg(
        arg, model="L14", gpus=64, train_list="", root="", val_list="", val_root="", bpe_file="", epochs=10,
        steps=800,
    )
    if arg.model not in MODELS:
        raise ValueError(f"model={arg.model!r} is not one of {sorted(MODELS)}")
    tiny = arg.model == "tiny"

    config = ml_collections.ConfigDict()
    config.name = "viclip_pretrain"
    config.seed = 42
    config.batch_size = 64 if tiny else 512 * arg.gpus
    # tiny: one "epoch" of `steps` steps (the synthetic data is generated on the fly).
    steps_per_epoch = arg.steps if tiny else CORPUS_SIZE // config.batch_size
    config.total_steps = arg.steps if tiny else arg.epochs * steps_per_epoch
    config.log_every = 50
    config.eval_every = steps_per_epoch
    config.checkpoint_every = steps_per_epoch if tiny else 500
    config.keep_checkpoints = 2
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    if tiny:
        config.data = synthetic_data()
        config.evals = ml_collections.ConfigDict(dict(
            zero_shot=synthetic_zero_shot_eval(64), retrieval=retrieval_eval(64),
        ))
        config.report = ("zero_shot_top1", "retrieval_t2v_r1")
    else:
        config.data = video_text_data(
            train_list=arg.train_list, val_list=arg.val_list, root=arg.root, val_root=arg.val_root,
            bpe_file=arg.bpe_file,
        )
        config.evals = ml_collections.ConfigDict(dict(msrvtt=retrieval_eval(64)))
        config.report = ("msrvtt_t2v_r1",)
    config.model = model_config(arg.model)
    config.task = ml_collections.ConfigDict(dict(
        name="viclip", normalization="imagenet", vision_checkpoint="", text_checkpoint="",
        freeze_text=arg.model == "B16",
    ))
    config.optim = ml_collections.ConfigDict(dict(
        name="adamw", lr=LR[arg.model], min_lr=LR[arg.model] * 0.01,
        warmup_steps=steps_per_epoch // 10 if tiny else steps_per_epoch // 2, b1=0.9, b2=0.98, eps=1e-8,
        weight_decay=0.05 if tiny else 0.2,
        no_decay=r"^text_encoder/" if config.task.freeze_text else "", grad_clip=0.0, layer_decay=1.0,
    ))
    return config
