"""vfm_jax: the OpenGVLab video foundation models in JAX/Flax.

Public API: `get_model(name, **overrides)` builds a named model from
`vfm_jax.models.PRESETS`; `load_pretrained(path)` returns the model and
variables of a checkpoint (a training run or converted official weights).
"""
from __future__ import annotations

from vfm_jax.models import PRESETS, build_model, get_model


def load_pretrained(path):
    """(model, variables) from a checkpoint folder; the model spec comes from its metadata."""
    # Imported here so that the models import without Orbax/grain (e.g. on a bare GPU image).
    from vfm_jax.checkpointing import load_variables, read_metadata

    model = build_model(read_metadata(path)["model"])
    return model, load_variables(path)


__all__ = ["PRESETS", "get_model", "load_pretrained"]
