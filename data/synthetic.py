"""MovingShapes: a deterministic procedural video dataset that needs no download.

Every label is a property of the whole clip (motion, temporal order, event count),
so a model has to integrate several frames to solve it; one frame alone cannot.
"""
import os
from typing import Callable

import numpy as np

DIRECTIONS = ("right", "left", "down", "up")
LABELS = {
    "direction": DIRECTIONS,
    "order": ("red first", "blue first"),
    "count": ("1", "2", "3", "4"),
}
SPLITS = ("train", "val", "test")
SHAPES = ("square", "circle", "triangle", "cross")
# Named so captions are exact; no entry is pure red, pure blue or white, so the
# markers and the blinking dot stay identifiable by colour alone.
PALETTE = (
    ("yellow", (230, 220, 40)),
    ("green", (50, 200, 60)),
    ("cyan", (40, 210, 220)),
    ("magenta", (220, 50, 210)),
    ("orange", (245, 140, 30)),
    ("purple", (150, 70, 230)),
)
RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
# (dy, dx) unit steps, indexed like DIRECTIONS.
_STEPS = np.array([(0, 1), (0, -1), (1, 0), (-1, 0)])
_TIMES = ("once", "twice", "three times", "four times")
_NOISE_MAX = 30
# A BERT WordPiece vocabulary of every caption word (`caption_vocabulary`), so
# video-text models train on this data with no download.
VOCAB_FILE = os.path.join(os.path.dirname(__file__), "vocab", "moving_shapes_wordpiece.txt")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def caption_vocabulary() -> tuple[str, ...]:
    """Special tokens, then every word and punctuation mark a caption can contain, sorted."""
    words = {"a", "an", "moves", "the", "marker", "flashes", "before", "white", "dot", "blinks", ";", ".",
             "red", "blue", *DIRECTIONS, *SHAPES, *(name for name, _ in PALETTE),
             *(w for t in _TIMES for w in t.split())}
    return SPECIAL_TOKENS + tuple(sorted(words))


def num_classes(label: str) -> int:
    """Number of classes of a label head, so model configs need not hard-code it."""
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; valid labels: {sorted(LABELS)}")
    return len(LABELS[label])


def tsn_indices(frames: int, clip_frames: int) -> np.ndarray:
    """Middle frame of each of `frames` equal segments (TSN test-time sampling)."""
    return ((np.arange(frames) + 0.5) * clip_frames / frames).astype(np.int64)


