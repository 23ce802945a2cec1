"""Frame-accurate video reading with PyAV: decode only the frames a sampler asks for.

Frame i is the i-th frame in presentation order. Frames are counted by demuxing the
video stream and collecting packet timestamps (no decoding): container metadata such
as nb_frames is often missing or wrong, and timestamps keep indices exact for
variable-frame-rate files. Reading a frame seeks to the keyframe before it and decodes
forward to the frame whose timestamp matches, so a few frames of a long video cost a
few GOPs, not the whole file.

Three kinds of input are accepted, as a str or os.PathLike (remote paths such as
gs://... are opened through etils.epath):
  * a video file in any container/codec FFmpeg reads (mp4, webm, mkv, avi, ...), also
    as an open binary file object (e.g. io.BytesIO of stored bytes; read from its start,
    left open);
  * an image file, read with PIL as a 1-frame video;
  * a directory of frames named %05d.jpg from 00001.jpg, as MVBench stores them:
    frame i is the file f"{i + 1:05d}.jpg".
Every failure to read an input surfaces as VideoDecodeError.
"""
import contextlib
import dataclasses
import os
import re
from typing import Callable, Sequence

import av
import numpy as np
from etils import epath
from PIL import Image

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
# MVBench's frame folders (its TVQA episodes) were extracted at 3 fps and carry no timing.
FRAME_FOLDER_FPS = 3.0
# An image has no timing either; at 1 fps it lasts one second.
IMAGE_FPS = 1.0
# Decode forward instead of seeking when the next wanted frame is at most this many
# frames ahead: a seek restarts at a keyframe, which is rarely closer.
FORWARD_WINDOW = 30
# A container's average_rate is trusted when it agrees this well with the packet timestamps.
RATE_TOLERANCE = 0.01
_FRAME_FILE = re.compile(r"(\d{5,})\.jpg")


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    num_frames: int  # decodable frames, counted from the demuxed packets' timestamps
    fps: float  # average rate: the stream's average_rate when it matches num_frames / duration
    duration: float  # seconds, num_frames / fps: from the first frame's start to the last frame's end
    height: int
    width: int


class VideoDecodeError(Exception):
    """An input could not be read: missing, empty, truncated, not a video, bad index..."""

    def __init__(self, path, reason: str):
        # Both go to Exception.args so the error pickles across grain worker processes.
        super().__init__(str(path), reason)

    def __str__(self):
        return f"cannot read video {self.args[0]}: {self.args[1]}"


def probe(path, *, fps: float | None = None) -> VideoInfo:
    """Frame count, rate, duration and size of `path`, without decoding any frame.

    `fps` overrides the frame rate (and duration = num_frames / fps); frame folders
    default to FRAME_FOLDER_FPS and images to IMAGE_FPS since they carry no timing.
    """
    with _opened(path, fps) as source:
        return source.info


def read_frames(path, indices: Sequence[int], *, fps: float | None = None) -> np.ndarray:
    """(len(indices), H, W, 3) uint8 RGB frames in the order of `indices` (repeats allowed)."""
    return read_video(path, lambda info: indices, fps=fps)


def read_video(path, sampler: Callable[[VideoInfo], Sequence[int]], *,
               fps: float | None = None) -> np.ndarray:
    """Frames `sampler(info)` of `path`, probing and decoding through one open container.

    Errors raised by `sampler` itself propagate unchanged: they are not decode failures.
    """
    with _opened(path, fps) as source:
        indices = sampler(source.info)
        indices = _checked_indices(path, indices, source.info.num_frames)
        if not len(indices):
            return np.zeros((0, source.info.height, source.info.width, 3), np.uint8)
        with _decode_errors(path):
            wanted = np.unique(indices).tolist()
            frames = dict(zip(wanted, source.read(wanted)))
            return np.stack([frames[i] for i in indices.tolist()])


@contextlib.contextmanager
def _decode_errors(path):
    """Turns any failure of the filesystem, PyAV or PIL into VideoDecodeError.

    Those libraries raise a zoo of types (OSError, av.FFmpegError, ValueError,
    IndexError, PIL's SyntaxError...), so callers catch one type and skip the example.
    """
    try:
        yield
    except VideoDecodeError:
        raise
    except Exception as e:
        raise VideoDecodeError(path, f"{type(e).__name__}: {e}") from e


