"""One training step, many meshes: 1 device, DP, FSDP and FSDP+TP agree; checkpoints move across meshes."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vfm_jax import checkpointing, sharding
from vfm_jax.evaluate import evaluate, restore_variables
from vfm_jax.train import train_and_evaluate

MESHES = {
    "dp": dict(data=8, fsdp=1, tensor=1),
    "fsdp": dict(data=1, fsdp=8, tensor=1),
    "fsdp_tp": dict(data=2, fsdp=2, tensor=2),
}


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
    from conftest import _tiny_config

    config = _tiny_config(total_steps=3, **{"mesh.data": 1})
    workdir = tmp_path_factory.mktemp("single")
    return train_and_evaluate(config, workdir, devices=jax.devices()[:1]), workdir


@pytest.mark.parametrize("name", sorted(MESHES))
def test_losses_match_single_device(tiny_config, tmp_path, single_device_run, name):
    reference, ref_dir = single_device_run
    config = tiny_config(total_steps=3, **{f"mesh.{k}": v for k, v in MESHES[name].items()})
    results = train_and_evaluate(config, tmp_path)
    for key in ("train_loss", "val_loss", "val_top1"):
        assert abs(results[key] - reference[key]) <= 1e-5, (key, results[key], reference[key])
    params = checkpointing.load_variables(tmp_path)["params"]
    ref_params = checkpointing.load_variables(ref_dir)["params"]
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params, ref_params)
    assert max(jax.tree.leaves(diffs)) <= 1e-5


def test_logical_rules_shard_params_and_batch(tiny_config):
    """FSDP splits `embed` over fsdp, TP splits heads/mlp over tensor; batch goes over data and fsdp."""
    from vfm_jax.input import make_source
    from vfm_jax.tasks import build_task

    config = tiny_config(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
    task = build_task(config)
    mesh = sharding.make_mesh(config.mesh)
    example = sharding.zeros_like_batch(
        sharding.example_batch(make_source(config.data, "train"), task.input_keys)
    )
    _, shardings = sharding.variables_layout(task, example, mesh)
    blocks = shardings["params"]["encoder"]["blocks"]
    assert blocks["attn"]["qkv_kernel"].spec == P(None, "fsdp", None, "tensor", None)
    assert blocks["mlp"]["fc1"]["kernel"].spec == P(None, "fsdp", "tensor")
    assert blocks["mlp"]["fc2"]["kernel"].spec == P(None, "tensor", "fsdp")
    assert shardings["params"]["head"]["kernel"].spec == P("fsdp", "tensor")
    assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"))


def test_dimensions_a_mesh_axis_does_not_divide_are_replicated_along_it(tiny_config):
    """A head of 6 classes over tensor=4 (as K710's 710 classes over 4) keeps what fits and
    replicates the rest, instead of failing to place the state."""
    from vfm_jax.input import make_source
    from vfm_jax.tasks import build_task

    config = tiny_config(**{"mesh.data": 1, "mesh.fsdp": 2, "mesh.tensor": 4, "model.num_classes": 6})
    task = build_task(config)
    mesh = sharding.make_mesh(config.mesh)
    example = sharding.zeros_like_batch(sharding.example_batch(make_source(config.data, "train"), task.input_keys))
    abstract, shardings = sharding.variables_layout(task, example, mesh)
    assert shardings["params"]["head"]["kernel"].spec == P("fsdp", None)
    assert shardings["params"]["head"]["bias"].spec == P(None)
    assert shardings["params"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"].spec == P(None, "fsdp", "tensor")
    placed = jax.tree.map(lambda x, s: jax.device_put(np.zeros(x.shape, x.dtype), s), abstract, shardings)
    assert placed["params"]["head"]["kernel"].sharding.shard_shape(placed["params"]["head"]["kernel"].shape)[1] == 6
    mesh_ = {"data": 1, "fsdp": 4, "tensor": 2}
    assert sharding.fitted_spec(P(("data", "fsdp"), "tensor"), (8, 3), sharding.make_mesh(mesh_)) == P(("data", "fsdp"), None)
    assert sharding.fitted_spec(P(("fsdp", "tensor")), (12,), sharding.make_mesh(mesh_)) == P("fsdp")


def test_checkpoint_restores_on_a_smaller_mesh(tiny_config, tmp_path):
    """Written on 8 devices (FSDP), restored on 8 and on 2 devices (DP): same params bit for bit,
    and identical eval outputs (DP computes each example the same way whatever the device count)."""
    from data.pipeline import eval_batches
    from vfm_jax.input import make_source

    train_and_evaluate(tiny_config(total_steps=2, **{"mesh.data": 1, "mesh.fsdp": 8}), tmp_path)
    config8 = tiny_config(**{"mesh.data": 8})
    config2 = tiny_config(**{"mesh.data": 2})
    devices2 = jax.devices()[:2]
    mesh8 = sharding.make_mesh(config8.mesh)
    mesh2 = sharding.make_mesh(config2.mesh, devices2)
    task, vars8 = restore_variables(config8, tmp_path, mesh8)
    _, vars2 = restore_variables(config2, tmp_path, mesh2)
    assert len(jax.tree.leaves(vars2)[0].sharding.device_set) == 2
    for a, b in zip(jax.tree.leaves(vars8), jax.tree.leaves(vars2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    batch = next(eval_batches(make_source(config8.data, "val"), global_batch_size=16, keys=task.input_keys))

    def logits(variables, mesh):
        placed = {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in batch.items()}
        return np.asarray(jax.jit(task.predict)(variables, placed))

    np.testing.assert_array_equal(logits(vars8, mesh8), logits(vars2, mesh2))
    # Per-example outputs are identical; only the order of the batch sum of losses differs.
    results8, results2 = evaluate(config8, tmp_path), evaluate(config2, tmp_path, devices=devices2)
    assert results8["val_top1"] == results2["val_top1"] and results8["val_top5"] == results2["val_top5"]
    assert results8["val_loss"] == pytest.approx(results2["val_loss"], rel=1e-6)
