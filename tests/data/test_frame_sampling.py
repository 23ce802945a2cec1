"""data.sampling against the official loaders' formulas, written out again here with
plain Python loops, over a grid of frame counts that includes videos shorter than the clip."""
import numpy as np
import pytest

from data import sampling
from data.video import VideoInfo

FRAME_COUNTS = (1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 30, 31, 64, 100, 301)
OUTPUT_COUNTS = (1, 2, 3, 4, 8, 16, 32)
DRAWS = 200


def _info(num_frames: int) -> VideoInfo:
    return VideoInfo(num_frames=num_frames, fps=30.0, duration=num_frames / 30, height=8, width=8)


def _int64(indices) -> None:
    assert isinstance(indices, np.ndarray) and indices.dtype == np.int64


# Official formulas, transcribed loop by loop.

def _tsn_ranges(vlen, num_frames):
    """UniFormerV2/UMT `_get_seq_frames(clip_idx=-1)`: min(random.randint(start, end), max_frame)."""
    seg_size = max(0.0, float(vlen - 1) / num_frames)
    return [(int(np.round(seg_size * i)), int(np.round(seg_size * (i + 1)))) for i in range(num_frames)]


def _tsn_test(vlen, num_frames, clip_idx, num_clips):
    seg_size = max(0.0, float(vlen - 1) / num_frames)
    duration = seg_size / (num_clips + 1)
    return [min(int(np.round(seg_size * i)) + int(duration * (clip_idx + 1)), vlen - 1)
            for i in range(num_frames)]


def _vindlu_ranges(num_frames, vlen):
    acc_samples = min(num_frames, vlen)
    intervals = np.linspace(start=0, stop=vlen, num=acc_samples + 1).astype(int)
    return [(int(intervals[i]), int(intervals[i + 1]) - 1) for i in range(acc_samples)]


