"""Data sources named by `config.data.name`."""
from __future__ import annotations

from data.synthetic import MovingShapes


def make_source(cfg, split: str):
    """Random-access source for `split` ('train', 'val', ...)."""
    if cfg.name == "moving_shapes":
        key = f"{split}_examples"
        if key not in cfg:
            raise ValueError(f"config.data has no {key!r} for split {split!r}")
        return MovingShapes(
            split, num_examples=cfg[key], frames=cfg.frames, size=cfg.size,
            clip_frames=cfg.clip_frames, seed=cfg.seed,
        )
    raise ValueError(f"config.data.name={cfg.name!r} is not a known dataset ('moving_shapes')")
