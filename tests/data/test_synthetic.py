"""MovingShapes: determinism, balance, TSN sampling, and that the labels are
encoded across frames but not recoverable from the middle frame alone."""
import numpy as np
import pytest

from data.synthetic import DIRECTIONS, LABELS, MovingShapes, num_classes

N = 2000


def _masks(video: np.ndarray) -> dict:
    """Per-pixel masks of the marker colours, the white dot and the main shape."""
    r, g, b = (video[..., c].astype(np.int32) for c in range(3))
    red = (r == 255) & (g == 0) & (b == 0)
    blue = (r == 0) & (g == 0) & (b == 255)
    white = (r == 255) & (g == 255) & (b == 255)
    shape = (video.max(-1) > 100) & ~red & ~blue & ~white
    return {"red": red, "blue": blue, "white": white, "shape": shape}


def _centroid(mask: np.ndarray) -> np.ndarray:
    """(y, x) centroid of a (H, W) mask."""
    ys, xs = np.nonzero(mask)
    return np.array([ys.mean(), xs.mean()])


def _direction_rule(video: np.ndarray) -> int:
    dy, dx = _centroid(_masks(video[-1])["shape"]) - _centroid(_masks(video[0])["shape"])
    if abs(dx) > abs(dy):
        return DIRECTIONS.index("right" if dx > 0 else "left")
    return DIRECTIONS.index("down" if dy > 0 else "up")


@pytest.fixture(scope="module")
def full():
    ds = MovingShapes("train", num_examples=N)
    return [ds[i] for i in range(N)]


@pytest.fixture(scope="module")
def single():
    ds = MovingShapes("train", num_examples=N, frames=1)
    return [ds[i] for i in range(N)]


def test_example_format(full):
    ex = full[3]
    assert ex["video"].shape == (8, 32, 32, 3) and ex["video"].dtype == np.uint8
    for key in ("direction", "order", "count", "index"):
        assert isinstance(ex[key], np.int32) and ex[key].shape == ()
    assert ex["index"] == 3
    assert isinstance(ex["caption"], str)
    assert len(MovingShapes("val", num_examples=17)) == 17
    ex = MovingShapes("test", num_examples=1, frames=3, size=48, clip_frames=12)[0]
    assert ex["video"].shape == (3, 48, 48, 3)


def test_deterministic_and_order_independent():
    ds = MovingShapes("train", num_examples=50, seed=3)
    forward = [ds[i] for i in range(50)]
    again = MovingShapes("train", num_examples=50, seed=3)
    for i in reversed(range(50)):
        ex = again[i]
        np.testing.assert_array_equal(ex["video"], forward[i]["video"])
        assert ex["caption"] == forward[i]["caption"]
        assert ex["direction"] == forward[i]["direction"]


def test_splits_and_seeds_differ():
    videos = {
        (split, seed): np.stack([MovingShapes(split, num_examples=20, seed=seed)[i]["video"]
                                 for i in range(20)])
        for split in ("train", "val", "test") for seed in (0, 1)
    }
    keys = list(videos)
    for a in range(len(keys)):
        for b in range(a + 1, len(keys)):
            # No example of one stream equals any example of another.
            eq = (videos[keys[a]][:, None] == videos[keys[b]][None]).all(axis=(2, 3, 4, 5))
            assert not eq.any(), (keys[a], keys[b])


def test_labels_balanced(full):
    for label, names in LABELS.items():
        counts = np.bincount([ex[label] for ex in full], minlength=len(names))
        assert len(counts) == num_classes(label)
        expected = N / len(names)
        assert np.all(np.abs(counts - expected) < 0.2 * expected), (label, counts)


def test_caption_matches_labels(full):
    for ex in full[:200]:
        caption = ex["caption"]
        assert f" moves {DIRECTIONS[ex['direction']]};" in caption
        first = "red" if ex["order"] == 0 else "blue"
        assert f"the {first} marker flashes before" in caption
        times = ("once", "twice", "three times", "four times")[ex["count"]]
        assert caption.endswith(f"blinks {times}.")


