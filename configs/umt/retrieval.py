"""UMT text-to-video retrieval on MSRVTT-1kA, DiDeMo and ActivityNet: zero-shot or fine-tuned.

    # zero-shot: evaluate a converted stage-2 checkpoint
    python -m vfm_jax.convert --model umt_video_text --src b16_25m.pth --out /ckpt/umt_b16_25m
    python -m vfm_jax.evaluate --workdir=/ckpt/umt_b16_25m \
      --config=configs/umt/retrieval.py:model=B16,dataset=msrvtt,mode=zero_shot,val_list=/data/msrvtt_ret_test1k.json,root=/data/msrvtt,vocab_file=/ckpt/bert-base-uncased/vocab.txt
    # fine-tune from it
    python -m vfm_jax.train --workdir=DIR \
      --config=configs/umt/retrieval.py:model=B16,dataset=msrvtt,mode=finetune,train_list=...,val_list=...,root=...,vocab_file=... \
      --config.init_from.checkpoint=/ckpt/umt_b16_25m

Official protocol (`multi_modality/exp/{zero_shot,finetuning}/ret_*`): ImageNet
mean/std, "middle" frames at test, one caption per video on MSRVTT-1kA and
a paragraph of all sentences on DiDeMo and ActivityNet (32 / 64 / 150 BERT
tokens), VTC top-128 re-ranked by the VTM head. Zero-shot uses 4 frames;
fine-tuning uses 12 frames, VTC + VTM (no teacher, no masking, no MLM),
batch 32 per GPU, AdamW beta (0.9, 0.999), wd 0.02, cosine with 1 warm-up
epoch, lr / epochs / drop path: MSRVTT 1e-5 / 10 / 0.2 (B), 2e-5 / 7 / 0.3
(L); DiDeMo 2e-5 / 12 / 0.1 (B), 4e-5 / 5 / 0.2 (L); ActivityNet
4e-5 / 20 / 0.1 (B), 4e-5 / 20 / 0.2 (L).
Targets (MODEL_ZOO, 25M models, T2V R@1): MSRVTT zero-shot 35.2 (B/16) and
40.7 (L/16), fine-tuned 51.0 and 58.8. `model=tiny` is a CPU-sized variant
on the synthetic data for tests.
"""
import ml_collections

from configs.umt._video_text import model_config, synthetic_data, video_text_data
from vfm_jax.config import parse_arg

TEXT_LENGTH = {"msrvtt": 32, "didemo": 64, "anet": 150}
TRAIN_SIZE = {"msrvtt": 9000, "didemo": 8394, "anet": 10009}
# (lr, epochs, drop path) of the fine-tuning scripts, per dataset and model.
FINETUNE = {
    ("msrvtt", "B16"): (1e-5, 10, 0.2), ("msrvtt", "L16"): (2e-5, 7, 0.3),
    ("didemo", "B16"): (2e-5, 12, 0.1), ("didemo", "L16"): (4e-5, 5, 0.2),
    ("anet", "B16"): (4e-5, 20, 0.1), ("anet", "L16"): (4e-5, 20, 0.2),
}


def get_config(arg=None):
    arg = parse_arg(
        arg, model="B16", dataset="msrvtt", mode="zero_shot", train_list="", val_list="", root="",
        vocab_file="", gpus=8,
    )
    if arg.dataset not in TEXT_LENGTH:
        raise ValueError(f"dataset={arg.dataset!r} is not one of {sorted(TEXT_LENGTH)}")
    if arg.mode not in ("zero_shot", "finetune"):
        raise ValueError(f"mode={arg.mode!r} is not 'zero_shot' or 'finetune'")
    if arg.model not in ("B16", "L16", "tiny"):
        raise ValueError(f"model={arg.model!r} is not one of ['B16', 'L16', 'tiny']")
    tiny = arg.model == "tiny"
    lr, epochs, drop_path = (1e-4, 1, 0.1) if tiny else FINETUNE[arg.dataset, arg.model]
    frames = 4 if arg.mode == "zero_shot" or tiny else 12

    config = ml_collections.ConfigDict()
    config.name = "umt_retrieval"
    config.seed = 42
    config.batch_size = 8 if tiny else 32 * arg.gpus
    steps_per_epoch = 4 if tiny else max(TRAIN_SIZE[arg.dataset] // config.batch_size, 1)
    config.total_steps = 0 if arg.mode == "zero_shot" else epochs * steps_per_epoch
    config.log_every = 1 if tiny else 50
    config.eval_every = 4 if tiny else steps_per_epoch
    config.checkpoint_every = 4 if tiny else steps_per_epoch
    config.keep_checkpoints = 2
    config.report = ("val_t2v_r1",)
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # Fine-tuning starts from a converted stage-2 model; its alignment heads are not used here.
    config.init_from = ml_collections.ConfigDict(dict(checkpoint="", subtrees=(
        "vision_encoder/patch_embed", "vision_encoder/encoder", "vision_encoder/norm", "pool_norm",
        "text_encoder", "vision_proj", "text_proj", "itm_head", "temp",
    )))

    if tiny:
        config.data = synthetic_data(frames=frames)
    else:
        config.data = video_text_data(
            train_list=arg.train_list, val_list=arg.val_list, root=arg.root, frames=frames,
            max_text_length=TEXT_LENGTH[arg.dataset], tokenizer_file=arg.vocab_file,
            paragraph=arg.dataset != "msrvtt",
        )
    config.model = model_config(arg.model, clip_return_layers=0, drop_path_rate=drop_path)
    config.task = ml_collections.ConfigDict(dict(
        name="umt_stage2", normalization="imagenet", mask_ratio=0.0, image_mask_ratio=0.0,
        loss_weights=dict(uta=0.0, vtc=1.0, vtm=1.0, mlm=0.0), mlm_prob=0.5,
        teacher=ml_collections.ConfigDict(dict(arch="")), teacher_checkpoint="", vision_checkpoint="",
        text_checkpoint="",
    ))
    config.optim = ml_collections.ConfigDict(dict(
        name="adamw", lr=lr, min_lr=lr * 0.01, warmup_steps=steps_per_epoch, b1=0.9, b2=0.999,
        eps=1e-8, weight_decay=0.02, no_decay="", grad_clip=0.0, layer_decay=1.0,
    ))
    config.evals = ml_collections.ConfigDict({
        "val": ml_collections.ConfigDict(dict(
            type="retrieval", split="val", batch_size=8 if tiny else 32, k_test=8 if tiny else 128,
            pair_batch_size=8 if tiny else 32,
        )),
    })
    return config
