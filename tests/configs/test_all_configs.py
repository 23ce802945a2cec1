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
    for p in (ROOT / "configs").rglob("*.py") if not p.stem.startswith("_")
)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    task = build_task(config)
    frames, size = config.data.frames, config.data.size
    batch = {"video": jax.ShapeDtypeStruct((1, frames, size, size, 3), jnp.uint8)}
    if "text_ids" in task.input_keys:
        length = config.data.max_text_length
        batch.update(text_ids=jax.ShapeDtypeStruct((1, length), jnp.int32),
                     text_mask=jax.ShapeDtypeStruct((1, length), jnp.bool_))
    variables = jax.eval_shape(lambda b: task.init(jax.random.PRNGKey(0), b), batch)
    assert "params" in variables
    assert config.name == name.replace(".", "_")


def test_video_classification_refuses_a_non_classifier_preset():
    from configs import video_classification

    with pytest.raises(ValueError, match="video classifiers"):
        video_classification.get_config("model=bert_base_uncased")