@pytest.mark.parametrize("frames,clip_frames", [(1, 8), (2, 8), (3, 8), (4, 8), (5, 8),
                                                (8, 8), (4, 10), (6, 6)])
def test_frames_are_tsn_middles_of_the_clip(frames, clip_frames):
    clip = MovingShapes("val", num_examples=5, frames=clip_frames, clip_frames=clip_frames)
    sampled = MovingShapes("val", num_examples=5, frames=frames, clip_frames=clip_frames)
    middles = [((2 * k + 1) * clip_frames) // (2 * frames) for k in range(frames)]
    for i in range(5):
        a, b = clip[i], sampled[i]
        np.testing.assert_array_equal(b["video"], a["video"][middles])
        assert a["caption"] == b["caption"]


def test_middle_frame_carries_no_direction_information(full, single):
    directions = np.array([ex["direction"] for ex in single])
    middle = np.stack([_centroid(_masks(ex["video"][0])["shape"]) for ex in single])
    first = np.stack([_centroid(_masks(ex["video"][0])["shape"]) for ex in full])
    middle_means = np.stack([middle[directions == d].mean(0) for d in range(4)])
    first_means = np.stack([first[directions == d].mean(0) for d in range(4)])
    # Same mean position for every direction on the frame frames=1 returns...
    assert np.abs(middle_means - middle.mean(0)).max() < 0.5, middle_means
    # ...while the first frame of the clip clearly gives the direction away.
    assert np.abs(first_means - first.mean(0)).max() > 4, first_means


def test_direction_recoverable_from_all_frames(full):
    predicted = np.array([_direction_rule(ex["video"]) for ex in full])
    accuracy = np.mean(predicted == np.array([ex["direction"] for ex in full]))
    assert accuracy > 0.95


def test_order_and_count_recoverable_from_all_frames(full):
    for ex in full:
        masks = _masks(ex["video"])
        red_frames = np.flatnonzero(masks["red"].any(axis=(1, 2)))
        blue_frames = np.flatnonzero(masks["blue"].any(axis=(1, 2)))
        assert len(red_frames) == len(blue_frames) == 1
        assert red_frames[0] != blue_frames[0]
        assert ex["order"] == int(blue_frames[0] < red_frames[0])
        assert ex["count"] == masks["white"].any(axis=(1, 2)).sum() - 1


@pytest.mark.parametrize("kwargs", [
    {"split": "dev"},
    {"frames": 0},
    {"frames": 9},
    {"clip_frames": 5, "frames": 5},
    {"size": 8},
    {"num_examples": -1},
])
def test_bad_arguments(kwargs):
    kwargs = {"num_examples": 10, **kwargs}
    with pytest.raises(ValueError):
        MovingShapes(**kwargs)


def test_bad_split_is_named():
    with pytest.raises(ValueError, match="dev"):
        MovingShapes("dev", num_examples=1)


def test_num_classes():
    assert [num_classes(k) for k in ("direction", "order", "count")] == [4, 2, 4]
    with pytest.raises(ValueError, match="direction"):
        num_classes("colour")


def test_index_out_of_range():
    ds = MovingShapes(num_examples=3)
    with pytest.raises(IndexError):
        ds[3]


def test_shipped_vocab_file_is_the_caption_vocabulary():
    """data/vocab/moving_shapes_wordpiece.txt is caption_vocabulary(), one token per line, and covers every caption."""
    from data.synthetic import VOCAB_FILE, caption_vocabulary
    from data.tokenizers import WordPieceTokenizer

    with open(VOCAB_FILE) as f:
        assert tuple(line.rstrip("\n") for line in f) == caption_vocabulary()
    tokenizer = WordPieceTokenizer(VOCAB_FILE)
    source = MovingShapes("train", num_examples=200, frames=4, size=32, clip_frames=8, seed=0)
    for i in range(len(source)):
        ids = tokenizer.encode(source[i]["caption"])["input_ids"]
        assert tokenizer.unk_id not in ids
