"""Video datasets over raw files: sample frames, decode, augment, and survive bad files.

A dataset is random access over annotation records (`__len__`, `__getitem__`)
plus `load(record, rng) -> example`, which the grain pipeline applies with a
per-element rng (`MapDataset.random_map`), so every draw is reproducible from
the seed and the position in the stream.

Unreadable media (missing, zero-byte, truncated, not a video, too short) never
stop a run: the example is replaced by another record chosen with the same
rng, the number of failed reads rides along in the example (`failed_reads`,
summed and logged by the train loop), and when failures exceed
`max_failure_rate` of the reads so far (after `min_reads`), a DataFloodError
names example files: a flood means a wrong root or a broken copy, not noise.
"""
from __future__ import annotations

import collections
import functools
import io
from typing import Any, Callable, Sequence

import numpy as np

from data import sampling, transforms
from data.video import VideoDecodeError, VideoInfo, read_video


class DataFloodError(RuntimeError):
    """Too large a share of the media could not be read."""


class _ReadFailures:
    """Per-process tally of reads and failures, with a few example paths for the error."""

    def __init__(self, max_failure_rate: float, min_reads: int):
        self.max_failure_rate = max_failure_rate
        self.min_reads = min_reads
        self.reads = 0
        self.failures = 0
        self.examples: collections.deque = collections.deque(maxlen=5)

    def record(self, path: str | None, error: Exception | None):
        self.reads += 1
        if error is None:
            return
        self.failures += 1
        self.examples.append(f"{path}: {error}")
        if self.reads >= self.min_reads and self.failures > self.max_failure_rate * self.reads:
            raise DataFloodError(
                f"{self.failures} of {self.reads} media reads failed (more than "
                f"{self.max_failure_rate:.0%}); check the data root and files, e.g.\n  "
                + "\n  ".join(self.examples)
            )


class VideoClips:
    """Records with media -> `{video, index, failed_reads, **targets}`; subclasses add the targets.

    Train: one clip from `sampler` (random variant), optional RandAugment, then
    `crop` ('rrc': the Inception crop of VideoMAE/UMT fine-tuning and
    UniFormerV2; 'multiscale': TSN's crop of their pre-training) and flip. Test: `num_clips` temporal views x
    `num_crops` (1 centre or 3) spatial views after resizing the short side to
    `short_side`; `video` is then (views, T, size, size, 3).
    """

    def __init__(
        self,
        records: Sequence[dict[str, Any]],
        *,
        train: bool,
        frames: int,
        size: int,
        sampler: str = "tsn",
        stride: int = 1,
        crop: str = "rrc",
        rrc_scale: tuple[float, float] = (0.08, 1.0),
        flip: bool = True,
        rand_augment: bool = False,
        short_side: int | None = None,
        num_clips: int = 1,
        num_crops: int = 1,
        min_frames: int = 1,
        max_retries: int = 10,
        max_failure_rate: float = 0.5,
        min_reads: int = 50,
    ):
        if len(records) == 0:
            raise ValueError("no records")
        if crop not in ("multiscale", "rrc"):
            raise ValueError(f"crop={crop!r} is not 'multiscale' or 'rrc'")
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops={num_crops} must be 1 or 3")
        self.records = records
        self.train = train
        self.frames, self.size, self.sampler, self.stride = frames, size, sampler, stride
        self.crop, self.rrc_scale, self.flip, self.rand_augment = crop, tuple(rrc_scale), flip, rand_augment
        self.short_side = short_side or size
        self.num_clips, self.num_crops = (1, 1) if train else (num_clips, num_crops)
        self.min_frames = min_frames
        self.max_retries = max_retries
        self._failures = _ReadFailures(max_failure_rate, min_reads)
        sampling.make_sampler(  # fail on a bad name or count now, not in a worker
            sampler, train=train, num_frames_out=frames, stride=stride, rng=np.random.default_rng(0)
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return {"index": np.int64(index)}

    # ---- loading

    def load(self, element: dict, rng: np.random.Generator) -> dict:
        index = int(element["index"])
        failed = 0
        for _ in range(self.max_retries + 1):
            record = self.records[index]
            try:
                video = self._read(record, rng)
            except VideoDecodeError as e:
                self._failures.record(record["path"], e)
                failed += 1
                index = int(rng.integers(len(self.records)))
                continue
            self._failures.record(record["path"], None)
            return {
                "video": video,
                **self._targets(record, rng),
                "index": np.int32(index),
                "failed_reads": np.int32(failed),
            }
        raise DataFloodError(
            f"{self.max_retries + 1} media reads in a row failed, the last {record['path']!r}"
        )

    def _targets(self, record: dict, rng: np.random.Generator) -> dict:
        del record, rng
        return {}

    def _read(self, record: dict, rng: np.random.Generator) -> np.ndarray:
        """Sampled frames of a record's media: stored frames, file bytes, or a file path."""
        sample = functools.partial(self._sample, rng=rng, path=record["path"])
        if "frames" in record:  # pre-decoded ('frames' storage of data.tfds_video)
            frames = record["frames"]
            n = len(frames)
            clip = frames[sample(VideoInfo(n, record["fps"], n / record["fps"], *frames.shape[1:3]))]
        else:
            media = io.BytesIO(record["video_bytes"]) if "video_bytes" in record else record["path"]
            clip = read_video(media, sample)
        return self._augment(clip, rng) if self.train else self._test_views(clip)

    def _sample(self, info: VideoInfo, *, rng: np.random.Generator, path: str) -> np.ndarray:
        if info.num_frames < self.min_frames:
            raise VideoDecodeError(path, f"{info.num_frames} frames, fewer than {self.min_frames}")
        return sampling.make_sampler(
            self.sampler, train=self.train, num_frames_out=self.frames, stride=self.stride,
            num_clips=self.num_clips, rng=rng,
        )(info)

    def _augment(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.rand_augment:
            clip = transforms.rand_augment(clip, rng)
        if self.crop == "multiscale":
            clip = transforms.multi_scale_crop(clip, rng, self.size)
        else:
            clip = transforms.random_resized_crop(clip, rng, self.size, scale=self.rrc_scale)
        if self.flip:
            clip = transforms.horizontal_flip(clip, rng)
        return clip

    def _test_views(self, clips: np.ndarray) -> np.ndarray:
        clips = transforms.resize_short(clips, self.short_side)
        views = []
        for clip in clips.reshape(self.num_clips, self.frames, *clips.shape[1:]):
            if self.num_crops == 3:
                views.extend(transforms.three_crop(clip, self.size))
            else:
                views.append(transforms.center_crop(clip, self.size))
        return np.stack(views) if len(views) > 1 else views[0]


class VideoClassification(VideoClips):
    """Records `{path, label}` -> `{video, label, index, failed_reads}`."""

    def _targets(self, record, rng):
        del rng
        return {"label": np.int32(record["label"])}


class VideoText(VideoClips):
    """Records `{path, captions}` -> `{video, text_ids, text_mask, index, failed_reads}`.

    Training draws one of the captions with the example's rng (as UMT/VINDLU
    do with caption lists); evaluation takes the first. `encode_text` is
    `data.tokenizers.fixed_length(tokenizer, max_length)`.
    """

    def __init__(self, records, *, encode_text: Callable[[str], dict], **kwargs):
        super().__init__(records, **kwargs)
        self.encode_text = encode_text

    def _targets(self, record, rng):
        captions = record["captions"]
        caption = captions[int(rng.integers(len(captions)))] if self.train else captions[0]
        return self.encode_text(caption)
