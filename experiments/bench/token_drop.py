"""ViCLIP and Harvest train-step time with 90% vs 0% of the video patches dropped, at the same batch.

    python -m experiments.bench.token_drop --out experiments/results/token_drop_<machine>.json

Both at B/16's layout (patch 16, 8 frames) scaled down so a CPU finishes:
vision 384 wide, 6 blocks, 6 heads, 112 px (7 x 7 patches per frame), the
tiny configs' text towers, batch 8, synthetic captioned clips. ViCLIP drops
int(0.9 * 392) of the joint space-time tokens (40 + CLS stay); Harvest
(InternVideo-MM with 2 global blocks, MLM decoder on) drops int(0.9 * 49)
patches of every frame (5 + CLS per frame stay). Timed by the train loop
itself (the compiled step, after compilation).
"""
from __future__ import annotations

from absl import app, flags

from configs.harvest import post_pretrain
from configs.viclip import pretrain
from experiments.bench import report

_OUT = flags.DEFINE_string("out", None, "JSON file to write (printed to stdout too).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per setting.")
SCALED_B16 = dict(width=384, depth=6, num_heads=6, patch_size=16, image_size=112)


def viclip_config(drop_ratio: float):
    config = pretrain.get_config("model=tiny")
    config.model.vision.update(SCALED_B16, drop_ratio=drop_ratio)
    return config


def harvest_config(drop_ratio: float):
    config = post_pretrain.get_config("model=tiny")
    config.model.vision.update(SCALED_B16, global_layers=(4, 5), drop_ratio=drop_ratio)
    return config


def main(argv):
    del argv
    result = {
        "benchmark": "token_drop",
        "shapes": "vision 384 wide, 6 blocks, 6 heads, patch 16, 8 frames x 112 px; tiny text towers; batch 8",
    }
    for name, make in (("viclip", viclip_config), ("harvest", harvest_config)):
        runs = {}
        for key, ratio in (("drop_90", 0.9), ("no_drop", 0.0)):
            config = make(ratio)
            config.batch_size = 8
            config.data.update(size=112, train_examples=64)
            runs[key] = {"drop_ratio": ratio, **report.train_step_time(config, _STEPS.value)}
        runs["speedup"] = runs["no_drop"]["step_time_ms"] / runs["drop_90"]["step_time_ms"]
        result[name] = runs
    report.write(result, _OUT.value)


if __name__ == "__main__":
    app.run(main)
