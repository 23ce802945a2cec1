"""Evaluators run by the loop every `evals.<name>.every` steps and by `vfm_jax.evaluate`."""
from __future__ import annotations

import flax.linen as nn
import jax

from vfm_jax import sharding
from vfm_jax.evaluators.classification import ClassificationEvaluator
from vfm_jax.evaluators.dual_encoder_retrieval import DualEncoderRetrievalEvaluator
from vfm_jax.evaluators.retrieval import RetrievalEvaluator
from vfm_jax.evaluators.zero_shot import ZeroShotClassificationEvaluator

EVALUATORS = {
    "classification": ClassificationEvaluator,
    "retrieval": RetrievalEvaluator,
    "dual_encoder_retrieval": DualEncoderRetrievalEvaluator,
    "zero_shot": ZeroShotClassificationEvaluator,
}


def build_evaluators(config, task, mesh) -> dict:
    """{name: evaluator} for every entry of `config.evals`."""
    out = {}
    for name, cfg in config.evals.items():
        if cfg.type not in EVALUATORS:
            raise ValueError(f"evals.{name}.type={cfg.type!r} is not one of {sorted(EVALUATORS)}")
        out[name] = EVALUATORS[cfg.type](cfg, config.data, task, mesh)
    return out


def run_evaluators(evaluators: dict, variables, mesh) -> dict[str, float]:
    """{'<eval name>_<metric>': value} over all evaluators."""
    results = {}
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        for name, evaluator in evaluators.items():
            results.update({f"{name}_{k}": v for k, v in evaluator.run(variables).items()})
    return results
