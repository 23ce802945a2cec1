"""TFDS builder -> array_record -> grain: the same clips as reading the files themselves."""
import numpy as np
import pytest

from data import tfds_video, transforms
from data.pipeline import train_iter
from data.sources import VideoClassification
from data.video import read_frames
from test_bad_media import _write_h264

N = 6


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    records = []
    for i in range(N):
        _write_h264(root / f"v{i}.mp4", 10 + i)
        records.append({"path": str(root / f"v{i}.mp4"), "label": i})
    (root / "broken.mp4").write_bytes(b"not a video")
    return records, {"path": str(root / "broken.mp4"), "label": 99}


def _by_path(records):
    return {records[i]["path"]: records[i] for i in range(len(records))}


@pytest.mark.parametrize("storage", ["bytes", "frames"])
def test_build_and_read_back(tmp_path, videos, storage):
    records, broken = videos
    tfds_video.build("clips", {"train": records + [broken]}, str(tmp_path), storage=storage, short_side=24)
    stored = tfds_video.array_record_records("clips", "train", str(tmp_path), storage=storage)
    assert len(stored) == N  # the broken file was left out
    by_path = _by_path(stored)
    for record in records:
        got = by_path[record["path"]]
        assert got["label"] == record["label"]
        frames = read_frames(record["path"], np.arange(10))
        if storage == "bytes":
            assert got["video_bytes"] == open(record["path"], "rb").read()
        else:
            np.testing.assert_array_equal(got["frames"][:10], transforms.resize_short(frames, 24))


def test_grain_over_array_record_matches_files(tmp_path, videos):
    """Same seed, same records -> identical clips whether media come from files or from the shards."""
    records, _ = videos
    tfds_video.build("clips", {"train": records}, str(tmp_path), storage="bytes")
    stored = tfds_video.array_record_records("clips", "train", str(tmp_path), storage="bytes")
    order = [stored[i]["path"] for i in range(len(stored))]
    files = sorted(records, key=lambda r: order.index(r["path"]))  # same record order as the shards
    kwargs = dict(train=True, frames=4, size=16, crop="rrc")
    from_shards = train_iter(VideoClassification(stored, **kwargs), global_batch_size=3, seed=1,
                             keys=("video", "label"))
    from_files = train_iter(VideoClassification(files, **kwargs), global_batch_size=3, seed=1,
                            keys=("video", "label"))
    for _ in range(4):
        a, b = next(from_shards), next(from_files)
        np.testing.assert_array_equal(a["video"], b["video"])
        np.testing.assert_array_equal(a["label"], b["label"])
