"""UMT stage 2: video-text pre-training (UTA + VTC + VTM + MLM) from the stage-1 student.

    python -m vfm_jax.train --workdir=DIR \
      --config=configs/umt/stage2.py:model=B16,corpus=25m,train_list=/data/webvid10m.json,root=/data/webvid,image_list=/data/images_25m.json,image_root=/data/images,val_list=/data/msrvtt_ret_test1k.json,val_root=/data/msrvtt \
      --config.task.teacher_checkpoint=/ckpt/clip_b16_visual \
      --config.task.vision_checkpoint=/ckpt/umt_b16_ptk710 --config.task.text_checkpoint=/ckpt/bert_base_uncased

Official recipe (`multi_modality/exp/pretraining/{b16,l16}_{5m,17m,25m}.py`):
4 frames ("rand" train, "middle" test), 224 px, RandomResizedCrop (0.5, 1)
+ flip, ImageNet mean/std; captions of at most 32 BERT tokens; batch 128
per GPU on 16 GPUs (B) or 32 (L); AdamW beta (0.9, 0.999), wd 0.02, lr
1e-4, cosine over 10 epochs with 1 warm-up epoch to 1e-6; drop path 0.1
(B) / 0.2 (L); teacher OpenAI CLIP B/16 (L/14 at 196 px); attention masking
0.8 for videos (0.5 for images); all four losses with weight 1; the
zero-shot MSRVTT-1kA evaluation every epoch, VTC top-128 re-ranked by VTM.
Initial weights: the stage-1 student (`python -m vfm_jax.convert --model
umt_pretrain`, into `task.vision_checkpoint`) and BERT (`--model bert`, into
`task.text_checkpoint`).

Targets (zero-shot MSRVTT T2V R@1, MODEL_ZOO): B/16 29.6 / 35.5 / 35.2 and
L/16 33.3 / 42.6 / 40.7 on 5M / 17M / 25M. The corpora: 5M = CC3M +
WebVid-2M, 17M = 5M + CC12M + COCO + VG + SBU, 25M = WebVid-10M instead of
WebVid-2M. Point `train_list` at a VINDLU JSON of the corpus' videos and
`image_list` at one of its images (the official loader concatenates the
image corpora into one image loader: concatenate their JSONs, with absolute
paths or a common `image_root`). Whole image batches (1-frame clips, masked
at 0.5) then alternate with video batches in a shuffled order, each corpus
contributing its number of batches per epoch (`extra_train_data`, the
official MetaLoader). `model=tiny` is a CPU-sized variant on the synthetic
data for tests, mixing 1-frame and 4-frame batches the same way.
"""
import ml_collections

from configs.umt._video_text import model_config, synthetic_data, teacher_config, video_text_data
from vfm_jax.config import parse_arg

GPUS = {"B16": 16, "L16": 32, "tiny": 1}
CORPUS_SIZE = {"5m": 5_000_000, "17m": 17_000_000, "25m": 25_000_000}


def get_config(arg=None):
    arg = parse_arg(
        arg, model="B16", corpus="25m", train_list="", root="", val_list="", val_root="",
        image_list="", image_root="", vocab_file="", epochs=10,
    )
    if arg.model not in GPUS:
        raise ValueError(f"model={arg.model!r} is not one of {sorted(GPUS)}")
    if arg.corpus not in CORPUS_SIZE:
        raise ValueError(f"corpus={arg.corpus!r} is not one of {sorted(CORPUS_SIZE)}")
    tiny = arg.model == "tiny"

    config = ml_collections.ConfigDict()
    config.name = "umt_stage2"
    config.seed = 42
    config.batch_size = 8 if tiny else 128 * GPUS[arg.model]
    steps_per_epoch = 4 if tiny else CORPUS_SIZE[arg.corpus] // config.batch_size
    config.total_steps = 4 if tiny else arg.epochs * steps_per_epoch
    config.log_every = 1 if tiny else 100
    config.eval_every = 4 if tiny else steps_per_epoch
    config.checkpoint_every = 2 if tiny else 2000
    config.keep_checkpoints = 2
    config.report = ("val_t2v_r1",)
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    config.extra_train_data = ml_collections.ConfigDict()
    if tiny:
        config.data = synthetic_data(frames=4)
        config.extra_train_data.image = synthetic_data(frames=1)
        config.extra_train_data.image.batch_size = config.batch_size
    else:
        config.data = video_text_data(
            train_list=arg.train_list, val_list=arg.val_list, root=arg.root, frames=4, max_text_length=32,
            tokenizer_file=arg.vocab_file,
        )
        config.data.val_root = arg.val_root
        if arg.image_list:
            config.extra_train_data.image = video_text_data(
                train_list=arg.image_list, val_list="", root=arg.image_root, frames=1, max_text_length=32,
                tokenizer_file=arg.vocab_file,
            )
            config.extra_train_data.image.batch_size = config.batch_size
    config.model = model_config(arg.model, clip_return_layers=2 if tiny else 6,
                                drop_path_rate={"B16": 0.1, "L16": 0.2, "tiny": 0.1}[arg.model])
    config.task = ml_collections.ConfigDict(dict(
        name="umt_stage2", normalization="imagenet", mask_ratio=0.8, image_mask_ratio=0.5,
        loss_weights=dict(uta=1.0, vtc=1.0, vtm=1.0, mlm=1.0), mlm_prob=0.5,
        teacher=teacher_config(arg.model), teacher_checkpoint="", vision_checkpoint="", text_checkpoint="",
    ))
    config.optim = ml_collections.ConfigDict(dict(
        name="adamw", lr=1e-4, min_lr=1e-6, warmup_steps=1 if tiny else steps_per_epoch, b1=0.9, b2=0.999,
        eps=1e-8, weight_decay=0.02, no_decay="", grad_clip=0.0, layer_decay=1.0,
    ))
    config.evals = ml_collections.ConfigDict({
        "val": ml_collections.ConfigDict(dict(
            type="retrieval", split="val", batch_size=8 if tiny else 128, k_test=8 if tiny else 128,
            pair_batch_size=8 if tiny else 128,
        )),
    })
    return config
