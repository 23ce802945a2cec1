"""Frame-index sampling recipes of the official UniFormerV2/UMT, VINDLU/ViCLIP, VideoMAE and MVBench code.

Pure functions of a frame count returning np.int64 indices into the video's frames
(0-based, presentation order, as data.video.read_frames takes them). Random variants
draw from the np.random.Generator they are given, so a seeded generator reproduces
them. The TSN, SSv2 segment, VINDLU and MVBench formulas are transcribed from the official loaders,
rounding included (np.round and round() round half to even), so evaluation reads the
frames the papers read. The dense recipe is a plain strided clip in VideoMAE's spirit,
not its loader (which stretches a clipped linspace over the clip).
"""
from typing import Callable

import numpy as np

from data.video import VideoInfo


def _check(**counts: int):
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def tsn_train(num_frames: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """TSN "sparse" sampling for training (UniFormerV2, UMT fine-tuning): a random frame per segment.

    seg = (num_frames - 1) / num_segments; frame k is uniform over the inclusive range
    [round(seg * k), round(seg * (k + 1))], then min(., num_frames - 1) — the official
    `_get_seq_frames(clip_idx=-1)`. Neighbouring ranges share their end points.
    """
    _check(num_frames=num_frames, num_segments=num_segments)
    seg = (num_frames - 1) / num_segments
    k = np.arange(num_segments)
    low, high = np.round(seg * k).astype(np.int64), np.round(seg * (k + 1)).astype(np.int64)
    return np.minimum(rng.integers(low, high, endpoint=True), num_frames - 1)


def tsn_test(num_frames: int, num_segments: int, num_clips: int = 1) -> np.ndarray:
    """TSN "sparse" sampling for testing: (num_clips, num_segments) indices, clip c shifted within segments.

    seg = (num_frames - 1) / num_segments; clip c takes frame
    min(round(seg * k) + int(seg / (num_clips + 1) * (c + 1)), num_frames - 1) of segment k —
    the official `_get_seq_frames(clip_idx=c)` with test_num_segment = num_clips. With one
    clip this is the middle of each segment.
    """
    _check(num_frames=num_frames, num_segments=num_segments, num_clips=num_clips)
    seg = (num_frames - 1) / num_segments
    starts = np.round(seg * np.arange(num_segments)).astype(np.int64)
    shifts = (seg / (num_clips + 1) * np.arange(1, num_clips + 1)).astype(np.int64)
    return np.minimum(starts[None, :] + shifts[:, None], num_frames - 1)


def segment_train(num_frames: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """SSv2 sampling of UMT/VideoMAE (`ssv2.py`): a random offset within each of n equal integer segments.

    d = num_frames // n; frame k = d * k + randint(d). A video with fewer than
    n frames reads frame 0 n times, the official fallback (its other branch,
    sorted random frames when num_frames > n, cannot be reached with d = 0).
    """
    _check(num_frames=num_frames, num_segments=num_segments)
    duration = num_frames // num_segments
    if duration == 0:
        return np.zeros(num_segments, np.int64)
    return np.arange(num_segments) * duration + rng.integers(duration, size=num_segments)


def segment_test(num_frames: int, num_segments: int, num_clips: int = 1) -> np.ndarray:
    """SSv2 test views (`ssv2.py`): (num_clips, n) indices; tick = num_frames / n.

    One clip: frame int(tick / 2 + tick * k) of segment k (the official
    validation read). Two clips (the official test): clip 0 starts each
    segment, int(tick * k), clip 1 is the middle one above; the official code
    sorts both lists together and takes every other frame, which yields
    exactly these two clips.
    """
    _check(num_frames=num_frames, num_segments=num_segments, num_clips=num_clips)
    if num_clips > 2:
        raise ValueError(f"the SSv2 test sampler has 1 or 2 clips, got num_clips={num_clips}")
    tick = num_frames / num_segments
    k = np.arange(num_segments)
    middle = (tick / 2.0 + tick * k).astype(np.int64)
    if num_clips == 1:
        return middle[None]
    return np.stack([(tick * k).astype(np.int64), middle])


def _vindlu_intervals(num_frames: int, n: int) -> np.ndarray:
    """Bounds of min(n, num_frames) near-equal intervals: linspace(0, num_frames, m + 1).astype(int)."""
    return np.linspace(0, num_frames, min(n, num_frames) + 1).astype(np.int64)


def _pad_last(indices: np.ndarray, n: int) -> np.ndarray:
    """Videos shorter than n frames repeat their last index up to length n, as the official code does."""
    return np.concatenate([indices, np.full(n - len(indices), indices[-1], np.int64)])


def vindlu_rand(num_frames: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """UMT / ViCLIP / VINDLU `get_frame_indices(sample='rand')` for training.

    bounds = linspace(0, num_frames, m + 1).astype(int) with m = min(n, num_frames); the
    official ranges are (bounds[i], bounds[i+1] - 1) and it draws random.choice(range(*range_i)),
    i.e. uniformly in [bounds[i], bounds[i+1] - 2] (the last frame of an interval is never
    drawn). When some interval holds a single frame that range is empty, and the official
    fallback applies: m distinct frames drawn uniformly, sorted. Short videos pad with the last index.
    """
    _check(num_frames=num_frames, n=n)
    bounds = _vindlu_intervals(num_frames, n)
    starts, ends = bounds[:-1], bounds[1:]
    if np.all(ends - starts >= 2):
        indices = rng.integers(starts, ends - 1)
    else:
        indices = np.sort(rng.permutation(num_frames)[:len(starts)]).astype(np.int64)
    return _pad_last(indices, n)


def vindlu_middle(num_frames: int, n: int) -> np.ndarray:
    """UMT / ViCLIP / VINDLU `get_frame_indices(sample='middle')` for evaluation.

    bounds = linspace(0, num_frames, m + 1).astype(int) with m = min(n, num_frames);
    index i = (bounds[i] + bounds[i+1] - 1) // 2, the middle of the official range
    (bounds[i], bounds[i+1] - 1). Short videos pad with the last index.
    """
    _check(num_frames=num_frames, n=n)
    bounds = _vindlu_intervals(num_frames, n)
    return _pad_last((bounds[:-1] + bounds[1:] - 1) // 2, n)


def _dense_clip(num_frames: int, n: int, stride: int, start: int) -> np.ndarray:
    """start + stride * arange(n), or for videos of at most n * stride frames
    round(linspace(0, num_frames - 1, n)) so the clip covers the whole video."""
    if num_frames > n * stride:
        return start + stride * np.arange(n, dtype=np.int64)
    return np.round(np.linspace(0, num_frames - 1, n)).astype(np.int64)


def dense_train(num_frames: int, n: int, stride: int, rng: np.random.Generator) -> np.ndarray:
    """VideoMAE-style dense sampling for training: n frames `stride` apart from a random start.

    L = n * stride; if num_frames > L, start ~ uniform{0, ..., num_frames - L} and
    index k = start + stride * k; otherwise round(linspace(0, num_frames - 1, n)).
    """
    _check(num_frames=num_frames, n=n, stride=stride)
    start = rng.integers(0, max(num_frames - n * stride, 0), endpoint=True)
    return _dense_clip(num_frames, n, stride, start)


def dense_test(num_frames: int, n: int, stride: int, num_clips: int = 1) -> np.ndarray:
    """VideoMAE-style dense sampling for testing: (num_clips, n) indices from evenly spaced starts.

    L = n * stride; start_c = round(c * max(num_frames - L, 0) / max(num_clips - 1, 1)) and
    clip c is start_c + stride * arange(n); videos of at most L frames give every clip
    round(linspace(0, num_frames - 1, n)).
    """
    _check(num_frames=num_frames, n=n, stride=stride, num_clips=num_clips)
    span = max(num_frames - n * stride, 0)
    starts = np.round(np.arange(num_clips) * span / max(num_clips - 1, 1)).astype(np.int64)
    return np.stack([_dense_clip(num_frames, n, stride, s) for s in starts])


def mvbench(num_frames: int, fps: float, n: int = 16, bound: tuple[float, float] | None = None, *,
            first_idx: int = 0) -> np.ndarray:
    """MVBench `get_index`: n frames at segment middles of the whole video or of `bound` = (start_s, end_s).

    start = max(first_idx, round(start_s * fps)) (first_idx without a bound),
    end = min(round(end_s * fps), num_frames - 1 + first_idx) (that cap without a bound),
    seg = (end - start) / n, index k = int(start + seg / 2 + np.round(seg * k)) - first_idx,
    clamped to [0, num_frames - 1]. first_idx=0 is the official video-file path
    (max_frame = len(vr) - 1); first_idx=1 its frame-folder path, whose indices are 1-based
    file numbers capped at the file count, shifted here to the 0-based indices of data.video.
    `fps` is the video's average rate (decord's get_avg_fps()), 3.0 for MVBench frame folders.
    """
    _check(num_frames=num_frames, n=n)
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if first_idx not in (0, 1):
        raise ValueError(f"first_idx must be 0 or 1, got {first_idx}")
    start, end = first_idx, num_frames - 1 + first_idx
    if bound is not None:
        start, end = max(start, round(bound[0] * fps)), min(round(bound[1] * fps), end)
    seg = (end - start) / n
    indices = (start + seg / 2 + np.round(seg * np.arange(n))).astype(np.int64) - first_idx
    return np.clip(indices, 0, num_frames - 1)


SAMPLER_NAMES = ("dense", "segment", "tsn", "vindlu")


def make_sampler(name: str, *, train: bool, num_frames_out: int, stride: int = 1, num_clips: int = 1,
                 rng: np.random.Generator | None = None) -> Callable[[VideoInfo], np.ndarray]:
    """A `sampler(info) -> indices` for data.video.read_video from a recipe name.

    train=True picks the random variant (needs `rng`; one clip), train=False the
    deterministic one. Multi-clip test variants return the num_clips clips concatenated,
    shape (num_clips * num_frames_out,), so one read decodes every view: the caller
    reshapes the frames to (num_clips, num_frames_out, ...). `stride` only applies to
    'dense'. MVBench needs per-item fps and bounds, so call `mvbench` directly.
    """
    if name not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLER_NAMES} "
                         f"(call mvbench() directly)")
    _check(num_frames_out=num_frames_out, stride=stride, num_clips=num_clips)
    if stride != 1 and name != "dense":
        raise ValueError(f"stride applies to 'dense' only, got stride={stride} for {name!r}")
    if train and rng is None:
        raise ValueError("train samplers draw random indices: pass rng")
    if num_clips != 1 and (train or name == "vindlu"):
        raise ValueError(f"num_clips={num_clips} needs a multi-clip test sampler "
                         f"('tsn', 'segment' or 'dense', train=False)")
    if name == "segment" and num_clips > 2:
        raise ValueError(f"the 'segment' (SSv2) test sampler has 1 or 2 clips, got num_clips={num_clips}")
    n = num_frames_out
    if name == "tsn":
        if train:
            return lambda info: tsn_train(info.num_frames, n, rng)
        return lambda info: tsn_test(info.num_frames, n, num_clips).reshape(-1)
    if name == "segment":
        if train:
            return lambda info: segment_train(info.num_frames, n, rng)
        return lambda info: segment_test(info.num_frames, n, num_clips).reshape(-1)
    if name == "vindlu":
        if train:
            return lambda info: vindlu_rand(info.num_frames, n, rng)
        return lambda info: vindlu_middle(info.num_frames, n)
    if train:
        return lambda info: dense_train(info.num_frames, n, stride, rng)
    return lambda info: dense_test(info.num_frames, n, stride, num_clips).reshape(-1)
