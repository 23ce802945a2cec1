"""Input throughput on this machine: decode + augment clips/s beside the quickstart model's training rate.

    python -m experiments.bench.data --out experiments/results/data_<machine>.json

Clips are 8 TSN frames of H.264 videos (10 s, 30 fps, 340x256, a K400-like
short side) augmented as in fine-tuning (RandomResizedCrop to 224, flip), read
through the real grain pipeline with 1 and 2 worker processes. The videos are
generated first and not timed. Each worker decodes with one thread; more
threads per worker (grain's ReadOptions) also help, as PyAV releases the GIL. The quickstart figure is the train loop's own
examples/s on its synthetic clips, for scale: it is what a tiny model eats.
"""
from __future__ import annotations

import os
import tempfile
import time

import av
import grain
import numpy as np
from absl import app, flags

from data.pipeline import train_iter
from data.sources import VideoClassification
from experiments.bench import report

_OUT = flags.DEFINE_string("out", None, "JSON file to write (printed to stdout too).")
_VIDEOS = flags.DEFINE_integer("videos", 16, "Distinct videos to generate.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Timed batches of 8 clips per setting.")


def write_video(path: str, seed: int, seconds: int = 10, fps: int = 30, size=(340, 256)):
    rng = np.random.default_rng(seed)
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        base = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        for i in range(seconds * fps):
            frame = np.roll(base, 3 * i, axis=1)  # moving texture: realistic inter-frame coding
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def clips_per_second(source, num_workers: int, batches: int) -> float:
    """Steady-state rate: one decoding thread per worker and a small prefetch buffer, so the
    timed batches are decoded while timed (grain's default buffer would prefill hundreds)."""
    it = train_iter(
        source, global_batch_size=8, seed=0, keys=("video", "label"), num_workers=num_workers,
        read_options=grain.ReadOptions(num_threads=1, prefetch_buffer_size=2),
    )
    next(it)  # start-up (worker processes, first decode) is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = 8 * batches / (time.perf_counter() - start)
    if hasattr(it, "close"):
        it.close()
    return rate


def quickstart_examples_per_second() -> float:
    from configs.quickstart import get_config
    from vfm_jax.train import train_and_evaluate

    config = get_config("steps=150")
    config.log_every = 50
    config.eval_every = 10_000
    config.checkpoint_every = 10_000
    with tempfile.TemporaryDirectory() as workdir:
        return train_and_evaluate(config, workdir)["examples_per_sec"]


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as root:
        records = []
        for i in range(_VIDEOS.value):
            path = os.path.join(root, f"v{i}.mp4")
            write_video(path, seed=i)
            records.append({"path": path, "label": i % 4})
        source = VideoClassification(records, train=True, frames=8, size=224, sampler="tsn", crop="rrc")
        decode = {f"workers_{w}": clips_per_second(source, w, _BATCHES.value) for w in (1, 2)}
    result = {
        "benchmark": "data",
        "clip": "8 frames (TSN) of 10 s 30 fps 340x256 H.264 -> RandomResizedCrop 224 + flip",
        "decode_augment_clips_per_sec": decode,
        "quickstart_train_clips_per_sec": quickstart_examples_per_second(),
    }
    report.write(result, _OUT.value)


if __name__ == "__main__":
    app.run(main)
