"""ViCLIP train-step time with 90% vs 0% video-token drop at the same batch, scaled-down B/16 shapes.

    python -m experiments.bench.viclip_token_drop --out experiments/results/viclip_token_drop_<machine>.json

ViCLIP-B/16's layout (patch 16, 8 frames, joint space-time attention over
every kept token) at half width and depth and 112 px, so a CPU finishes:
vision 384 wide, 6 blocks, 6 heads over 8 x 7 x 7 = 392 patch tokens, of
which a 0.9 drop keeps 40 (+ CLS); the text tower is the tiny config's.
Timed by the train loop itself (the compiled step, after compilation), on
the synthetic captioned clips, batch 8.
"""
from __future__ import annotations

import tempfile

from absl import app, flags

from configs.viclip.pretrain import get_config
from experiments.bench import report
from vfm_jax.train import train_and_evaluate

_OUT = flags.DEFINE_string("out", None, "JSON file to write (printed to stdout too).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per setting.")


def step_time(drop_ratio: float) -> dict:
    config = get_config(f"model=tiny,steps={_STEPS.value}")
    config.log_every = _STEPS.value
    config.eval_every = 10**9
    config.checkpoint_every = 10**9
    config.batch_size = 8
    config.evals = {}
    config.report = ()
    config.data.update(size=112, train_examples=64)
    config.model.vision.update(width=384, depth=6, num_heads=6, patch_size=16, image_size=112,
                               drop_ratio=drop_ratio)
    with tempfile.TemporaryDirectory() as workdir:
        results = train_and_evaluate(config, workdir)
    return {
        "drop_ratio": drop_ratio,
        "step_time_ms": 1000.0 / results["steps_per_sec"],
        "clips_per_sec": results["examples_per_sec"],
        "xla_flops_per_step": results["flops_per_sec"] / results["steps_per_sec"],
    }


def main(argv):
    del argv
    dropped, full = step_time(0.9), step_time(0.0)
    result = {
        "benchmark": "viclip_token_drop",
        "shapes": "vision 384 wide, 6 blocks, 6 heads, patch 16, 8 frames x 112 px; tiny text tower; batch 8",
        "drop_90": dropped,
        "no_drop": full,
        "speedup": full["step_time_ms"] / dropped["step_time_ms"],
    }
    report.write(result, _OUT.value)


if __name__ == "__main__":
    app.run(main)
