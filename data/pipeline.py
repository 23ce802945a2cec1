"""Grain input pipelines for the train and eval loops, sharded per JAX process."""
import functools
from typing import Iterator, Sequence

import grain
import jax
import numpy as np
from absl import flags


def _select(example: dict, keys: Sequence[str]) -> dict:
    return {k: example[k] for k in keys}


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by "
                         f"process_count {process_count}")
    return global_batch_size // process_count


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index {index} not in [0, {count})")
    return index, count


def train_iter(source, *, global_batch_size: int, seed: int, keys: Sequence[str],
               num_workers: int = 0, process_index: int | None = None,
               process_count: int | None = None) -> grain.DatasetIterator:
    """Infinite shuffled batches of this process's shard; checkpointable via get_state().

    Shuffling before `repeat` gives each epoch a fresh permutation (grain folds the
    epoch into the shuffle seed). Slicing the global stream per process keeps the
    processes disjoint within every epoch.
    """
    process_index, process_count = _process(process_index, process_count)
    local = _local_batch_size(global_batch_size, process_count)
    dataset = (
        grain.MapDataset.source(source)
        .shuffle(seed=seed)
        .repeat(None)[process_index::process_count]
        .map(functools.partial(_select, keys=tuple(keys)))
        .batch(local, drop_remainder=True)
        .to_iter_dataset()
    )
    if num_workers > 0:
        # grain 0.2.18's mp_prefetch reads an absl flag when jax is importable and
        # raises UnparsedFlagAccessError unless flags were parsed (e.g. by app.run).
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(dataset)


def eval_batches(source, *, global_batch_size: int, keys: Sequence[str],
                 process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[dict]:
    """One in-order pass with every example on exactly one process.

    All processes yield the same number of full-size batches, as multi-host
    collectives require; padding rows repeat example 0 and have `mask` False.
    """
    process_index, process_count = _process(process_index, process_count)
    local = _local_batch_size(global_batch_size, process_count)
    shard = grain.MapDataset.source(source)[process_index::process_count]
    shard = shard.map(functools.partial(_select, keys=tuple(keys)))
    per_process = -(-len(source) // process_count)
    num_batches = -(-per_process // local)
    for start in range(0, num_batches * local, local):
        rows = range(start, start + local)
        examples = [shard[i] if i < len(shard) else _select(source[0], keys) for i in rows]
        batch = {k: np.stack([e[k] for e in examples]) for k in keys}
        batch["mask"] = np.array([i < len(shard) for i in rows])
        yield batch
