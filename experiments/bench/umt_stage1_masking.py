"""UMT stage-1 step time with 80% vs 0% masking at the same batch, on scaled-down B/16 shapes.

    python -m experiments.bench.umt_stage1_masking --out experiments/results/umt_stage1_masking_<machine>.json

B/16's layout (patch 16, tubelet 1, 8 frames, teacher patch 16) at half
width and depth and 112 px, so a CPU finishes: student and teacher 384 wide,
6 blocks, 6 heads, 8 x 7 x 7 = 392 tokens; 80% masking keeps 49 - 39 = 10
tokens per frame. Timed by the train loop itself (the compiled step, after
compilation), synthetic clips, batch 8.
"""
from __future__ import annotations

from absl import app, flags

from configs.umt.stage1 import get_config
from experiments.bench import report

_OUT = flags.DEFINE_string("out", None, "JSON file to write (printed to stdout too).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per setting.")


def step_time(mask_ratio: float) -> dict:
    config = get_config("model=tiny")
    config.batch_size = 8
    config.data.update(frames=8, size=112, train_examples=64)
    config.model.update(width=384, depth=6, num_heads=6, patch_size=16, clip_output_dim=256)
    config.task.teacher.update(width=384, depth=6, num_heads=6, patch_size=16, image_size=112, output_dim=256)
    config.task.mask_ratio = mask_ratio
    return {"mask_ratio": mask_ratio, **report.train_step_time(config, _STEPS.value)}


def main(argv):
    del argv
    masked, full = step_time(0.8), step_time(0.0)
    result = {
        "benchmark": "umt_stage1_masking",
        "shapes": "student/teacher 384 wide, 6 blocks, 6 heads, patch 16, 8 frames x 112 px, batch 8",
        "masked_80": masked,
        "unmasked": full,
        "speedup": full["step_time_ms"] / masked["step_time_ms"],
    }
    report.write(result, _OUT.value)


if __name__ == "__main__":
    app.run(main)
