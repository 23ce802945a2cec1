"""Readers for the annotation formats of the official repositories.

Every reader returns a list of plain dicts with at least `path` (the media
file, joined to `root` when one is given); classification sets add `label`
(int), video-text sets `captions` (tuple of str), MVBench `question`,
`candidates`, `answer` (index into candidates) and `bound` ((start, end)
seconds or None). Malformed lines raise ValueError naming the file and line.
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Any

from etils import epath

Record = dict[str, Any]


def _join(root: str | None, path: str) -> str:
    return os.fspath(epath.Path(root) / path) if root else path


def _read_text(path) -> str:
    return epath.Path(path).read_text()


def read_classification_csv(path, root: str | None = None, delimiter: str | None = None) -> list[Record]:
    """Kinetics-style list, no header: `video_path,label` (or space separated, as UMT's `--split ' '`).

    With `delimiter=None` each line is split on its last comma, or else its
    last run of whitespace, so paths containing spaces survive the comma form.
    """
    records = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        if delimiter is None:
            sep = "," if "," in line else None
            parts = line.rsplit(sep, 1)
        else:
            parts = line.rsplit(delimiter, 1)
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected 'path{delimiter or ','}label', got {line!r}")
        try:
            label = int(parts[1])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: label {parts[1]!r} is not an integer") from None
        records.append({"path": _join(root, parts[0].strip()), "label": label})
    return records


def _ssv2_template(item: dict) -> str:
    return item["template"].replace("[", "").replace("]", "")


def read_ssv2(labels_json, split_json, root: str | None = None, extension: str = ".webm") -> list[Record]:
    """Something-Something v2: `labels.json` maps template -> id; `train.json`/`validation.json`
    items `{id, template, ...}` name video `<id>.webm`; the label is the id of the bracket-free template."""
    labels = {name: int(idx) for name, idx in json.loads(_read_text(labels_json)).items()}
    records = []
    for n, item in enumerate(json.loads(_read_text(split_json))):
        template = _ssv2_template(item)
        if template not in labels:
            raise ValueError(f"{split_json} item {n}: template {template!r} is not in {labels_json}")
        records.append({"path": _join(root, f"{item['id']}{extension}"), "label": labels[template]})
    return records


def read_vindlu_json(path, root: str | None = None) -> list[Record]:
    """VINDLU/UMT video-text JSON: a list of `{"image"|"video": path, "caption": str | [str]}`.

    MSRVTT/DiDeMo/ActivityNet retrieval files of UMT and VideoChat2 use the same
    format; keep one record per media file with all its captions.
    """
    records = []
    for n, item in enumerate(json.loads(_read_text(path))):
        media = item.get("video", item.get("image"))
        if media is None or "caption" not in item:
            raise ValueError(f"{path} item {n}: needs 'video' or 'image' and 'caption', got {sorted(item)}")
        captions = item["caption"]
        captions = (captions,) if isinstance(captions, str) else tuple(captions)
        if not captions:
            raise ValueError(f"{path} item {n}: empty caption list")
        records.append({"path": _join(root, media), "captions": captions})
    return records


def read_webvid_csv(path, root: str | None = None, extension: str = ".mp4") -> list[Record]:
    """WebVid CSV (header `videoid,contentUrl,duration,page_dir,name`): video `<page_dir>/<videoid>.mp4`."""
    reader = csv.DictReader(io.StringIO(_read_text(path)))
    missing = {"videoid", "page_dir", "name"} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"{path}: WebVid CSV lacks column(s) {sorted(missing)}")
    return [
        {"path": _join(root, f"{row['page_dir']}/{row['videoid']}{extension}"), "captions": (row["name"],)}
        for row in reader
    ]


def retrieval_pairs(records: list[Record]) -> tuple[list[str], list[int]]:
    """Flatten video-text records into (texts, video index of each text) for retrieval evaluation."""
    texts, text_to_video = [], []
    for v, record in enumerate(records):
        for caption in record["captions"]:
            texts.append(caption)
            text_to_video.append(v)
    return texts, text_to_video


def read_mvbench(path, root: str | None = None, *, bound: bool = False) -> list[Record]:
    """One MVBench task file: items `{video, question, candidates, answer[, start, end]}`.

    `bound=True` for the tasks whose items carry start/end seconds (Action
    Sequence, Action Prediction, Object Interaction, Action Localization,
    Episodic Reasoning). `answer` becomes the index of the answer in `candidates`.
    """
    records = []
    for n, item in enumerate(json.loads(_read_text(path))):
        try:
            answer = item["candidates"].index(item["answer"])
        except (KeyError, ValueError):
            raise ValueError(f"{path} item {n}: 'answer' must be one of 'candidates'") from None
        records.append({
            "path": _join(root, item["video"]),
            "question": item["question"],
            "candidates": tuple(item["candidates"]),
            "answer": answer,
            "bound": (float(item["start"]), float(item["end"])) if bound else None,
        })
    return records
