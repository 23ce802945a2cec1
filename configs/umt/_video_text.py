"""Shared pieces of the UMT video-text configs (stage 2 and retrieval); not a config itself.

Model specs mirror `multi_modality/configs/model.py` and the exp scripts:
B/16 student + bert-base (fusion from layer 9) -> 512-d, L/16 + bert-large
(fusion from layer 19) -> 768-d; `tiny` is CPU-sized for the synthetic data.
"""
import ml_collections

from configs.umt.stage1 import STUDENTS, TEACHERS
from data.synthetic import VOCAB_FILE, caption_vocabulary
from vfm_jax.models import PRESETS

TEXT = {
    "B16": dict(PRESETS["bert_base_uncased"]),
    "L16": dict(PRESETS["bert_large_uncased"]),
    "tiny": dict(arch="bert_text", vocab_size=len(caption_vocabulary()), width=32, depth=3, num_heads=2,
                 mlp_dim=64, fusion_layer=2, max_positions=64),
}
EMBED_DIM = {"B16": 512, "L16": 768, "tiny": 24}


def model_config(model: str, *, clip_return_layers: int, drop_path_rate: float) -> ml_collections.ConfigDict:
    """`config.model` of arch umt_video_text for `model` in B16 | L16 | tiny."""
    vision = {k: v for k, v in STUDENTS[model].items() if k != "arch"}
    vision.update(
        drop_path_rate=drop_path_rate, clip_output_dim=TEACHERS[model]["output_dim"],
        clip_return_layers=clip_return_layers, clip_return_interval=1, attention_impl="auto",
        scan_layers=True, remat_policy="none",
    )
    text = {k: v for k, v in TEXT[model].items() if k != "arch"}
    text.update(dropout=0.1, attention_impl="auto")
    return ml_collections.ConfigDict(dict(
        arch="umt_video_text", vision=vision, text=text, embed_dim=EMBED_DIM[model],
        temp_init=0.07, temp_min=0.001, temp_max=0.5, dtype="float32",
    ))


def teacher_config(model: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(TEACHERS[model], attention_impl="auto", scan_layers=True, dtype="float32"))


def synthetic_data(frames: int = 4) -> ml_collections.ConfigDict:
    """MovingShapes with captions tokenized by the shipped WordPiece vocabulary."""
    return ml_collections.ConfigDict(dict(
        name="moving_shapes", frames=frames, clip_frames=8, size=32, train_examples=256, val_examples=32,
        seed=0, num_workers=0, tokenizer="bert", tokenizer_file=VOCAB_FILE, max_text_length=40,
    ))


def video_text_data(*, train_list, val_list, root, frames, max_text_length, tokenizer_file, paragraph=False):
    """VINDLU-format JSONs: "rand" frames, RandomResizedCrop (0.5, 1) + flip in training; "middle" frames to test."""
    return ml_collections.ConfigDict(dict(
        name="video_text", annotation_format="vindlu", train_list=train_list, val_list=val_list, root=root,
        frames=frames, size=224, sampler="vindlu", stride=1, crop="rrc", rrc_scale=(0.5, 1.0), flip=True,
        rand_augment=False, short_side=224, test_clips=1, test_crops=1, min_frames=1, max_failure_rate=0.05,
        num_workers=8, tokenizer="bert", tokenizer_file=tokenizer_file, max_text_length=max_text_length,
        paragraph=paragraph,
    ))
