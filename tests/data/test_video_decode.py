"""data.video on real files written with PyAV: exact frame counts, the right frames on
every codec (B-frames, VFR, odd sizes, dts-indexed avi), seeking instead of decoding
everything, images and MVBench frame folders, and VideoDecodeError for every bad input.

Frame i carries its index in three horizontal bands, band b at gray level
16 * (hex digit b of i) + 8, which survives lossy compression (errors are a few levels).
"""
import fractions
import io
import pickle

import av
import numpy as np
import pytest
from PIL import Image

from data import video
from data.sampling import dense_test, make_sampler, tsn_test
from data.video import VideoDecodeError, VideoInfo, probe, read_frames, read_video

W, H = 64, 48
VFR_GAPS_MS = np.random.default_rng(7).integers(1, 120, size=23)


def _pattern(i: int, h: int = H, w: int = W) -> np.ndarray:
    frame = np.empty((h, w, 3), np.uint8)
    for b in range(3):
        frame[h * b // 3:h * (b + 1) // 3] = 16 * ((i >> (4 * b)) & 15) + 8
    return frame


def _frame_id(frame: np.ndarray) -> int:
    """The index written by _pattern, read from the middle of each band."""
    h, w = frame.shape[:2]
    digits = [int(frame[h * b // 3 + 3:h * (b + 1) // 3 - 3, 3:w - 3].mean() // 16) for b in range(3)]
    return digits[0] + 16 * digits[1] + 256 * digits[2]


def _ids(frames: np.ndarray) -> list:
    return [_frame_id(f) for f in frames]


def _write(path, codec, num_frames, *, size=(W, H), pix_fmt="yuv420p", options=None,
           pts_ms=None, container_options=None, **codec_attrs):
    """Encodes frames _pattern(0..num_frames-1); pts_ms gives per-frame times (variable frame rate)."""
    w, h = size
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=None if pts_ms is not None else 30, options=options or {})
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if pts_ms is not None:
            stream.time_base = stream.codec_context.time_base = fractions.Fraction(1, 1000)
        for name, value in codec_attrs.items():
            setattr(stream.codec_context, name, value)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(_pattern(i, h, w), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = int(pts_ms[i]), fractions.Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """name -> (path, num_frames, (height, width))."""
    d = tmp_path_factory.mktemp("videos")
    vfr_pts = np.concatenate([[0], np.cumsum(VFR_GAPS_MS)])
    return {
        # H.264 with B-frames: decode order differs from presentation order.
        "h264": (_write(d / "h264.mp4", "libx264", 40), 40, (H, W)),
        "vp9": (_write(d / "vp9.webm", "libvpx-vp9", 30, options={"deadline": "realtime", "cpu-used": "8"}),
                30, (H, W)),
        # FFV1 is lossless and has no chroma subsampling, so odd sizes and exact pixels both work.
        "odd_ffv1": (_write(d / "odd.mkv", "ffv1", 30, size=(97, 61), pix_fmt="bgr0"), 30, (61, 97)),
        # MPEG-4 part 2 with B-frames and 3-frame GOPs in AVI, whose index is by dts: see
        # test_avi_seeks_land_past_the_keyframe.
        "avi_bframes": (_write(d / "bframes.avi", "mpeg4", 60, max_b_frames=2, gop_size=3,
                               bit_rate=1_000_000), 60, (H, W)),
        "vfr_mp4": (_write(d / "vfr.mp4", "libx264", len(vfr_pts), pts_ms=vfr_pts), len(vfr_pts), (H, W)),
        "vfr_mkv": (_write(d / "vfr.mkv", "libx264", len(vfr_pts), pts_ms=vfr_pts), len(vfr_pts), (H, W)),
        # A raw H.264 stream has no timestamps and cannot seek: read in decode-output order.
        "raw_h264": (_write(d / "raw.h264", "libx264", 30), 30, (H, W)),
    }


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """300 frames with keyframes exactly at 0, 100 and 200."""
    path = _write(tmp_path_factory.mktemp("long") / "long.mp4", "libx264", 300,
                  options={"g": "100", "keyint_min": "100", "sc_threshold": "0"})
    with av.open(path) as container:
        stream = container.streams.video[0]
        keyframes = sorted(round(p.pts * stream.time_base * 30)
                           for p in container.demux(stream) if p.is_keyframe)
    assert keyframes == [0, 100, 200]
    return path


class _CountingContainer:
    """Delegates to a PyAV container, counting the frames its decoder hands out."""

    def __init__(self, container, counts):
        self._container, self._counts = container, counts

    def decode(self, *args, **kwargs):
        for frame in self._container.decode(*args, **kwargs):
            self._counts["frames"] += 1
            yield frame

    def __getattr__(self, name):
        return getattr(self._container, name)


@pytest.fixture
def decode_counts(monkeypatch):
    counts = {"frames": 0, "opens": 0}
    real_open = av.open

    def counting_open(*args, **kwargs):
        counts["opens"] += 1
        return _CountingContainer(real_open(*args, **kwargs), counts)

    monkeypatch.setattr(video.av, "open", counting_open)
    return counts


def test_probe_counts_frames_exactly(videos):
    for name, (path, num_frames, (h, w)) in videos.items():
        info = probe(path)
        assert (info.num_frames, info.height, info.width) == (num_frames, h, w), name
        assert info.duration == pytest.approx(info.num_frames / info.fps), name
        if not name.startswith("vfr"):
            # A raw H.264 stream carries no rate: FFmpeg's raw demuxer assumes 25 fps.
            assert info.fps == pytest.approx(25.0 if name == "raw_h264" else 30.0), name
    assert probe(videos["h264"][0]) == VideoInfo(num_frames=40, fps=30.0, duration=40 / 30, height=H, width=W)


def test_probe_variable_frame_rate(videos):
    span = VFR_GAPS_MS.sum() / 1000  # first frame start to last frame start
    for name in ("vfr_mp4", "vfr_mkv"):
        info = probe(videos[name][0])
        assert span < info.duration < span + 0.25, name  # plus the last frame's (guessed) length
        assert info.fps == pytest.approx(info.num_frames / info.duration)


def test_fps_override(videos):
    info = probe(videos["h264"][0], fps=10.0)
    assert (info.num_frames, info.fps, info.duration) == (40, 10.0, 4.0)
    with pytest.raises(ValueError):
        probe(videos["h264"][0], fps=0)


@pytest.mark.parametrize("name", ["h264", "vp9", "odd_ffv1", "avi_bframes", "vfr_mp4", "vfr_mkv", "raw_h264"])
def test_read_frames_returns_the_asked_frames(videos, name):
    path, num_frames, (h, w) = videos[name]
    rng = np.random.default_rng(0)
    for _ in range(4):
        # Unsorted, with repeats, first and last frame.
        indices = np.concatenate([[num_frames - 1, 0], rng.integers(0, num_frames, 8),
                                  [num_frames - 1, 3, 3]])
        frames = read_frames(path, indices)
        assert frames.shape == (len(indices), h, w, 3) and frames.dtype == np.uint8
        assert _ids(frames) == indices.tolist()
    every = read_frames(path, range(num_frames))
    assert _ids(every) == list(range(num_frames))
    if name == "odd_ffv1":
        np.testing.assert_array_equal(every, np.stack([_pattern(i, h, w) for i in range(num_frames)]))


def test_avi_seeks_land_past_the_keyframe(videos):
    """Each keyframe's dts is at most the previous keyframe's pts, so seeking to a keyframe's pts
    lands on the next one; the reader must step back (down to reopening the file) and still
    return each frame when asked for it alone."""
    path, num_frames, _ = videos["avi_bframes"]
    with av.open(path) as container:
        keys = [(p.pts, p.dts) for p in container.demux(video=0) if p.is_keyframe]
    assert all(dts <= prev_pts for (prev_pts, _), (_, dts) in zip(keys, keys[1:]))
    for i in range(num_frames):
        assert _ids(read_frames(path, [i])) == [i]


def test_avi_step_back_does_not_restart_from_the_top(videos, decode_counts):
    path, num_frames, _ = videos["avi_bframes"]
    assert _ids(read_frames(path, [num_frames - 3])) == [num_frames - 3]
    assert decode_counts["frames"] <= 10 and decode_counts["opens"] == 1


@pytest.mark.parametrize("name", ["h264", "avi_bframes"])
def test_file_objects_are_read_from_their_start(videos, name):
    path, num_frames, _ = videos[name]
    media = io.BytesIO(open(path, "rb").read())
    media.seek(100)
    assert probe(media).num_frames == num_frames
    assert _ids(read_frames(media, [num_frames - 1, 0, 7])) == [num_frames - 1, 0, 7]
    assert not media.closed
    with pytest.raises(VideoDecodeError):
        read_frames(io.BytesIO(b"not a video" * 100), [0])


def test_read_frames_index_forms(videos):
    path = videos["h264"][0]
    assert _ids(read_frames(path, [5])) == [5]
    assert _ids(read_frames(path, np.array([7, 2], np.int32))) == [7, 2]
    assert read_frames(path, []).shape == (0, H, W, 3)
    with pytest.raises(TypeError):
        read_frames(path, [1.5])


@pytest.mark.parametrize("indices, most", [
    ([250, 260], 70),  # keyframe 200 .. 260, plus the B-frame reorder delay
    ([299], 105),
    ([295, 5], 110),  # two seeks: 0..5 and 200..295
    ([10, 20, 40], 45),  # close together: one pass forward, no seek needed
])
def test_seeks_instead_of_decoding_everything(long_video, decode_counts, indices, most):
    assert _ids(read_frames(long_video, indices)) == indices
    assert decode_counts["frames"] <= most
    assert decode_counts["opens"] == 1


def test_read_video_probes_samples_and_reads_in_one_open(videos, decode_counts):
    path, num_frames, _ = videos["h264"]
    seen = []

    def sampler(info):
        seen.append(info)
        return [num_frames - 1, 1]

    assert _ids(read_video(path, sampler)) == [num_frames - 1, 1]
    assert decode_counts["opens"] == 1
    assert seen == [probe(path)]


def test_read_video_with_tsn_sampler_end_to_end(videos):
    path, num_frames, _ = videos["h264"]
    frames = read_video(path, make_sampler("tsn", train=False, num_frames_out=8))
    assert _ids(frames) == tsn_test(num_frames, 8)[0].tolist()


def test_read_video_multi_clip_views_in_one_read(videos):
    path, num_frames, _ = videos["avi_bframes"]
    frames = read_video(path, make_sampler("dense", train=False, num_frames_out=4, stride=3, num_clips=3))
    views = frames.reshape(3, 4, H, W, 3)
    assert [_ids(v) for v in views] == dense_test(num_frames, 4, 3, 3).tolist()


def test_sampler_errors_are_not_wrapped(videos):
    def broken(info):
        raise KeyError("sampler bug")

    with pytest.raises(KeyError):
        read_video(videos["h264"][0], broken)


@pytest.mark.parametrize("suffix, mode", [(".png", "RGB"), (".png", "L"), (".jpg", "RGB")])
def test_image_is_a_one_frame_video(tmp_path, suffix, mode):
    pixels = _pattern(9, 21, 33)
    path = tmp_path / f"still{suffix}"
    Image.fromarray(pixels).convert(mode).save(path, quality=95)
    assert probe(path) == VideoInfo(num_frames=1, fps=1.0, duration=1.0, height=21, width=33)
    frames = read_frames(path, [0, 0])
    assert frames.shape == (2, 21, 33, 3)
    if (suffix, mode) == (".png", "RGB"):
        np.testing.assert_array_equal(frames[1], pixels)
    else:
        assert np.abs(frames.astype(int) - pixels).max() <= 6
    with pytest.raises(VideoDecodeError, match="out of range"):
        read_frames(path, [1])


def test_frame_folder_mvbench_layout(tmp_path):
    folder = tmp_path / "tvqa_clip"
    folder.mkdir()
    for i in range(7):
        Image.fromarray(_pattern(i)).save(folder / f"{i + 1:05d}.jpg", quality=95)
    (folder / "notes.txt").write_text("not a frame")
    assert probe(folder) == VideoInfo(num_frames=7, fps=3.0, duration=7 / 3, height=H, width=W)
    assert probe(str(folder), fps=5.0).fps == 5.0
    assert _ids(read_frames(folder, [6, 0, 3, 3])) == [6, 0, 3, 3]
    with pytest.raises(VideoDecodeError, match="out of range"):
        read_frames(folder, [7])
    (folder / "00004.jpg").unlink()
    with pytest.raises(VideoDecodeError, match="00004.jpg"):
        probe(folder)


def _assert_decode_error(fn, path):
    """fn() raises VideoDecodeError naming `path`, and nothing else."""
    with pytest.raises(VideoDecodeError) as caught:
        fn()
    assert str(path) in str(caught.value)
    return caught.value


def test_bad_inputs_raise_video_decode_error(tmp_path, videos):
    missing = tmp_path / "missing.mp4"
    zero = tmp_path / "zero.mp4"
    zero.touch()
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).bytes(5000))
    text = tmp_path / "notes.avi"
    text.write_text("hello " * 100)
    broken_image = tmp_path / "broken.jpg"
    broken_image.write_bytes(b"\xff\xd8\xff" + bytes(100))
    empty_dir = tmp_path / "frames"
    empty_dir.mkdir()
    for path in (missing, zero, noise, text, broken_image, empty_dir, str(missing)):
        error = _assert_decode_error(lambda: probe(path), path)
        _assert_decode_error(lambda: read_frames(path, [0]), path)
        _assert_decode_error(lambda: read_video(path, lambda info: [0]), path)
    assert isinstance(error.__cause__, FileNotFoundError)  # the original failure is chained


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = str(tmp_path / "tone.wav")
    with av.open(path, "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        samples = np.zeros((1, 800), np.int16)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert "no video stream" in str(_assert_decode_error(lambda: probe(path), path))


def test_index_out_of_range(videos):
    path, num_frames, _ = videos["vp9"]
    for bad in ([num_frames], [-1], [0, num_frames + 5]):
        _assert_decode_error(lambda: read_frames(path, bad), path)


def test_truncated_mp4(tmp_path, long_video):
    # moov at the end (the default): half a file has no index at all.
    cut = tmp_path / "cut.mp4"
    data = open(long_video, "rb").read()
    cut.write_bytes(data[:len(data) // 2])
    _assert_decode_error(lambda: probe(cut), cut)
    # moov first (faststart): the index survives but half the frames' data is gone.
    full = _write(tmp_path / "faststart.mp4", "libx264", 300, container_options={"movflags": "+faststart"})
    data = open(full, "rb").read()
    cut = tmp_path / "faststart_cut.mp4"
    cut.write_bytes(data[:len(data) // 2])
    try:
        info = probe(cut)
    except VideoDecodeError:
        info = None
    if info is not None:
        assert info.num_frames < 300
    _assert_decode_error(lambda: read_frames(cut, [299]), cut)
    _assert_decode_error(lambda: read_frames(cut, [0, 299]), cut)
    try:
        first = read_frames(cut, [0])
    except VideoDecodeError:
        first = None
    if first is not None:
        assert _ids(first) == [0]


def test_error_pickles_for_worker_processes(tmp_path):
    error = pickle.loads(pickle.dumps(VideoDecodeError(tmp_path / "x.mp4", "truncated")))
    assert str(error) == f"cannot read video {tmp_path / 'x.mp4'}: truncated"
