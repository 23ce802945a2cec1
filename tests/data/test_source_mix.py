"""SourceMix: MetaLoader-style alternation of whole batches, with a checkpointable position."""
import numpy as np
import pytest

from data.pipeline import SourceMix, train_iter
from data.synthetic import MovingShapes


def _iterators():
    video = MovingShapes("train", num_examples=48, frames=4, size=16, clip_frames=8, seed=0)
    image = MovingShapes("train", num_examples=32, frames=1, size=16, clip_frames=8, seed=1)
    return {
        "video": train_iter(video, global_batch_size=8, seed=0, keys=("video",)),
        "image": train_iter(image, global_batch_size=4, seed=1, keys=("video",)),
    }


def test_each_round_holds_every_source_batch_count_in_a_seeded_order():
    mix = SourceMix(_iterators(), {"video": 6, "image": 8}, seed=3)
    names = [next(mix)[0] for _ in range(28)]
    for round_names in (names[:14], names[14:]):
        assert round_names.count("video") == 6 and round_names.count("image") == 8
    assert names[:14] != names[14:], "each round draws a new order"
    again = SourceMix(_iterators(), {"video": 6, "image": 8}, seed=3)
    assert [next(again)[0] for _ in range(28)] == names


def test_batches_keep_their_source_shapes():
    mix = SourceMix(_iterators(), {"video": 6, "image": 8}, seed=0)
    for _ in range(10):
        name, batch = next(mix)
        assert batch["video"].shape[:2] == ((8, 4) if name == "video" else (4, 1))


def test_restored_state_replays_the_same_stream():
    mix = SourceMix(_iterators(), {"video": 6, "image": 8}, seed=0)
    for _ in range(5):
        next(mix)
    state = mix.get_state()
    expected = [next(mix) for _ in range(12)]
    restored = SourceMix(_iterators(), {"video": 6, "image": 8}, seed=0)
    restored.set_state(state)
    for (name, batch), (want_name, want) in zip((next(restored) for _ in range(12)), expected):
        assert name == want_name
        np.testing.assert_array_equal(batch["video"], want["video"])


def test_bad_counts():
    with pytest.raises(ValueError, match="one batch count per iterator"):
        SourceMix(_iterators(), {"video": 6}, seed=0)
    with pytest.raises(ValueError, match=">= 1 batch"):
        SourceMix(_iterators(), {"video": 6, "image": 0}, seed=0)