def _shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, r: int) -> np.ndarray:
    """Boolean mask of a shape of radius r centred at dy == dx == 0."""
    ady, adx = np.abs(dy), np.abs(dx)
    if shape == "square":
        return (ady <= r) & (adx <= r)
    if shape == "circle":
        return dy * dy + dx * dx <= (r + 0.5) ** 2
    if shape == "triangle":
        return (ady <= r) & (2 * adx <= dy + r)
    w = max(1, r // 3)
    return ((ady <= r) & (adx <= w)) | ((ady <= w) & (adx <= r))


class MovingShapes:
    """Random-access source (grain-compatible) of moving-shape clips with labels.

    Example `index` of a split is generated from its own RNG stream
    `default_rng([seed, split_id, index])`, so it does not depend on access order,
    worker or process, and splits never repeat each other.
    """

    def __init__(self, split: str = "train", *, num_examples: int, frames: int = 8,
                 size: int = 32, clip_frames: int = 8, seed: int = 0,
                 encode_text: Callable[[str], dict] | None = None):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if num_examples < 0:
            raise ValueError(f"num_examples must be >= 0, got {num_examples}")
        if clip_frames < 6:
            raise ValueError(f"clip_frames must be >= 6 to fit all events, got {clip_frames}")
        if not 1 <= frames <= clip_frames:
            raise ValueError(f"frames must be in 1..{clip_frames}, got {frames}")
        if size < 16:
            raise ValueError(f"size must be >= 16, got {size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.split = split
        self.num_examples = num_examples
        self.frames = frames
        self.size = size
        self.clip_frames = clip_frames
        self.seed = seed
        self.encode_text = encode_text
        self._split_id = SPLITS.index(split)
        self._sampled = tsn_indices(frames, clip_frames)
        self._radius = max(1, round(size / 10))
        self._marker = max(2, size // 8)
        self._dot = max(1, size // 16)
        # The main shape sits exactly at its centre `c` on the TSN middle frame
        # (the one frames=1 returns); `c` is drawn from one range for every
        # direction, so that frame carries no direction information.
        self._ref = clip_frames // 2
        self._speed = size / 2 / (clip_frames - 1)
        reach = self._radius + int(np.ceil(self._speed * self._ref))
        self._centre_range = (reach, size - 1 - reach)

    def __repr__(self) -> str:
        return (f"MovingShapes(split={self.split!r}, num_examples={self.num_examples}, "
                f"frames={self.frames}, size={self.size}, clip_frames={self.clip_frames}, "
                f"seed={self.seed})")

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        rng = np.random.default_rng([self.seed, self._split_id, index])
        video, labels, caption = self._clip(rng)
        return {
            "video": video[self._sampled],
            **{k: np.int32(v) for k, v in labels.items()},
            "caption": caption,
            **(self.encode_text(caption) if self.encode_text else {}),
            "index": np.int32(index),
        }

    def _clip(self, rng: np.random.Generator) -> tuple[np.ndarray, dict, str]:
        """Draws one full clip of `clip_frames` frames, its labels and caption."""
        t, s = self.clip_frames, self.size
        direction = int(rng.integers(len(DIRECTIONS)))
        order = int(rng.integers(2))
        count = int(rng.integers(4))
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour_name, colour = PALETTE[rng.integers(len(PALETTE))]
        centre = rng.integers(self._centre_range[0], self._centre_range[1] + 1, size=2)

        video = rng.integers(0, _NOISE_MAX + 1, size=(t, s, s, 3), dtype=np.uint8)
        yy, xx = np.ogrid[:s, :s]
        offsets = np.rint(np.outer(np.arange(t) - self._ref, _STEPS[direction]) * self._speed)
        path = (centre + offsets).astype(np.int64)
        dy = yy[None] - path[:, 0, None, None]
        dx = xx[None] - path[:, 1, None, None]
        video[_shape_mask(shape, dy, dx, self._radius)] = colour

        red_at, blue_at = np.sort(rng.choice(t, size=2, replace=False))[[order, 1 - order]]
        red_pos, blue_pos, dot_pos = self._event_positions(rng, centre)
        m, d = self._marker, self._dot
        video[red_at, red_pos[0]:red_pos[0] + m, red_pos[1]:red_pos[1] + m] = RED
        video[blue_at, blue_pos[0]:blue_pos[0] + m, blue_pos[1]:blue_pos[1] + m] = BLUE
        # Drawn last and smaller than a marker: the dot is always visible and
        # never fully hides a marker.
        blinks = rng.choice(t, size=count + 1, replace=False)
        video[blinks, dot_pos[0]:dot_pos[0] + d, dot_pos[1]:dot_pos[1] + d] = WHITE

        first, second = ("red", "blue") if order == 0 else ("blue", "red")
        article = "an" if colour_name[0] in "aeiou" else "a"
        caption = (f"{article} {colour_name} {shape} moves {DIRECTIONS[direction]}; "
                   f"the {first} marker flashes before the {second} marker; "
                   f"the white dot blinks {_TIMES[count]}.")
        return video, {"direction": direction, "order": order, "count": count}, caption

    def _event_positions(self, rng: np.random.Generator, centre: np.ndarray) -> np.ndarray:
        """Top-left corners of the red marker, blue marker and dot.

        They avoid the "+" formed by both possible paths through `centre` (not just
        the actual path), so their placement does not depend on the direction.
        """
        s, r, m = self.size, self._radius, self._marker
        reach = self._centre_range[0]
        candidates = rng.integers(0, s - m + 1, size=(3, 32, 2))
        lo, hi = candidates, candidates + m - 1
        near = (hi >= centre - r) & (lo <= centre + r)
        along = (hi >= centre - reach) & (lo <= centre + reach)
        hits = (near[..., 0] & along[..., 1]) | (near[..., 1] & along[..., 0])
        return candidates[np.arange(3), np.argmin(hits, axis=1)]
