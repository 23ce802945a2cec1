"""Orbax checkpoints: {params, train state, data iterator, config, metadata} per step.

Layout of `<dir>/<step>/`:
  params/    {'params': ..., <other variable collections>} - all a model needs;
             converted official weights are checkpoints with this item only
  train/     {'step', 'opt_state', 'rng'}
  data/      the grain iterator state (one file per process; any restores any
             process count, see `DataIteratorHandler`)
  config/    the run's config as JSON
  metadata/  model spec, whether layers are scanned, dtypes, mesh, versions

Restoring walks the steps newest first; a step that fails to restore (half
written, corrupt) is moved aside to `<dir>/../corrupt_checkpoints/` with a
warning and the previous step is tried.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath


def abstract_with_shardings(tree, shardings):
    """ShapeDtypeStructs carrying the target shardings: what Orbax restores onto (any mesh)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


class DataIteratorHandler(grain.checkpoint.CheckpointHandler):
    """grain's handler (one `process_<i>-of-<n>.json` per process) that also restores on another process count.

    `data.pipeline.train_iter` makes a state (the batches consumed) name the
    same global batches on every process whatever their number, so a process
    without a file of its own takes process 0's. grain's own restore raises
    there, and the step would be set aside as corrupt.
    """

    def restore(self, directory: epath.Path, item=None, args=None):
        item = item or args.item
        path = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if not path.exists():
            path = next(iter(directory.glob("process_0-of-*.json")), path)
        state = path.read_text()
        item.set_state(json.loads(state) if isinstance(item, grain.DatasetIterator) else state.encode())
        item.start_prefetch()
        return item


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class _DataSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class _DataRestore(ocp.args.CheckpointArgs):
    item: Any


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, *, keep: int = 3):
        self.directory = epath.Path(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.LatestN(keep),
                create=True,
            ),
        )

    def save(self, step: int, *, variables, train, data_iter, config: dict, metadata: dict):
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(variables),
                train=ocp.args.StandardSave(train),
                data=_DataSave(data_iter),
                config=ocp.args.JsonSave(config),
                metadata=ocp.args.JsonSave(metadata),
            ),
            force=True,
        )

    def wait(self):
        self.manager.wait_until_finished()

    def restore_latest(self, abstract_variables, abstract_train, data_iter) -> tuple[Any, Any] | None:
        """(variables, train) of the newest restorable step, data_iter positioned there; None if none."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        params=ocp.args.StandardRestore(abstract_variables),
                        train=ocp.args.StandardRestore(abstract_train),
                        data=_DataRestore(data_iter),
                    ),
                )
            except Exception as e:  # noqa: BLE001 - any failure means this step is unusable
                self._quarantine(step, e)
                continue
            logging.info("restored checkpoint step %d from %s", step, self.directory)
            return restored.params, restored.train
        return None

    def _quarantine(self, step: int, error: Exception):
        target = self.directory.parent / "corrupt_checkpoints" / f"{step}-{int(time.time())}"
        logging.warning(
            "checkpoint step %d in %s cannot be restored (%s: %s); moving it to %s and trying "
            "the previous step", step, self.directory, type(error).__name__, error, target,
        )
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(target)
        ocp.multihost.sync_global_processes(f"quarantine_{step}")
        self.manager.reload()

    def close(self):
        self.manager.close()


def save_variables(path: str | os.PathLike, variables, metadata: dict, step: int = 0):
    """A params-only checkpoint (what converters write): `<path>/<step>/{params, metadata}`."""
    manager = ocp.CheckpointManager(epath.Path(path), options=ocp.CheckpointManagerOptions(create=True))
    manager.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(variables), metadata=ocp.args.JsonSave(metadata)
        ),
        force=True,
    )
    manager.wait_until_finished()
    manager.close()


def _step_dir(path: str | os.PathLike) -> epath.Path:
    """A step directory from a run's workdir, its checkpoints dir, or a step dir itself."""
    path = epath.Path(path)
    if (path / "params").exists():
        return path
    if (path / "checkpoints").exists():
        path = path / "checkpoints"
    steps = sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())
    if not steps:
        raise FileNotFoundError(f"no checkpoint steps under {path}")
    return path / str(steps[-1])


def read_metadata(path: str | os.PathLike) -> dict:
    step_dir = _step_dir(path)
    return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(step_dir / "metadata")


def load_variables(path: str | os.PathLike, abstract_variables=None, *, partial: bool = False):
    """Model variables ({'params': ...}) from the newest step under `path`.

    With `abstract_variables` (ShapeDtypeStructs with shardings) they are
    restored onto that layout; without, onto the first local device, whatever
    mesh wrote them. `partial=True` restores only the entries the target
    names and ignores the rest (e.g. evaluating a stage-2 model without its
    training-only alignment heads and teacher); every target entry must exist.
    """
    item = _step_dir(path) / "params"
    checkpointer = ocp.StandardCheckpointer()
    if abstract_variables is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract_variables = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            checkpointer.metadata(item).item_metadata.tree,
        )
    if not partial:
        return checkpointer.restore(item, abstract_variables)
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_variables)
    restored = ocp.PyTreeCheckpointer().restore(
        item, args=ocp.args.PyTreeRestore(abstract_variables, restore_args=restore_args, partial_restore=True)
    )
    missing = [
        jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(restored)
        if isinstance(v, jax.ShapeDtypeStruct)
    ]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {len(missing)} entries the model needs: {missing[:10]}")
    return restored


def split_subtree(path: str) -> tuple[str, str]:
    """`folder:name` -> (folder, name), a top-level params subtree of a converted folder; plain paths -> (path, '').

    A suffix holding `/` is part of the path, so `gs://bucket/run` has none.
    """
    folder, sep, name = str(path).rpartition(":")
    if not sep or not name or "/" in name:
        return str(path), ""
    return folder, name
