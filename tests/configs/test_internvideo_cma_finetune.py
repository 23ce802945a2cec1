"""InternVideo CMA config: the tiny variant learns through `python -m vfm_jax.train`, starts from converted encoders
through `task.pretrained` (frozen: only the new parts, the heads and the multimodal query move), and the K400
variant keeps weight decay off the frozen encoders."""
import math
import pathlib
import re

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs.internvideo.cma_finetune import get_config
from conftest import ROOT, run_module
from data.synthetic import num_classes
from vfm_jax import checkpointing
from vfm_jax.converters import internvideo_mm
from vfm_jax.models import build_model
from vfm_jax.models.vit import VideoViT
from vfm_jax.optim import decay_mask
from vfm_jax.tasks import build_task
from vfm_jax.train import train_and_evaluate

FIXTURE = pathlib.Path(ROOT) / "tests" / "fixtures" / "internvideo_mm"


@pytest.mark.slow
def test_tiny_learns_the_motion_direction(tmp_path):
    proc = run_module("vfm_jax.train", "--config=configs/internvideo/cma_finetune.py:exp=tiny", f"--workdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"internvideo_cma_finetune: val_top1=([0-9.]+)", last)
    assert match, last
    # Well above chance: 4 binomial standard deviations over the val set.
    config = get_config("exp=tiny")
    chance, n = 1 / num_classes(config.task.label), config.data.val_examples
    assert float(match.group(1)) > chance + 4 * math.sqrt(chance * (1 - chance) / n)


def _converted_encoders(tmp_path) -> tuple[dict, dict]:
    """A tiny VideoMAE classifier as `convert --model umt_classifier --scan_layers=false` writes it, and the
    official InternVideo-MM fixture converted with `--scan_layers=false`."""
    videomae = VideoViT(num_classes=4, width=32, depth=4, num_heads=4, patch_size=8, tubelet_size=2, scan_layers=False)
    variables = nn.unbox(videomae.init(jax.random.PRNGKey(7), np.zeros((1, 8, 32, 32, 3), np.float32)))
    variables = jax.tree.map(lambda x: np.asarray(x) + 0.1, variables)  # no param left at a constant init
    checkpointing.save_variables(tmp_path / "videomae", variables, {"model": {"arch": "video_vit"}})
    weights = dict(np.load(FIXTURE / "state_dict.npz"))
    spec, mm = internvideo_mm.convert_internvideo_mm(weights, num_heads=4, text_num_heads=4, scan_layers=False)
    checkpointing.save_variables(tmp_path / "mm", mm, {"model": spec})
    return variables["params"], mm["params"]["vision_encoder"]


def _equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
def test_tiny_starts_frozen_from_converted_encoders(tmp_path):
    """Two steps: the encoders arrive from their folders and stay put but for the VideoMAE head and the multimodal
    query; the CMAs leave zero, the multimodal head moves."""
    videomae, mm = _converted_encoders(tmp_path)
    config = get_config(f"exp=tiny,videomae={tmp_path / 'videomae'},mm={tmp_path / 'mm'}:vision_encoder")
    assert config.model.frozen
    config.total_steps = config.eval_every = config.checkpoint_every = 2
    config.optim.warmup_steps = 0
    config.data.val_examples = 32
    train_and_evaluate(config, tmp_path / "run")
    params = checkpointing.load_variables(tmp_path / "run")["params"]

    assert _equal({k: v for k, v in params["videomae"].items() if k != "head"},
                  {k: v for k, v in videomae.items() if k != "head"})
    assert not _equal(params["videomae"]["head"], videomae["head"])
    query = "temporal_cls_token"
    assert _equal({k: v for k, v in params["mm"].items() if k != "global_blocks"},
                  {k: v for k, v in mm.items() if k != "global_blocks"})
    assert _equal({k: v for k, v in params["mm"]["global_blocks"].items() if k != query},
                  {k: v for k, v in mm["global_blocks"].items() if k != query})
    assert not np.array_equal(params["mm"]["global_blocks"][query], mm["global_blocks"][query])
    assert np.any(params["cma_0"]["attn"]["out_kernel"]) and np.any(params["cma_mm"]["mlp"]["fc2"]["kernel"])


def test_task_checks_the_encoder_folders_and_the_normalisation(tmp_path):
    config = get_config(f"exp=tiny,mm={tmp_path / 'missing'}:vision_encoder")
    with pytest.raises(FileNotFoundError, match="missing"):
        build_task(config)
    config = get_config("exp=tiny")
    config.task.normalization = "clip"
    with pytest.raises(ValueError, match="input_normalization='imagenet'"):
        build_task(config)


def test_k400_variant_keeps_weight_decay_off_the_frozen_encoders():
    c = get_config("exp=k400")
    assert c.model.frozen and c.model.cma and (c.model.num_stages, c.model.mm_frame_stride) == (4, 2)
    assert (c.model.videomae.depth, c.model.videomae.width, c.model.mm.depth, c.model.mm.width) == (32, 1280, 24, 1024)
    assert (c.data.frames, c.model.num_classes, c.task.normalization) == (16, 400, "imagenet")
    model = build_model(c.model)
    video = jax.ShapeDtypeStruct((1, 16, 224, 224, 3), np.float32)
    params = nn.unbox(jax.eval_shape(lambda v: model.init(jax.random.PRNGKey(0), v), video))["params"]
    mask = decay_mask(params, c.optim.no_decay)
    for frozen in (mask["videomae"]["patch_embed"], mask["videomae"]["encoder"], mask["mm"]["conv1"],
                   mask["mm"]["encoder"], mask["mm"]["global_blocks"]):
        assert not any(jax.tree.leaves(frozen))
    assert mask["videomae"]["head"]["kernel"] and mask["mm_head"]["kernel"]
    assert mask["cma_0"]["attn"]["q_kernel"] and mask["cma_mm"]["mlp"]["fc1"]["kernel"]

    c = get_config("exp=k400,cma=false,frozen=false")
    assert not c.model.cma and not c.model.frozen and c.optim.no_decay == ""
