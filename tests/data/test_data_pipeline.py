"""Grain pipelines: batch shapes, per-process sharding, checkpointable state, eval padding."""
import json

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from data.pipeline import eval_batches, train_iter
from data.synthetic import MovingShapes

N = 48
KEYS = ("video", "index")


@pytest.fixture(scope="module")
def source():
    return MovingShapes("train", num_examples=N, frames=2, size=16)


def _indices(it, num_batches: int) -> np.ndarray:
    return np.stack([np.array(next(it)["index"]) for _ in range(num_batches)])


def test_train_batch_format(source):
    it = train_iter(source, global_batch_size=8, seed=0, keys=KEYS,
                    process_index=1, process_count=2)
    batch = next(it)
    assert set(batch) == set(KEYS)
    assert batch["video"].shape == (4, 2, 16, 16, 3) and batch["video"].dtype == np.uint8
    assert batch["index"].shape == (4,) and batch["index"].dtype == np.int32


def test_train_defaults_to_jax_process(source):
    batch = next(train_iter(source, global_batch_size=6, seed=0, keys=("caption",)))
    assert batch["caption"].shape == (6,)


def test_train_processes_disjoint_and_epochs_reshuffled(source):
    # 48 examples, local batch 4 on 2 processes: 6 batches per process per epoch.
    iters = [train_iter(source, global_batch_size=8, seed=7, keys=KEYS,
                        process_index=p, process_count=2) for p in range(2)]
    epochs = [[_indices(it, 6).ravel() for it in iters] for _ in range(2)]
    for first, second in epochs:
        assert not set(first) & set(second)
        assert sorted(np.concatenate([first, second])) == list(range(N))
    assert not np.array_equal(epochs[0][0], epochs[1][0])


def test_train_seed_changes_order(source):
    a = _indices(train_iter(source, global_batch_size=8, seed=0, keys=KEYS), 3)
    b = _indices(train_iter(source, global_batch_size=8, seed=1, keys=KEYS), 3)
    assert not np.array_equal(a, b)


def test_train_state_restores_exactly(source):
    kwargs = dict(global_batch_size=8, seed=3, keys=KEYS, process_index=0, process_count=2)
    it = train_iter(source, **kwargs)
    _indices(it, 4)
    state = it.get_state()
    json.dumps(state)  # Checkpointed as JSON by grain.checkpoint.
    expected = [next(it) for _ in range(4)]  # Crosses the epoch boundary.
    restored = train_iter(source, **kwargs)
    restored.set_state(state)
    for want in expected:
        got = next(restored)
        for key in KEYS:
            np.testing.assert_array_equal(got[key], want[key])


def test_train_state_round_trips_through_orbax(source, tmp_path):
    kwargs = dict(global_batch_size=8, seed=3, keys=KEYS, process_index=0, process_count=1)
    it = train_iter(source, **kwargs)
    _indices(it, 3)
    with ocp.CheckpointManager(tmp_path) as manager:
        manager.save(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        manager.wait_until_finished()
        restored = train_iter(source, **kwargs)
        manager.restore(1, args=ocp.args.Composite(
            data=grain.checkpoint.CheckpointRestore(restored)))
    np.testing.assert_array_equal(_indices(restored, 2), _indices(it, 2))


def test_train_with_worker_processes(source):
    kwargs = dict(global_batch_size=8, seed=5, keys=KEYS, process_index=1, process_count=2)
    expected = _indices(train_iter(source, **kwargs), 8)
    it = train_iter(source, num_workers=1, **kwargs)
    got = _indices(it, 5)
    state = it.get_state()
    got = np.concatenate([got, _indices(it, 3)])
    it.close()
    np.testing.assert_array_equal(got, expected)
    restored = train_iter(source, num_workers=1, **kwargs)
    restored.set_state(state)
    np.testing.assert_array_equal(_indices(restored, 3), expected[5:])
    restored.close()


def test_batch_must_divide_across_processes(source):
    with pytest.raises(ValueError, match="divisible"):
        train_iter(source, global_batch_size=7, seed=0, keys=KEYS,
                   process_index=0, process_count=2)
    with pytest.raises(ValueError, match="divisible"):
        next(eval_batches(source, global_batch_size=7, keys=KEYS,
                          process_index=0, process_count=2))


@pytest.mark.parametrize("num_examples,global_batch_size,process_count", [
    (37, 8, 2), (37, 8, 1), (48, 8, 2), (3, 5, 5), (10, 3, 3),
])
def test_eval_covers_every_example_once(num_examples, global_batch_size, process_count):
    source = MovingShapes("val", num_examples=num_examples, frames=1, size=16)
    local = global_batch_size // process_count
    seen, num_batches = [], []
    for p in range(process_count):
        batches = list(eval_batches(source, global_batch_size=global_batch_size,
                                    keys=("index", "direction"), process_index=p,
                                    process_count=process_count))
        num_batches.append(len(batches))
        for batch in batches:
            assert set(batch) == {"index", "direction", "mask"}
            assert batch["index"].shape == batch["mask"].shape == (local,)
            assert batch["mask"].dtype == bool
            seen.extend(batch["index"][batch["mask"]])
            for i, d in zip(batch["index"][batch["mask"]], batch["direction"][batch["mask"]]):
                assert d == source[int(i)]["direction"]
    assert len(set(num_batches)) == 1
    assert sorted(seen) == list(range(num_examples))
    # Padding stays below one batch per process.
    assert num_batches[0] * global_batch_size - num_examples < global_batch_size


def test_eval_is_in_order():
    source = MovingShapes("val", num_examples=10, frames=1, size=16)
    batches = list(eval_batches(source, global_batch_size=4, keys=("index",)))
    order = np.concatenate([b["index"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(order, np.arange(10))