def _vindlu_middle(num_frames, vlen):
    indices = [(a + b) // 2 for a, b in _vindlu_ranges(num_frames, vlen)]
    return indices + [indices[-1]] * (num_frames - len(indices))


def _mvbench_get_index(bound, fps, max_frame, num_segments, first_idx=0):
    start, end = bound if bound else (-100000, 100000)
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    return [int(start_idx + (seg_size / 2) + np.round(seg_size * idx)) for idx in range(num_segments)]


def _dense_clip(num_frames, n, stride, start):
    if num_frames > n * stride:
        return [start + stride * k for k in range(n)]
    return [int(round(float(x))) for x in np.linspace(0, num_frames - 1, n)]


# TSN.

@pytest.mark.parametrize("num_frames", FRAME_COUNTS)
@pytest.mark.parametrize("n", OUTPUT_COUNTS)
def test_tsn_train_stays_in_segments_and_covers_them(num_frames, n):
    rng = np.random.default_rng(0)
    draws = np.stack([sampling.tsn_train(num_frames, n, rng) for _ in range(DRAWS)])
    _int64(draws[0])
    assert draws.shape == (DRAWS, n)
    for k, (low, high) in enumerate(_tsn_ranges(num_frames, n)):
        high = min(high, num_frames - 1)
        assert low <= draws[:, k].min() and draws[:, k].max() <= high
        if high - low <= 3:  # small ranges: every frame in them is drawn
            assert set(draws[:, k].tolist()) == set(range(low, high + 1))


def test_tsn_train_is_deterministic_for_a_seed():
    a = [sampling.tsn_train(301, 8, np.random.default_rng(3)) for _ in range(2)]
    np.testing.assert_array_equal(*a)
    assert not np.array_equal(a[0], sampling.tsn_train(301, 8, np.random.default_rng(4)))


@pytest.mark.parametrize("num_frames", FRAME_COUNTS)
def test_tsn_test_matches_official(num_frames):
    for n in OUTPUT_COUNTS:
        for num_clips in (1, 2, 3, 4):
            indices = sampling.tsn_test(num_frames, n, num_clips)
            _int64(indices)
            expected = [_tsn_test(num_frames, n, c, num_clips) for c in range(num_clips)]
            assert indices.tolist() == expected, (n, num_clips)


def test_tsn_test_single_clip_is_segment_middle():
    # seg = 31/4 = 7.75; starts round(7.75 k) = 0, 8, 16, 23; shift int(7.75 / 2) = 3.
    assert sampling.tsn_test(32, 4).tolist() == [[3, 11, 19, 26]]


# VINDLU / UMT / ViCLIP.

@pytest.mark.parametrize("num_frames", FRAME_COUNTS)
def test_vindlu_middle_matches_official(num_frames):
    for n in OUTPUT_COUNTS:
        indices = sampling.vindlu_middle(num_frames, n)
        _int64(indices)
        assert indices.tolist() == _vindlu_middle(n, num_frames), n


def test_vindlu_middle_examples():
    # intervals 0, 4, 8, ...; official ranges (0, 3), (4, 7)...: middles 1, 5, ...
    assert sampling.vindlu_middle(32, 8).tolist() == [1, 5, 9, 13, 17, 21, 25, 29]
    assert sampling.vindlu_middle(3, 5).tolist() == [0, 1, 2, 2, 2]  # short video: pad with the last


@pytest.mark.parametrize("num_frames", FRAME_COUNTS)
@pytest.mark.parametrize("n", OUTPUT_COUNTS)
def test_vindlu_rand_stays_in_official_ranges(num_frames, n):
    ranges = _vindlu_ranges(n, num_frames)
    fallback = any(a == b for a, b in ranges)  # random.choice(range(a, a)) raises in the official code
    rng = np.random.default_rng(1)
    for _ in range(DRAWS // 4):
        indices = sampling.vindlu_rand(num_frames, n, rng)
        _int64(indices)
        assert len(indices) == n
        head, tail = indices[:len(ranges)], indices[len(ranges):]
        assert (tail == head[-1]).all()
        if fallback:
            assert (np.diff(head) > 0).all() and 0 <= head[0] and head[-1] < num_frames
        else:
            assert all(a <= i < b for i, (a, b) in zip(head.tolist(), ranges))


def test_vindlu_rand_draws_each_allowed_frame_and_is_seeded():
    rng = np.random.default_rng(2)
    draws = np.stack([sampling.vindlu_rand(40, 4, rng) for _ in range(DRAWS)])
    # intervals of 10 frames; official range(start, start + 9) draws start .. start + 8.
    for k in range(4):
        assert set(draws[:, k].tolist()) == set(range(10 * k, 10 * k + 9))
    np.testing.assert_array_equal(sampling.vindlu_rand(300, 8, np.random.default_rng(5)),
                                  sampling.vindlu_rand(300, 8, np.random.default_rng(5)))


# VideoMAE dense.

@pytest.mark.parametrize("num_frames", FRAME_COUNTS)
@pytest.mark.parametrize("n", OUTPUT_COUNTS)
def test_dense_train_is_a_strided_clip_or_the_whole_video(num_frames, n):
    rng = np.random.default_rng(0)
    for stride in (1, 2, 4):
        length = n * stride
        starts = set()
        for _ in range(DRAWS // 4):
            indices = sampling.dense_train(num_frames, n, stride, rng)
            _int64(indices)
            start = int(indices[0])
            assert indices.tolist() == _dense_clip(num_frames, n, stride, start), stride
            if num_frames > length:
                assert 0 <= start <= num_frames - length, stride
            starts.add(start)
        if 0 < num_frames - length <= 3:
            assert starts == set(range(num_frames - length + 1)), stride


@pytest.mark.parametrize("num_frames", FRAME_COUNTS)
def test_dense_test_matches_formula(num_frames):
    for n in OUTPUT_COUNTS:
        for stride, num_clips in ((1, 1), (2, 3), (4, 5)):
            span = max(num_frames - n * stride, 0)
            expected = [_dense_clip(num_frames, n, stride, int(round(c * span / max(num_clips - 1, 1))))
                        for c in range(num_clips)]
            indices = sampling.dense_test(num_frames, n, stride, num_clips)
            _int64(indices)
            assert indices.tolist() == expected, (n, stride, num_clips)
            assert indices.min() >= 0 and indices.max() <= num_frames - 1


def test_dense_examples():
    assert sampling.dense_test(20, 4, 2, 3).tolist() == [[0, 2, 4, 6], [6, 8, 10, 12], [12, 14, 16, 18]]
    assert sampling.dense_test(5, 4, 2).tolist() == [[0, 1, 3, 4]]  # short: round(linspace(0, 4, 4))


# MVBench.

@pytest.mark.parametrize("fps, bound", [(30.0, None), (3.0, None), (29.97, (0.4, 2.2)), (3.0, (1.0, 4.5)),
                                        (25.0, (3.0, 1000.0)), (3.0, (50.0, 60.0))])
def test_mvbench_matches_official_get_index(fps, bound):
    for num_frames in FRAME_COUNTS:
        for n in (1, 8, 16):
            video = sampling.mvbench(num_frames, fps, n, bound)
            _int64(video)
            expected = np.clip(_mvbench_get_index(bound, fps, num_frames - 1, n), 0, num_frames - 1)
            assert video.tolist() == expected.tolist(), (num_frames, n)
            # Frame folders: 1-based file numbers capped at the file count; file f is frame f - 1.
            folder = sampling.mvbench(num_frames, fps, n, bound, first_idx=1)
            official = _mvbench_get_index(bound, fps, num_frames, n, first_idx=1)
            expected = np.clip(np.array(official) - 1, 0, num_frames - 1)
            assert folder.tolist() == expected.tolist(), (num_frames, n)


def test_mvbench_examples():
    # 90 frames, no bound: seg = 89/16 = 5.5625; index k = int(2.78125 + round(5.5625 k)),
    # e.g. k = 8: round(44.5) = 44 (half to even) -> 46.
    assert sampling.mvbench(90, 3.0).tolist() == [
        2, 8, 13, 19, 24, 30, 35, 41, 46, 52, 58, 63, 69, 74, 80, 85]
    # bound (1 s, 4.5 s) at 3 fps: frames 3 .. 14 (round(13.5) = 14), seg = 11/4 = 2.75;
    # int(3 + 1.375 + round(2.75 k)) with round(5.5) = 6 (half to even).
    assert sampling.mvbench(90, 3.0, 4, (1.0, 4.5)).tolist() == [4, 7, 10, 12]
    assert sampling.mvbench(1, 3.0, 4).tolist() == [0, 0, 0, 0]


# Factory and argument checks.

def test_make_sampler_test_variants():
    info = _info(100)
    assert sampling.make_sampler("tsn", train=False, num_frames_out=8)(info).tolist() == \
        sampling.tsn_test(100, 8)[0].tolist()
    assert sampling.make_sampler("vindlu", train=False, num_frames_out=8)(info).tolist() == \
        sampling.vindlu_middle(100, 8).tolist()
    flat = sampling.make_sampler("dense", train=False, num_frames_out=4, stride=2, num_clips=3)(info)
    assert flat.shape == (12,)
    np.testing.assert_array_equal(flat.reshape(3, 4), sampling.dense_test(100, 4, 2, 3))
    tsn = sampling.make_sampler("tsn", train=False, num_frames_out=8, num_clips=2)(info)
    np.testing.assert_array_equal(tsn.reshape(2, 8), sampling.tsn_test(100, 8, 2))


@pytest.mark.parametrize("name, fn, args", [
    ("tsn", sampling.tsn_train, (8,)),
    ("vindlu", sampling.vindlu_rand, (8,)),
    ("dense", sampling.dense_train, (4, 2)),
])
def test_make_sampler_train_variants_follow_the_generator(name, fn, args):
    stride = {"stride": 2} if name == "dense" else {}
    sampler = sampling.make_sampler(name, train=True, num_frames_out=args[0], rng=np.random.default_rng(9),
                                    **stride)
    rng = np.random.default_rng(9)
    for _ in range(5):
        np.testing.assert_array_equal(sampler(_info(77)), fn(77, *args, rng))


def test_make_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dense.*tsn.*vindlu"):
        sampling.make_sampler("mvbench", train=False, num_frames_out=8)
    with pytest.raises(ValueError, match="rng"):
        sampling.make_sampler("tsn", train=True, num_frames_out=8)
    with pytest.raises(ValueError, match="stride"):
        sampling.make_sampler("tsn", train=False, num_frames_out=8, stride=2)
    with pytest.raises(ValueError, match="num_clips"):
        sampling.make_sampler("vindlu", train=False, num_frames_out=8, num_clips=2)
    with pytest.raises(ValueError, match="num_clips"):
        sampling.make_sampler("dense", train=True, num_frames_out=8, num_clips=2,
                              rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_frames_out"):
        sampling.make_sampler("tsn", train=False, num_frames_out=0)


@pytest.mark.parametrize("call", [
    lambda rng: sampling.tsn_train(0, 8, rng),
    lambda rng: sampling.tsn_train(10, 0, rng),
    lambda rng: sampling.tsn_test(10, 8, 0),
    lambda rng: sampling.vindlu_rand(0, 8, rng),
    lambda rng: sampling.vindlu_middle(10, 0),
    lambda rng: sampling.dense_train(10, 4, 0, rng),
    lambda rng: sampling.dense_test(10, 4, 1, 0),
    lambda rng: sampling.mvbench(0, 3.0),
    lambda rng: sampling.mvbench(10, 0.0),
    lambda rng: sampling.mvbench(10, 3.0, 0),
    lambda rng: sampling.mvbench(10, 3.0, first_idx=2),
])
def test_invalid_counts_raise_value_error(call):
    with pytest.raises(ValueError):
        call(np.random.default_rng(0))


# SSv2 segments (UMT/VideoMAE `ssv2.py`).

def _ssv2_test_views(vlen, n, test_num_segment=2):
    """The official test read, then `buffer[chunk::2]` per temporal view chunk."""
    tick = vlen / float(n)
    all_index = [int(tick / 2.0 + tick * x) for x in range(n)] + [int(tick * x) for x in range(n)]
    while len(all_index) < n * test_num_segment:
        all_index.append(all_index[-1])
    all_index = sorted(all_index)
    return [all_index[chunk::2] for chunk in range(test_num_segment)]


@pytest.mark.parametrize("num_frames", FRAME_COUNTS)
def test_segment_train_matches_official_ranges(num_frames):
    rng = np.random.default_rng(0)
    for n in (1, 4, 8, 16):
        duration = num_frames // n
        draws = np.stack([sampling.segment_train(num_frames, n, rng) for _ in range(DRAWS)])
        _int64(draws[0])
        if duration == 0:  # the official fallback: frame 0 n times
            assert (draws == 0).all()
            continue
        low = np.arange(n) * duration
        assert ((draws >= low) & (draws < low + duration)).all()
        if duration > 1:  # each segment's offsets vary
            assert all(len(set(draws[:, k])) > 1 for k in range(n))


@pytest.mark.parametrize("num_frames", FRAME_COUNTS)
def test_segment_test_matches_official(num_frames):
    for n in (1, 4, 8, 16):
        views = sampling.segment_test(num_frames, n, 2)
        _int64(views)
        assert views.tolist() == _ssv2_test_views(num_frames, n)
        tick = num_frames / n
        assert sampling.segment_test(num_frames, n).tolist() == [[int(tick / 2.0 + tick * x) for x in range(n)]]


def test_segment_sampler_through_make_sampler():
    views = sampling.make_sampler("segment", train=False, num_frames_out=8, num_clips=2)(_info(100))
    assert views.tolist() == sum(_ssv2_test_views(100, 8), [])
    with pytest.raises(ValueError, match="1 or 2 clips"):
        sampling.make_sampler("segment", train=False, num_frames_out=8, num_clips=4)
    train = sampling.make_sampler("segment", train=True, num_frames_out=8, rng=np.random.default_rng(1))
    assert len(train(_info(100))) == 8
