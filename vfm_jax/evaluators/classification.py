"""Top-1 / top-5 accuracy and loss over a whole split."""
from __future__ import annotations

import jax
import numpy as np

from data.pipeline import eval_batches
from vfm_jax import sharding
from vfm_jax.input import make_source


class ClassificationEvaluator:
    def __init__(self, cfg, data_cfg, task, mesh):
        self.source = make_source(data_cfg, cfg.split)
        self.batch_size = cfg.batch_size
        self.task = task
        self.mesh = mesh
        self._batch_sharding = sharding.batch_sharding(mesh)
        self._step = jax.jit(task.eval_metrics, out_shardings=sharding.replicated(mesh))

    def run(self, variables) -> dict[str, float]:
        totals: dict[str, float] = {}
        for local in eval_batches(
            self.source, global_batch_size=self.batch_size, keys=self.task.input_keys
        ):
            batch = jax.tree.map(
                lambda x: jax.make_array_from_process_local_data(self._batch_sharding, x), local
            )
            for k, v in jax.device_get(self._step(variables, batch)).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        count = totals.pop("count")
        return {k: float(np.float64(v) / count) for k, v in totals.items()}
