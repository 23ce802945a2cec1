"""Broken media never stop a run: replaced deterministically, counted, and a flood is a clear error."""
import av
import numpy as np
import pytest

from data.pipeline import train_iter
from data.sources import DataFloodError, VideoClassification

GOOD, FRAMES = 45, 12


def _write_h264(path, frames, size=(48, 32)):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            image = np.full((size[1], size[0], 3), (10 * i) % 250, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _dataset(tmp_path, broken_kinds):
    """GOOD readable clips followed by one broken file per kind; returns (csv path, broken count)."""
    lines = []
    for i in range(GOOD):
        _write_h264(tmp_path / f"good{i}.mp4", FRAMES)
        lines.append(f"good{i}.mp4,{i % 4}")
    for j, kind in enumerate(broken_kinds):
        name = f"bad{j}_{kind}.mp4"
        if kind == "zero_byte":
            (tmp_path / name).write_bytes(b"")
        elif kind == "truncated":
            _write_h264(tmp_path / "full.mp4", FRAMES)
            data = (tmp_path / "full.mp4").read_bytes()
            (tmp_path / name).write_bytes(data[: len(data) // 2])
        elif kind == "not_a_video":
            (tmp_path / name).write_bytes(np.random.default_rng(j).bytes(5000))
        elif kind == "too_short":
            _write_h264(tmp_path / name, 2)
        elif kind != "missing":
            raise ValueError(kind)
        lines.append(f"{name},{j % 4}")
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "train.csv"


def _source(tmp_path, csv, **kwargs):
    from data.annotations import read_classification_csv

    return VideoClassification(
        read_classification_csv(csv, root=str(tmp_path)), train=True, frames=4, size=32,
        crop="rrc", rrc_scale=(0.5, 1.0), min_frames=4, **kwargs,
    )


KINDS = ("zero_byte", "truncated", "not_a_video", "too_short", "missing")


def test_ten_percent_broken_epoch_loses_no_good_sample(tmp_path):
    csv = _dataset(tmp_path, KINDS)
    source = _source(tmp_path, csv)
    assert len(source) == GOOD + len(KINDS) and len(KINDS) / len(source) == 0.1
    it = train_iter(source, global_batch_size=10, seed=3, keys=("video", "label", "index"))
    seen, failed = [], 0
    for _ in range(len(source) // 10):  # exactly one epoch
        batch = next(it)
        assert batch["video"].shape == (10, 4, 32, 32, 3) and batch["video"].dtype == np.uint8
        seen.extend(batch["index"].tolist())
        failed += int(batch["failed_reads"].sum())
    assert set(range(GOOD)) <= set(seen), "a good sample was lost"
    assert all(i < GOOD for i in seen), "a broken file was served"
    assert failed >= len(KINDS)  # each broken file was hit once; a replacement may hit another
    # Deterministic: the same seed gives the same replacements.
    again = train_iter(source, global_batch_size=10, seed=3, keys=("video", "label", "index"))
    assert next(again)["index"].tolist() == seen[:10]


def test_flood_of_broken_files_is_a_clear_error(tmp_path):
    csv = _dataset(tmp_path, ("missing",) * 60)
    source = _source(tmp_path, csv, max_failure_rate=0.3, min_reads=20)
    it = train_iter(source, global_batch_size=10, seed=0, keys=("video", "label"))
    with pytest.raises(DataFloodError, match=r"media reads failed.*\n.*bad\d+_missing.mp4"):
        for _ in range(20):
            next(it)


def test_training_epoch_over_broken_files_reports_the_count(tmp_path):
    """configs/video_classification.py (tiny model) trains one epoch over 10% broken files."""
    import math

    from configs.video_classification import get_config
    from vfm_jax.train import train_and_evaluate

    csv = _dataset(tmp_path, KINDS)
    (tmp_path / "val.csv").write_text("".join(f"good{i}.mp4,{i % 4}\n" for i in range(4)))
    config = get_config(
        f"train_list={csv},val_list={tmp_path / 'val.csv'},root={tmp_path},classes=4,"
        f"model=vit_tiny_video,frames=4,size=32,batch=10,steps={(GOOD + len(KINDS)) // 10}"
    )
    config.model.depth = 1
    config.data.min_frames = 4
    config.data.num_workers = 0
    config.data.max_failure_rate = 0.5
    config.evals.val.batch_size = 4
    config.mesh.data = 2
    results = train_and_evaluate(config, tmp_path / "run")
    assert results["data_failed_reads"] >= len(KINDS)
    assert math.isfinite(results["train_loss"]) and 0.0 <= results["val_top1"] <= 1.0
