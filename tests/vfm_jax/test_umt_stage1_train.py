"""UMT stage 1 through the one train loop: tiny variant on synthetic clips with a converted teacher."""
import math
import pathlib

import jax
import numpy as np

from conftest import ROOT
from configs.umt.stage1 import get_config
from vfm_jax import checkpointing
from vfm_jax.convert import convert
from vfm_jax.train import train_and_evaluate

TEACHER = pathlib.Path(ROOT) / "tests" / "fixtures" / "umt_pretrain" / "teacher_state_dict.npz"


def test_tiny_stage1_trains_with_a_frozen_converted_teacher(tmp_path):
    convert("clip_visual", str(TEACHER), str(tmp_path / "teacher"), num_heads=4)
    config = get_config("model=tiny")
    config.task.teacher_checkpoint = str(tmp_path / "teacher")
    config.mesh.data = 2
    results = train_and_evaluate(config, tmp_path / "run", devices=jax.devices()[:2])
    assert math.isfinite(results["train_loss"]) and 0.0 <= results["train_loss"] <= 4.0

    saved = checkpointing.load_variables(tmp_path / "run")
    teacher = checkpointing.load_variables(tmp_path / "teacher")["params"]
    for a, b in zip(jax.tree.leaves(saved["teacher"]), jax.tree.leaves(teacher)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # loaded, then never updated
    assert "clip_decoder_1" in saved["params"]


def test_masking_shortens_the_student_sequence():
    """80% masking feeds the student 16 - int(0.8 * 16) = 4 tokens per frame; 0% feeds all 16."""
    import flax.linen as nn

    from vfm_jax.tasks import build_task

    video = np.random.default_rng(0).integers(0, 255, (2, 4, 32, 32, 3), dtype=np.uint8)
    for ratio, per_frame in ((0.8, 4), (0.0, 16)):
        config = get_config("model=tiny")
        config.task.mask_ratio = ratio
        task = build_task(config)
        variables = nn.unbox(task.init(jax.random.PRNGKey(0), {"video": video}))
        out = task.outputs(variables["params"], {"teacher": variables["teacher"]}, {"video": video},
                           jax.random.PRNGKey(1), train=False)
        assert out["student"].shape == out["targets"].shape == (2, 2, 4 * per_frame, 24)
        assert int((~out["mask"]).sum()) == 2 * 4 * per_frame
