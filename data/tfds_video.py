"""TFDS builder: a folder of videos + annotation records -> array_record shards, read back by grain.

`storage='frames'` stores every frame resized to a short side (decoding cost
paid once; zlib-compressed uint8); `storage='bytes'` stores the original file
bytes (small; decoded by PyAV at read time). Either way
`array_record_records(...)` returns random-access records that
`data.sources.VideoClassification` loads like files on disk.

Files that cannot be read are left out of the shards with a warning naming
them: a build is a one-off, and the count lands in the log.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from data import transforms
from data.video import VideoDecodeError, probe, read_frames

STORAGES = ("frames", "bytes")


class VideoFolder(tfds.core.GeneratorBasedBuilder):
    """Builder named by `name` (its folder under data_dir) over `splits = {split: [records]}`.

    Records are `{path, label}` and/or `{path, captions}` dicts from `data.annotations`.
    """

    VERSION = tfds.core.Version("1.0.0")

    def __init__(
        self,
        *,
        name: str,
        splits: dict[str, Sequence[dict[str, Any]]],
        storage: str = "bytes",
        short_side: int = 256,
        **kwargs,
    ):
        if storage not in STORAGES:
            raise ValueError(f"storage={storage!r} is not one of {STORAGES}")
        self.name = name
        self._splits = splits
        self._storage = storage
        self._short_side = short_side
        kwargs.setdefault("file_format", "array_record")
        super().__init__(config=tfds.core.BuilderConfig(name=storage), **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        media = (
            {"frames": tfds.features.Tensor(
                shape=(None, None, None, 3), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB),
             "fps": tfds.features.Scalar(dtype=np.float32)}
            if self._storage == "frames"
            else {"video_bytes": tfds.features.Tensor(shape=(), dtype=np.object_)}
        )
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                **media,
                "path": tfds.features.Text(),
                "label": tfds.features.Scalar(dtype=np.int64),
                "captions": tfds.features.Sequence(tfds.features.Text()),
            }),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(records) for split, records in self._splits.items()}

    def _generate_examples(self, records):
        skipped = []
        for key, record in enumerate(records):
            try:
                media = self._media(record["path"])
            except VideoDecodeError as e:
                skipped.append(record["path"])
                logging.warning("skipping unreadable %s: %s", record["path"], e)
                continue
            yield key, {
                **media,
                "path": os.fspath(record["path"]),
                "label": int(record.get("label", -1)),
                "captions": list(record.get("captions", ())),
            }
        if skipped:
            logging.warning("%d unreadable files left out, e.g. %s", len(skipped), skipped[:5])

    def _media(self, path) -> dict:
        if self._storage == "bytes":
            probe(path)  # only readable videos go into the shards
            with open(path, "rb") as f:
                return {"video_bytes": f.read()}
        info = probe(path)
        frames = read_frames(path, np.arange(info.num_frames))
        return {"frames": transforms.resize_short(frames, self._short_side), "fps": np.float32(info.fps)}


class ArrayRecordRecords:
    """Random-access records over a built split, shaped like `data.annotations` records."""

    def __init__(self, data_source):
        self._source = data_source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        item = self._source[index]
        record = {"path": _text(item["path"]), "label": int(item["label"])}
        if item["captions"] is not None and len(item["captions"]):
            record["captions"] = tuple(_text(c) for c in item["captions"])
        if "frames" in item:
            record["frames"], record["fps"] = item["frames"], float(item["fps"])
        else:
            record["video_bytes"] = item["video_bytes"]
        return record


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def build(name: str, splits: dict, data_dir: str, *, storage: str = "bytes", short_side: int = 256) -> VideoFolder:
    """Build (or reuse) the array_record shards of `splits` under `data_dir/name`."""
    builder = VideoFolder(name=name, splits=splits, storage=storage, short_side=short_side, data_dir=data_dir)
    builder.download_and_prepare()
    return builder


def array_record_records(name: str, split: str, data_dir: str, *, storage: str = "bytes") -> ArrayRecordRecords:
    """Records of a split built earlier by `build` (no annotation files needed)."""
    builder = VideoFolder(name=name, splits={}, storage=storage, data_dir=data_dir)
    return ArrayRecordRecords(builder.as_data_source(split))
