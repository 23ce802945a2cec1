"""UMT fine-tuning config: the tiny variant trains from a converted stage-1 student, the model-zoo
variants carry the official scripts' hyperparameters, and the position table stretched along
time is the official `get_sinusoid_encoding_table`."""
import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from configs.umt.finetune import get_config
from vfm_jax import checkpointing
from vfm_jax.convert import convert
from vfm_jax.models.vit import VideoViT, position_table
from vfm_jax.train import train_and_evaluate

STUDENT = pathlib.Path(ROOT) / "tests" / "fixtures" / "umt_pretrain" / "student_state_dict.npz"


def test_tiny_finetunes_a_converted_stage1_student(tmp_path):
    convert("umt_pretrain", str(STUDENT), str(tmp_path / "student"), num_heads=4)
    config = get_config("model=tiny")
    config.init_from.checkpoint = str(tmp_path / "student")
    results = train_and_evaluate(config, tmp_path / "run")
    assert math.isfinite(results["train_loss"]) and results["train_loss"] > 0
    assert 0.0 <= results["val_top1"] <= 1.0
    params = checkpointing.load_variables(tmp_path / "run")["params"]
    assert params["head"]["kernel"].shape == (48, 4)


def test_model_zoo_variants_carry_the_scripts_values(tmp_path):
    train_list = tmp_path / "train.csv"
    train_list.write_text("".join(f"v{i}.mp4,{i % 400}\n" for i in range(1024)))

    # k710/b16_ptk710_ftk710_f8_res224.sh: 16 GPUs x 16 x num_sample 2, lr 2e-4 -> 4e-4, 35 epochs, 2 warm-up.
    c = get_config(f"model=B16,dataset=k710,train_list={train_list}")
    assert c.batch_size == 512 and c.optim.lr == pytest.approx(4e-4) and c.optim.min_lr == pytest.approx(2e-6)
    assert c.total_steps == 35 * 4 and c.optim.warmup_steps == 2 * 4  # 1024 videos x 2 samples / 512
    assert (c.optim.layer_decay, c.model.drop_path_rate, c.model.num_classes) == (0.75, 0.1, 710)
    assert (c.data.test_clips, c.data.test_crops, c.data.sampler, c.data.flip) == (4, 3, "tsn", True)
    assert (c.task.mixup, c.task.cutmix, c.task.label_smoothing) == (0.8, 1.0, 0.1)
    assert tuple(c.init_from.subtrees) == ("patch_embed", "encoder")

    # k400/l16_ptk710_ftk710_ftk400_f8_res224.sh: lr 1e-5 -> 2e-5, from the K710 classifier, head included.
    c = get_config("model=L16,dataset=k400")
    assert c.optim.lr == pytest.approx(2e-5) and c.model.width == 1024 and c.model.depth == 24
    assert (c.optim.layer_decay, c.model.drop_path_rate, c.model.num_classes) == (0.85, 0.2, 400)
    assert "head" in c.init_from.subtrees and c.init_from.class_rows == "first:400"

    # k400/l16_ptk710_ftk710_ftk400_f16_res224.sh: 16 frames, batch 8 per GPU, 4 clips x 1 crop.
    c = get_config("model=L16,dataset=k400,frames=16")
    assert c.data.frames == 16 and c.batch_size == 256 and c.optim.lr == pytest.approx(1e-5)
    assert (c.data.test_clips, c.data.test_crops, c.model.pos_table_frames) == (4, 1, 8)

    # ssv2/b16_ptk710_ftssv2_f8_res224.sh and ssv2/l16_...: 174 classes, no flip, 2 clips x 3 crops.
    c = get_config("model=B16,dataset=ssv2")
    assert (c.data.sampler, c.task.random_erasing) == ("segment", 0.25)
    assert c.optim.lr == pytest.approx(4e-4) and c.total_steps == 30 and c.model.num_classes == 174
    assert (c.data.flip, c.data.test_clips, c.data.test_crops) == (False, 2, 3)
    c = get_config("model=L16,dataset=ssv2")
    assert c.optim.lr == pytest.approx(8e-4) and (c.optim.layer_decay, c.model.drop_path_rate) == (0.85, 0.2)

    with pytest.raises(ValueError, match="no official recipe"):
        get_config("model=B16,dataset=k400,frames=16")


def _official_table(frames, grid_side, dim, table_frames=8):
    """unmasked_teacher `modeling_finetune.get_sinusoid_encoding_table` (its temporal branch), in torch."""
    import torch

    positions = table_frames * grid_side * grid_side
    angles = np.array([[p / np.power(10000, 2 * (j // 2) / dim) for j in range(dim)] for p in range(positions)])
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    table = torch.tensor(angles, dtype=torch.float).unsqueeze(0)
    if frames != table_frames:
        c, p = dim, grid_side
        table = table.reshape(-1, table_frames, p, p, c).permute(0, 2, 3, 4, 1).reshape(-1, c, table_frames)
        table = torch.nn.functional.interpolate(table, size=frames, mode="linear")
        table = table.reshape(1, p, p, c, frames).permute(0, 4, 1, 2, 3).flatten(1, 3)
    return table[0].numpy()


@pytest.mark.parametrize("frames", [4, 8, 12, 16])
def test_position_table_is_the_official_interpolated_sinusoid(frames):
    np.testing.assert_allclose(position_table(frames, 9, 16, table_frames=8), _official_table(frames, 3, 16),
                               atol=1e-6)


@pytest.mark.parametrize("pos_embedding", ["sinusoid", "learned"])
def test_vit_adds_the_stretched_table(pos_embedding):
    """16 frames on an 8-frame table: the blocks' input is patch embedding + the official table."""
    model = VideoViT(num_classes=3, width=16, depth=1, num_heads=2, patch_size=8, pos_embedding=pos_embedding,
                     pos_table_frames=8)
    video = jnp.zeros((1, 16, 16, 16, 3))  # zero pixels: each token is the conv bias plus its position
    variables = nn.unbox(model.init(jax.random.PRNGKey(0), video))
    _, state = model.apply(variables, video, mutable=["intermediates"])
    tokens = state["intermediates"]["embed_tokens"][0][0]
    bias = variables["params"]["patch_embed"]["proj"]["bias"]
    np.testing.assert_allclose(tokens - bias, _official_table(16, 2, 16), atol=1e-6)