@contextlib.contextmanager
def _opened(path, fps):
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    with _decode_errors(path):
        source = _source(path, fps)
    try:
        yield source
    finally:
        with _decode_errors(path):
            source.close()


def _checked_indices(path, indices, num_frames: int) -> np.ndarray:
    indices = np.asarray(indices)
    if indices.size == 0:
        return np.zeros(0, np.int64)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise TypeError(f"frame indices must be a 1-D sequence of ints, got {indices.dtype} "
                        f"of shape {indices.shape}")
    bad = indices[(indices < 0) | (indices >= num_frames)]
    if bad.size:
        raise VideoDecodeError(path, f"frame index {int(bad[0])} out of range for {num_frames} frames")
    return indices.astype(np.int64)


def _source(path, fps):
    if hasattr(path, "read"):
        return _VideoFile(path, fps)
    location = epath.Path(path)
    if location.is_dir():
        return _FrameFolder(path, location, fps)
    if location.suffix.lower() in IMAGE_SUFFIXES:
        return _ImageFile(location, fps)
    return _VideoFile(path, fps)


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


class _ImageFile:
    """A still image as a 1-frame video."""

    def __init__(self, location, fps):
        with location.open("rb") as f, Image.open(f) as image:
            image.load()
            self._frame = _rgb(image)
        fps = fps or IMAGE_FPS
        height, width = self._frame.shape[:2]
        self.info = VideoInfo(num_frames=1, fps=fps, duration=1 / fps, height=height, width=width)

    def read(self, indices):
        return [self._frame for _ in indices]

    def close(self):
        pass


class _FrameFolder:
    """MVBench's frame folders: frame i is the file f"{i + 1:05d}.jpg"."""

    def __init__(self, path, location, fps):
        self._location = location
        names = {p.name for p in location.iterdir() if _FRAME_FILE.fullmatch(p.name)}
        if not names:
            raise VideoDecodeError(path, "directory holds no %05d.jpg frames")
        missing = next((self._name(i) for i in range(len(names)) if self._name(i) not in names), None)
        if missing:
            raise VideoDecodeError(path, f"{len(names)} frame files, not numbered 1..N: {missing} is missing")
        with self._file(0).open("rb") as f, Image.open(f) as image:
            width, height = image.size
        fps = fps or FRAME_FOLDER_FPS
        self.info = VideoInfo(num_frames=len(names), fps=fps, duration=len(names) / fps,
                              height=height, width=width)

    @staticmethod
    def _name(index: int) -> str:
        return f"{index + 1:05d}.jpg"

    def _file(self, index: int):
        return self._location / self._name(index)

    def read(self, indices):
        frames = []
        for i in indices:
            with self._file(i).open("rb") as f, Image.open(f) as image:
                frames.append(_rgb(image))
        return frames

    def close(self):
        pass


