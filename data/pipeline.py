"""Grain input pipelines for the train and eval loops, sharded per JAX process."""
import functools
import json
from typing import Iterator, Sequence

import grain
import jax
import numpy as np
from absl import flags


# Data-health fields a loader may add; they travel with every batch so the loop can log them.
PASSTHROUGH = ("failed_reads",)


def _select(example: dict, keys: Sequence[str]) -> dict:
    return {k: example[k] for k in keys} | {k: example[k] for k in PASSTHROUGH if k in example}


def first_example(source) -> dict:
    """What one element of `source` looks like after loading (for shapes and dtypes)."""
    element = source[0]
    return source.load(element, np.random.default_rng(0)) if hasattr(source, "load") else element


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
               num_workers: int = 0, read_options: grain.ReadOptions | None = None,
               process_index: int | None = None,
               process_count: int | None = None) -> grain.DatasetIterator:
    """Infinite shuffled batches: this process's rows of each global batch; checkpointable via get_state().

    Shuffling before `repeat` gives each epoch a fresh permutation (grain folds the
    epoch into the shuffle seed). Global batch `b` is examples `[b*G, (b+1)*G)` of
    that stream; this process loads row block `process_index` of `process_count`
    (default: JAX's process index and count; the train loop passes the block
    its devices hold, `vfm_jax.sharding.process_batch_block`). So the global
    batches, and the augmentation rng of every example (drawn from its position
    in the stream), do not depend on the process count, and the iterator state
    (batches consumed) means the same on every process: a run resumes on
    another number of hosts with the same data. `read_options` sets the
    threads and prefetch buffer of each process (grain's defaults: 16 threads,
    500 elements).
    """
    process_index, process_count = _process(process_index, process_count)
    local = _local_batch_size(global_batch_size, process_count)
    dataset = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
    if hasattr(source, "load"):  # decode + augment, with an rng drawn from the seed and position
        dataset = dataset.random_map(source.load, seed=seed)
    dataset = (
        dataset.map(functools.partial(_select, keys=tuple(keys)))
        .batch(local, drop_remainder=True)[process_index::process_count]
        .to_iter_dataset(read_options)
    )
    if num_workers > 0:
        # grain 0.2.18's mp_prefetch reads an absl flag when jax is importable and
        # raises UnparsedFlagAccessError unless flags were parsed (e.g. by app.run).
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(dataset)


class SourceMix:
    """Whole batches from several train iterators in a shuffled order: UMT/VINDLU's MetaLoader.

    Each round (the official epoch of the MetaLoader) holds `batches[name]`
    batches of each source in a permutation drawn from (seed, round), so every
    process takes the same source at the same step and a restored position
    replays the same order. `next()` returns (name, batch). Checkpointable by
    grain's handler: `get_state()` is the position plus each iterator's state.
    """

    def __init__(self, iterators: dict[str, Iterator], batches: dict[str, int], seed: int):
        if set(iterators) != set(batches) or not iterators:
            raise ValueError(f"SourceMix needs one batch count per iterator, got {sorted(iterators)} and {sorted(batches)}")
        if any(n < 1 for n in batches.values()):
            raise ValueError(f"every source needs >= 1 batch per round, got {batches}")
        self.iterators, self.names = iterators, sorted(iterators)
        self.counts = np.asarray([batches[n] for n in self.names])
        self.seed, self.position = seed, 0
        self._round, self._order = -1, None

    def order(self, round_index: int) -> np.ndarray:
        """Source indices (into sorted names) of one round's batches."""
        rng = np.random.default_rng([self.seed, round_index])
        return rng.permutation(np.repeat(np.arange(len(self.names)), self.counts))

    def __iter__(self):
        return self

    def __next__(self) -> tuple[str, dict]:
        round_index, offset = divmod(self.position, int(self.counts.sum()))
        if round_index != self._round:
            self._round, self._order = round_index, self.order(round_index)
        name = self.names[self._order[offset]]
        self.position += 1
        return name, next(self.iterators[name])

    def get_state(self) -> bytes:
        return json.dumps({
            "position": self.position,
            "iterators": {n: _state_json(it.get_state()) for n, it in self.iterators.items()},
        }).encode()

    def set_state(self, state: bytes):
        state = json.loads(state)
        self.position = state["position"]
        for name, it in self.iterators.items():
            it.set_state(_state_from_json(state["iterators"][name]))

    def start_prefetch(self):
        for it in self.iterators.values():
            if hasattr(it, "start_prefetch"):
                it.start_prefetch()


def _state_json(state):
    """A grain iterator's state as JSON: a dict (DatasetIterator) or bytes (older iterators)."""
    return {"bytes": state.decode()} if isinstance(state, bytes) else {"dict": state}


def _state_from_json(state):
    return state["bytes"].encode() if "bytes" in state else state["dict"]


def eval_batches(source, *, global_batch_size: int, keys: Sequence[str],
                 read_options: grain.ReadOptions | None = None,
                 process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[dict]:
    """One in-order pass with every example on exactly one process.

    All processes yield the same number of full-size batches, as multi-host
    collectives require; padding rows repeat the shard's first example and have
    `mask` False. Examples are loaded by grain's reader threads (`read_options`).
    """
    process_index, process_count = _process(process_index, process_count)
    local = _local_batch_size(global_batch_size, process_count)
    shard = grain.MapDataset.source(source)[process_index::process_count]
    if hasattr(source, "load"):  # test-time views; the seeded rng only picks replacements of bad files
        shard = shard.random_map(source.load, seed=0)
    shard = shard.map(functools.partial(_select, keys=tuple(keys)))
    per_process = -(-len(source) // process_count)
    num_rows = -(-per_process // local) * local

    def row(i: int) -> dict:
        if i < len(shard):
            return {**shard[i], "mask": np.bool_(True)}
        example = shard[0] if len(shard) else _select(first_example(source), keys)
        return {**example, "mask": np.bool_(False)}

    batches = grain.MapDataset.range(num_rows).map(row).batch(local).to_iter_dataset(read_options)
    yield from batches
