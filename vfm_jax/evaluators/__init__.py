"""Evaluators run by the loop every `evals.<name>.every` steps and by `vfm_jax.evaluate`."""
from __future__ import annotations

from vfm_jax.evaluators.classification import ClassificationEvaluator

EVALUATORS = {"classification": ClassificationEvaluator}


def build_evaluators(config, task, mesh) -> dict:
    """{name: evaluator} for every entry of `config.evals`."""
    out = {}
    for name, cfg in config.evals.items():
        if cfg.type not in EVALUATORS:
            raise ValueError(f"evals.{name}.type={cfg.type!r} is not one of {sorted(EVALUATORS)}")
        out[name] = EVALUATORS[cfg.type](cfg, config.data, task, mesh)
    return out