class _VideoFile:
    """A video stream read at frame indices via packet timestamps, keyframe seeks and forward decoding."""

    def __init__(self, path, fps):
        self._path = path
        self._file = None  # a file this object opened (remote paths), closed with it
        self._container = None
        try:
            self._open()
            self._scan(fps)
        except BaseException:
            self.close()
            raise

    def _open(self):
        """(Re)opens the container from the start of the file."""
        self.close()
        if hasattr(self._path, "read"):
            self._path.seek(0)
            media = self._path
        elif "://" in str(self._path):
            media = self._file = epath.Path(self._path).open("rb")
        else:
            media = os.fspath(self._path)
        self._container = av.open(media, metadata_errors="ignore")
        streams = [s for s in self._container.streams.video
                   if not s.disposition & av.stream.Disposition.attached_pic]
        if not streams:
            raise VideoDecodeError(self._path, "no video stream")
        self._stream = streams[0]
        self._frames = None  # decoder output iterator, started by the first seek
        self._pos = -1  # presentation index of the last decoded frame

    def _scan(self, fps):
        """Frame timestamps and keyframes from demuxing alone, then VideoInfo."""
        packets = [(p.pts, p.is_keyframe, p.duration) for p in self._container.demux(self._stream)
                   if p.size and not p.is_discard]
        # Packets before the first keyframe (in decode order) reference frames that are not in the file.
        first_key = next((i for i, p in enumerate(packets) if p[1]), 0)
        packets = packets[first_key:]
        if not packets:
            raise VideoDecodeError(self._path, "video stream has no frames")
        pts = [p[0] for p in packets]
        # Streams without timestamps (raw .h264, some broken muxes) are read in decode-output order.
        self._timed = None not in pts and len(set(pts)) == len(pts)
        num_frames = len(packets)
        rate = self._stream.average_rate
        duration = 0.0
        if self._timed:
            order = np.argsort(pts, kind="stable")
            self._pts = [pts[i] for i in order]
            self._index = {t: i for i, t in enumerate(self._pts)}
            keys = np.where([packets[i][1] for i in order], np.arange(num_frames), 0)
            # _keyframe[i]: the last keyframe at or before frame i in presentation order.
            self._keyframe = np.maximum.accumulate(keys).tolist()
            last = packets[order[-1]][2] or (int(np.median(np.diff(self._pts))) if num_frames > 1 else 0)
            duration = float((self._pts[-1] - self._pts[0] + last) * self._stream.time_base)
        measured = num_frames / duration if duration > 0 else None
        if fps is None:
            reliable = rate is not None and rate > 0 and (
                measured is None or abs(rate - measured) <= RATE_TOLERANCE * measured)
            # 1 fps only when nothing at all says how long the frames last.
            fps = float(rate) if reliable else measured or 1.0
        context = self._stream.codec_context
        self.info = VideoInfo(num_frames=num_frames, fps=fps, duration=num_frames / fps,
                              height=context.height, width=context.width)

    def read(self, indices):
        """RGB frames at sorted, unique, in-range `indices`."""
        if not self._timed:
            return self._read_in_order(indices)
        return [self._decode(i).to_ndarray(format="rgb24") for i in indices]

    def _read_in_order(self, indices):
        """Without timestamps there is nothing to seek to: decode from the start, counting frames."""
        self._restart()
        wanted, frames = set(indices), {}
        for pos, frame in enumerate(self._frames):
            if pos in wanted:
                frames[pos] = frame.to_ndarray(format="rgb24")
                if len(frames) == len(wanted):
                    return [frames[i] for i in indices]
        raise VideoDecodeError(self._path, f"decoder stopped before frame {min(wanted - frames.keys())}")

    def _decode(self, idx: int) -> av.VideoFrame:
        """Frame idx, decoding forward from the current position or from a keyframe seek."""
        target = self._pts[idx]
        anchor = None  # the keyframe this call seeked to
        if self._frames is None or self._seek_pays(idx):
            anchor = self._keyframe[idx]
            self._seek(anchor)
        just_seeked = anchor is not None
        while True:
            frame = next(self._frames, None)
            overshot = frame is not None and frame.pts is not None and frame.pts > target
            if overshot and just_seeked and anchor is not None:
                # Demuxers that index by dts (avi) can land past the keyframe asked for: step
                # back one keyframe, and from the first one reopen and decode from the start.
                if anchor > 0:
                    anchor = self._keyframe[anchor - 1]
                    self._seek(anchor)
                else:
                    anchor = None
                    self._restart()
                continue
            if frame is None or frame.pts is None or overshot:
                raise VideoDecodeError(self._path, f"decoder did not produce frame {idx} (pts {target})")
            just_seeked = False
            self._pos = self._index.get(frame.pts, self._pos)
            if frame.pts == target:
                return frame

    def _seek_pays(self, idx: int) -> bool:
        """Whether seeking beats decoding forward: the target is far and a keyframe lies in between."""
        return idx <= self._pos or (idx - self._pos > FORWARD_WINDOW and self._keyframe[idx] > self._pos)

    def _seek(self, anchor: int):
        self._container.seek(self._pts[anchor], stream=self._stream, backward=True, any_frame=False)
        self._frames = self._container.decode(self._stream)
        self._pos = anchor - 1

    def _restart(self):
        """Reopens the container and decodes from its first packet, for when seeking cannot help."""
        self._open()
        self._frames = self._container.decode(self._stream)

    def close(self):
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._file is not None:
            self._file.close()
            self._file = None
