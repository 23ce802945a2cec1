"""ViCLIP zero-shot evaluation: Kinetics-400 classification and MSRVTT-1kA text-video retrieval.

    python -m vfm_jax.convert --model viclip --src ViClip-InternVid-10M-FLT.pth --out /ckpt/viclip_l14
    python -m vfm_jax.evaluate --checkpoint=/ckpt/viclip_l14 \
      --config=configs/viclip/zero_shot.py:model=L14,dataset=k400,val_list=/data/k400/val.csv,root=/data/k400/videos,class_names_file=/data/k400/classnames.txt,bpe_file=/data/bpe_simple_vocab_16e6.txt.gz
    python -m vfm_jax.evaluate --checkpoint=/ckpt/viclip_l14 \
      --config=configs/viclip/zero_shot.py:model=L14,dataset=msrvtt,val_list=/data/msrvtt_ret_test1k.json,root=/data/msrvtt/videos,bpe_file=/data/bpe_simple_vocab_16e6.txt.gz

Official protocol (InternVideo1/Pretrain/ViCLIP `exp/exp_pretrain_ViCLIP/
zs_k400`, `zs_msrvtt_1k`, `tasks/retrieval_utils.py:evaluation_video_clip`):
8 "middle" frames at 224 px, ImageNet mean/std, no token drop, CLIP BPE
text of 32 tokens. K400: each class name in the 16 ActionCLIP templates
(`dataset/text_prompt.py:kinetics_templates_action_clip`, which
`caption_dataset.py` uses for `*_act_*` sets), cleaned by `pre_text`, the
class score the mean of the 16 cosine similarities (`ensemble=similarity`).
`class_names_file` lists the 400 names in label order, one per line; the
K400 list is `path,label` (`data.annotations.read_classification_csv`).
MSRVTT-1kA: one caption per video (issue #153), plain cosine ranking and
the dual-softmax re-ranking on the raw cosine (`_dsl` metrics).

Targets (`Data/InternVid/README.md`, InternVid-10M-FLT): K400 top-1 64.8,
mean of top-1 and top-5 75.7 (L/14); top-1 58.52 (B/16). MSRVTT T2V R@1
42.4 (L/14, paper; issues #106/#139 reproduce 37.7-39.4). Deviation: test
clips are short-side resized and centre-cropped; the official test
transform resizes to 224 x 224, and it also cleans MSRVTT captions with
`pre_text`, which the video-text reader here does not.

`model=tiny` evaluates a `configs/viclip/pretrain.py:model=tiny` run on the
synthetic data with that config's two evaluators.
"""
import ml_collections

from configs.viclip.pretrain import (
    model_config, retrieval_eval, synthetic_data, synthetic_zero_shot_eval, video_text_data,
)
from vfm_jax.config import parse_arg

ACTIONCLIP_TEMPLATES = (
    "a photo of action {}", "a picture of action {}", "Human action of {}", "{}, an action",
    "{} this is an action", "{}, a video of action", "Playing action of {}", "{}",
    "Playing a kind of action, {}", "Doing a kind of action, {}", "Look, the human is {}",
    "Can you recognize the action of {}?", "Video classification of {}", "A video of {}",
    "The man is {}", "The woman is {}",
)
DATASETS = ("k400", "msrvtt")


def k400_data(*, val_list, root, bpe_file) -> ml_collections.ConfigDict:
    """A `path,label` list, 8 "middle" frames in one 224 px centre view, CLIP BPE prompts of 32 tokens."""
    return ml_collections.ConfigDict(dict(
        name="video_classification", val_list=val_list, root=root, frames=8, size=224, sampler="vindlu",
        stride=1, crop="rrc", rrc_scale=(0.5, 1.0), flip=False, rand_augment=False, short_side=224,
        test_clips=1, test_crops=1, min_frames=1, max_failure_rate=0.05, num_workers=8,
        tokenizer="clip", tokenizer_file=bpe_file, max_text_length=32,
    ))


def parse(arg):
    """The variant fields shared by the zero-shot configs (model, dataset, lists, batch), checked."""
    arg = parse_arg(arg, model="L14", dataset="k400", val_list="", root="", class_names_file="", bpe_file="",
                    batch=64)
    if arg.model not in ("B16", "L14", "tiny"):
        raise ValueError(f"model={arg.model!r} is not one of ['B16', 'L14', 'tiny']")
    if arg.dataset not in DATASETS:
        raise ValueError(f"dataset={arg.dataset!r} is not one of {DATASETS}")
    return arg


def data_and_evals(arg) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """`config.data` and `config.evals` of a zero-shot run: synthetic (tiny), K400 prompts, or MSRVTT-1kA."""
    if arg.model == "tiny":
        evals = dict(zero_shot=synthetic_zero_shot_eval(arg.batch), retrieval=retrieval_eval(arg.batch))
        return synthetic_data(), ml_collections.ConfigDict(evals)
    if arg.dataset == "k400":
        k400 = ml_collections.ConfigDict(dict(
            type="zero_shot", split="val", batch_size=arg.batch, label="label", class_names=(),
            class_names_file=arg.class_names_file, templates=ACTIONCLIP_TEMPLATES, ensemble="similarity",
            clean_text=True,
        ))
        return k400_data(val_list=arg.val_list, root=arg.root, bpe_file=arg.bpe_file), ml_collections.ConfigDict(
            dict(k400=k400)
        )
    data = video_text_data(train_list="", val_list=arg.val_list, root=arg.root, val_root="", bpe_file=arg.bpe_file)
    return data, ml_collections.ConfigDict(dict(msrvtt=retrieval_eval(arg.batch)))


def get_config(arg=None):
    arg = parse(arg)
    config = ml_collections.ConfigDict()
    config.name = "viclip_zero_shot"
    config.total_steps = 0  # evaluation only
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.model = model_config(arg.model)
    config.task = ml_collections.ConfigDict(dict(
        name="viclip", normalization="imagenet", vision_checkpoint="", text_checkpoint="", freeze_text=False,
    ))
    config.data, config.evals = data_and_evals(arg)
    return config
