"""UniFormerV2 fine-tuning config: the tiny variant learns through `python -m vfm_jax.train`, starts from a
converted CLIP through `init_from`, keeps BatchNorm statistics global under data parallelism, and the
model-zoo variants carry the official run.sh values."""
import re

import flax.linen as nn
import jax
import numpy as np
import pytest

from conftest import run_module
from configs.uniformerv2.finetune import BACKBONE, CLIP_SUBTREES, get_config
from vfm_jax import checkpointing
from vfm_jax.models import build_model
from vfm_jax.models.clip import CLIPVision
from vfm_jax.optim import decay_mask
from vfm_jax.train import train_and_evaluate


@pytest.mark.slow
def test_tiny_learns_the_motion_direction(tmp_path):
    """Direction needs time (local MHRA, DPE and the temporal conv): top-1 well above chance (0.25)."""
    proc = run_module("vfm_jax.train", "--config=configs/uniformerv2/finetune.py:exp=tiny", f"--workdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"uniformerv2_finetune: val_top1=([0-9.]+)", last)
    assert match, last
    assert float(match.group(1)) >= 0.6


def _clip_checkpoint(path):
    """A CLIP visual tower the size of the tiny model, saved as `convert --model clip_visual` writes it."""
    clip = CLIPVision(width=32, depth=3, num_heads=4, patch_size=8, image_size=32, output_dim=16)
    variables = nn.unbox(clip.init(jax.random.PRNGKey(7), np.zeros((1, 32, 32, 3), np.float32)))
    variables = jax.tree.map(lambda x: np.asarray(x) + 0.1, variables)  # no param left at a constant init
    checkpointing.save_variables(path, variables, {"model": {"arch": "clip_vision"}})
    return variables["params"]


@pytest.mark.slow
def test_tiny_starts_from_clip_and_keeps_batch_stats_global(tmp_path):
    """lr 0 for 2 steps: the CLIP subtrees arrive unchanged, the new parts at their (zero) init; BatchNorm
    statistics move in training, and 8 data-parallel devices end with the statistics of 1 device."""
    clip = _clip_checkpoint(tmp_path / "clip")

    def run(name, data, devices):
        config = get_config(f"exp=tiny,init={tmp_path / 'clip'}")
        config.total_steps = config.eval_every = config.checkpoint_every = 2
        config.optim.lr = config.optim.min_lr = 0.0
        config.data.val_examples = 32
        config.mesh.data = data
        results = train_and_evaluate(config, tmp_path / name, devices=devices)
        return results, checkpointing.load_variables(tmp_path / name)

    results1, run1 = run("one", 1, jax.devices()[:1])
    params = run1["params"]
    for a, b in zip(jax.tree.leaves([params["conv1"], params["encoder"]["blocks"]["attn"], params["ln_pre"]]),
                    jax.tree.leaves([clip["conv1"], clip["encoder"]["blocks"]["attn"], clip["ln_pre"]])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(params["positional_embedding"], clip["positional_embedding"])
    assert not np.any(params["conv1_temporal"]["kernel"])  # centre inflation
    assert not np.any(params["encoder"]["blocks"]["lmhra1"]["up"]["kernel"])  # zero-initialised local MHRA
    stats = run1["batch_stats"]["encoder"]["blocks"]["lmhra1"]["norm"]
    assert np.abs(stats["mean"]).max() > 1e-3 and np.abs(stats["var"] - 1).max() > 1e-3

    results8, run8 = run("eight", 8, None)
    for a, b in zip(jax.tree.leaves(run1["batch_stats"]), jax.tree.leaves(run8["batch_stats"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    assert results1["val_top1"] == results8["val_top1"]
    assert results1["val_loss"] == pytest.approx(results8["val_loss"], rel=1e-5)


def test_model_zoo_variants_carry_the_run_sh_values(tmp_path):
    train_list = tmp_path / "train.csv"
    train_list.write_text("".join(f"v{i}.mp4,{i % 174}\n" for i in range(1024)))

    # exp/k400/k400_b16_f8x224/run.sh: batch 256 on 1 shard, lr 1e-5 unscaled, 55 epochs (5 warm-up), 4 clips x 3 crops.
    c = get_config(f"exp=k400_b16_f8x224,train_list={train_list}")
    assert (c.batch_size, c.optim.lr, c.total_steps, c.optim.warmup_steps) == (256, 1e-5, 55 * 4, 5 * 4)
    assert (c.data.test_clips, c.data.test_crops, c.data.flip, c.task.normalization) == (4, 3, True, "slowfast")
    assert (c.model.lmhra, c.model.temporal_downsample, tuple(c.model.global_layers)) == (False, False, (8, 9, 10, 11))
    assert tuple(c.init_from.subtrees) == CLIP_SUBTREES and c.init_from.class_rows == ""
    assert (c.optim.grad_clip, c.task.label_smoothing, c.model.head_dropout) == (20.0, 0.0, 0.5)

    # exp/k400/k400+k710_l14_f16x224/run.sh: 64 x 4 shards, lr 1.5e-6, 5 epochs; the K710 head mapped to K400.
    c = get_config("exp=k400+k710_l14_f16x224")
    assert (c.batch_size, c.optim.lr, c.data.frames, c.model.width, c.model.num_classes) == (256, 1.5e-6, 16, 1024, 400)
    assert "head" in c.init_from.subtrees and c.init_from.class_rows == "first:400"
    c = get_config("exp=k400+k710_l14_f64x336,class_rows=/data/label_mixto400.json")
    assert (c.data.size, c.batch_size, c.model.remat_policy) == (336, 128, "full")
    assert c.init_from.class_rows == "/data/label_mixto400.json"
    with pytest.raises(ValueError, match="K710 head"):
        get_config("exp=k400_b16_f8x224,class_rows=first:400")

    # exp/sthv2/ssv2_l14_f32x224/run.sh: 32 x 4 shards, lr 2e-5, NUM_SAMPLE 2, 1 clip x 3 crops, no flip.
    c = get_config(f"exp=ssv2_l14_f32x224,train_list={train_list}")
    assert (c.batch_size, c.total_steps, c.data.flip) == (128, 22 * 16, False)  # 1024 lines x 2 / 128 per epoch
    assert (c.data.test_clips, c.data.test_crops) == (1, 3)
    assert (c.model.lmhra, c.model.double_lmhra, c.model.temporal_downsample) == (True, True, True)
    assert tuple(c.model.global_layers) == tuple(range(8, 24)) and c.model.num_classes == 174
    assert (c.model.drop_path_rate, c.model.global_drop_path_rate) == (0.2, 0.4)

    with pytest.raises(ValueError, match="no official run"):
        get_config("exp=ssv2_b16_f8x224")


def test_frozen_runs_leave_the_backbone_out_of_weight_decay():
    """FROZEN: the backbone gets no gradient (the model) and no decay (optim.no_decay), so AdamW leaves it."""
    c = get_config("exp=frozen_k400_l14_f8x336")
    assert c.model.frozen and c.optim.no_decay == BACKBONE and (c.data.test_clips, c.data.test_crops) == (3, 1)
    model = build_model(c.model)
    video = jax.ShapeDtypeStruct((1, 8, 336, 336, 3), np.float32)
    params = nn.unbox(jax.eval_shape(lambda v: model.init(jax.random.PRNGKey(0), v), video))["params"]
    mask = decay_mask(params, c.optim.no_decay)
    for key in ("conv1", "encoder"):
        assert not any(jax.tree.leaves(mask[key])), key
    assert mask["global"]["block_0"]["attn"]["q_kernel"] and mask["head"]["kernel"]
    assert "balance" not in params["global"]
