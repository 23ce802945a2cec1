"""Every config file loads with its defaults and builds its task and model from shapes alone."""
import importlib
import pathlib

import jax
import jax.numpy as jnp
import pytest

from vfm_jax.tasks import build_task

ROOT = pathlib.Path(__file__).parents[2]
CONFIGS = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts[1:])
    for p in (ROOT / "configs").rglob("*.py") if p.stem != "__init__"
)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    task = build_task(config)
    frames, size = config.data.frames, config.data.size
    video = jax.ShapeDtypeStruct((1, frames, size, size, 3), jnp.uint8)
    variables = jax.eval_shape(lambda v: task.init(jax.random.PRNGKey(0), {"video": v}), video)
    assert "params" in variables
    assert config.name == name.replace(".", "_")
