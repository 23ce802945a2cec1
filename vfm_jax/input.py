"""Data sources named by `config.data.name`."""
from __future__ import annotations

from data.annotations import read_classification_csv, read_vindlu_json, read_webvid_csv
from data.sources import VideoClassification, VideoText
from data.synthetic import MovingShapes
from data.tokenizers import fixed_length, load_tokenizer

VIDEO_TEXT_FORMATS = {"vindlu": read_vindlu_json, "webvid": read_webvid_csv}


def make_source(cfg, split: str):
    """Random-access source for `split` ('train', 'val', ...); sources with `load` are decoded by the pipeline."""
    if cfg.name == "moving_shapes":
        key = f"{split}_examples"
        if key not in cfg:
            raise ValueError(f"config.data has no {key!r} for split {split!r}")
        # With a tokenizer (e.g. data.synthetic.VOCAB_FILE) its captions become text_ids / text_mask.
        encode_text = None
        if cfg.get("tokenizer"):
            encode_text = fixed_length(load_tokenizer(cfg.tokenizer, cfg.tokenizer_file), cfg.max_text_length)
        return MovingShapes(
            split, num_examples=cfg[key], frames=cfg.frames, size=cfg.size,
            clip_frames=cfg.clip_frames, seed=cfg.seed, encode_text=encode_text,
        )
    if cfg.name in ("video_classification", "video_text"):
        key = f"{split}_list"
        if key not in cfg:
            raise ValueError(f"config.data has no {key!r} for split {split!r}")
        clips = dict(
            train=split == "train",
            frames=cfg.frames,
            size=cfg.size,
            sampler=cfg.sampler,
            stride=cfg.stride,
            crop=cfg.crop,
            rrc_scale=tuple(cfg.rrc_scale),
            flip=cfg.flip,
            rand_augment=cfg.rand_augment,
            short_side=cfg.short_side,
            num_clips=cfg.test_clips,
            num_crops=cfg.test_crops,
            min_frames=cfg.min_frames,
            max_failure_rate=cfg.max_failure_rate,
        )
        root = cfg.get(f"{split}_root") or cfg.root or None  # e.g. a stage-2 corpus vs its MSRVTT eval
        if cfg.name == "video_classification":
            return VideoClassification(read_classification_csv(cfg[key], root=root), **clips)
        fmt = cfg.get(f"{split}_annotation_format") or cfg.annotation_format  # e.g. WebVid CSV vs MSRVTT JSON
        if fmt not in VIDEO_TEXT_FORMATS:
            raise ValueError(f"config.data annotation format {fmt!r} is not one of {sorted(VIDEO_TEXT_FORMATS)}")
        records = VIDEO_TEXT_FORMATS[fmt](cfg[key], root=root)
        if cfg.get("paragraph"):  # DiDeMo / ActivityNet: a video's sentences are one query
            records = [{**r, "captions": (" ".join(r["captions"]),)} for r in records]
        tokenizer = load_tokenizer(cfg.tokenizer, cfg.tokenizer_file)
        return VideoText(records, encode_text=fixed_length(tokenizer, cfg.max_text_length), **clips)
    raise ValueError(
        f"config.data.name={cfg.name!r} is not a known dataset "
        "('moving_shapes', 'video_classification', 'video_text')"
    )
