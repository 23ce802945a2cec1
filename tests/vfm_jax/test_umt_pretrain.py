"""UMT stage 1: student + CLIP teacher converters vs the official code's golden outputs, and CLIP vs transformers."""
import json
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, run_module
from vfm_jax.converters import clip, umt
from vfm_jax.layers.transformer import last_layers
from vfm_jax.models import build_model
from vfm_jax.tasks.umt import alignment_loss, teacher_targets
from vfm_jax.tools.check_fixture import check

FIXTURE = pathlib.Path(ROOT) / "tests" / "fixtures" / "umt_pretrain"
OUTPUTS = {
    "student_clip_features", "student_encoder_clip_vis", "teacher_norm_clip", "teacher_targets_clip",
    "teacher_attn", "loss_clip", "loss", "student_pos_embed",
}


def _config():
    return json.loads((FIXTURE / "config.json").read_text())


def _weights(who):
    return dict(np.load(FIXTURE / f"{who}_state_dict.npz"))


def _inputs():
    inputs = dict(np.load(FIXTURE / "inputs.npz"))
    to_channels_last = lambda v: np.transpose(v, (0, 2, 3, 4, 1))  # noqa: E731
    return to_channels_last(inputs["videos"]), to_channels_last(inputs["clip_videos"]), inputs["bool_masked_pos"]


def test_fixture_parity_in_process():
    errors = check(FIXTURE)
    assert set(errors) == OUTPUTS
    assert max(errors.values()) <= 1e-4, errors


def test_check_fixture_cli_passes_and_fails(tmp_path):
    proc = run_module("vfm_jax.tools.check_fixture", str(FIXTURE))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert {line.split(":")[0] for line in lines[:-1]} == OUTPUTS
    assert lines[-1].startswith("max abs error ") and float(lines[-1].split()[-1]) <= 1e-4

    broken = tmp_path / "umt_pretrain"
    shutil.copytree(FIXTURE, broken)
    teacher = _weights("teacher")
    width = teacher["ln_pre.weight"].shape[0]
    # The q part: a k bias adds the same q.b_k to every logit of a query, which the softmax cancels.
    teacher["transformer.resblocks.3.attn.in_proj_bias"][:width] += 0.05
    np.savez(broken / "teacher_state_dict.npz", **teacher)
    proc = run_module("vfm_jax.tools.check_fixture", str(broken))
    assert proc.returncode != 0
    assert float(proc.stdout.strip().splitlines()[-1].split()[-1]) > 1e-4


def test_perturbed_student_head_fails(tmp_path):
    broken = tmp_path / "umt_pretrain"
    shutil.copytree(FIXTURE, broken)
    student = _weights("student")
    student["clip_decoder.1.norm.bias"] += 0.01
    np.savez(broken / "student_state_dict.npz", **student)
    errors = check(broken)
    assert errors["student_clip_features"] > 1e-4 and errors["student_encoder_clip_vis"] <= 1e-4


def test_unexpected_and_missing_keys_fail():
    student, teacher = _weights("student"), _weights("teacher")
    with pytest.raises(ValueError, match="not mapped.*encoder.pos_embed"):
        umt.convert_pretrain({**student, "encoder.pos_embed": np.zeros((1, 64, 48))}, num_heads=4)
    with pytest.raises(ValueError, match="not mapped.*logit_scale"):
        clip.convert_clip_visual({**teacher, "logit_scale": np.zeros(())}, num_heads=4)
    del student["clip_decoder.1.norm.bias"], teacher["ln_post.weight"]
    with pytest.raises(KeyError, match="clip_decoder.1.norm.bias"):
        umt.convert_pretrain(student, num_heads=4)
    with pytest.raises(KeyError, match="ln_post.weight"):
        clip.convert_clip_visual(teacher, num_heads=4)


def test_scanned_unrolled_and_jitted_agree():
    config = _config()
    video, clip_video, mask = _inputs()
    num_visible = int((~mask[0]).sum())
    students, teachers = [], []
    for scan in (True, False):
        spec, variables = umt.convert_pretrain(
            _weights("student"), num_heads=config["student"]["constructor_kwargs"]["encoder_num_heads"],
            scan_layers=scan,
        )
        model = build_model(spec)
        students.append(model.apply(variables, video, mask))
        if scan:  # a traced mask needs the static visible count
            jitted = jax.jit(lambda v, m: model.apply(variables, v, m, num_visible=num_visible))(video, mask)
            np.testing.assert_allclose(jitted["features"], students[0]["features"], atol=1e-6)
        spec, variables = clip.convert_clip_visual(
            _weights("teacher"), num_heads=config["teacher"]["constructor_kwargs"]["heads"], scan_layers=scan
        )
        model = build_model({**spec, "return_layers": last_layers(spec["depth"], 2), "return_attention": True})
        teachers.append(model.apply(variables, clip_video))
    for a, b in (students, teachers):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(a[key], b[key], atol=1e-5, err_msg=key)
    assert students[0]["features"].shape == (2, 2, 16, 24)
    assert teachers[0]["cls_attention"].shape == (2, 4, 16)


def test_clip_conv1_2d_and_3d_layouts_agree():
    teacher = _weights("teacher")
    _, clip_video, _ = _inputs()
    spec, v3 = clip.convert_clip_visual(teacher, num_heads=4)
    _, v2 = clip.convert_clip_visual({**teacher, "conv1.weight": teacher["conv1.weight"][:, :, 0]}, num_heads=4)
    np.testing.assert_array_equal(v2["params"]["conv1"]["kernel"], v3["params"]["conv1"]["kernel"])
    assert spec["image_size"] == 24 and spec["patch_size"] == 6 and spec["output_dim"] == 24
    with pytest.raises(ValueError, match="temporal kernel 2"):
        clip.convert_clip_visual({**teacher, "conv1.weight": np.repeat(teacher["conv1.weight"], 2, 2)}, num_heads=4)


def test_last_layers_match_the_official_return_index():
    config = _config()
    assert last_layers(3, 2, 1) == tuple(sorted(config["student"]["return_index"]))
    assert last_layers(24, 6, 2) == (13, 15, 17, 19, 21, 23)
    with pytest.raises(ValueError):
        last_layers(4, 3, 2)


def test_student_trains_in_bf16_with_droppath_and_remat():
    """One jitted gradient step of the alignment loss against the teacher; every param has logical axes."""
    video, _, mask = _inputs()
    num_visible = int((~mask[0]).sum())
    student = build_model(dict(
        arch="umt_student", width=32, depth=3, num_heads=4, patch_size=8, clip_output_dim=16,
        clip_return_layers=2, drop_path_rate=0.1, remat_policy="full", dtype="bfloat16",
    ))
    teacher = build_model(dict(
        arch="clip_vision", width=32, depth=2, num_heads=4, patch_size=8, image_size=32, output_dim=16,
        return_layers=(0, 1), return_attention=True, dtype="bfloat16",
    ))
    variables = {
        "student": jax.jit(lambda rng: student.init(rng, video, mask, num_visible=num_visible))(jax.random.PRNGKey(0)),
        "teacher": jax.jit(lambda rng: teacher.init(rng, video))(jax.random.PRNGKey(1)),
    }
    for name, boxed in variables.items():
        leaves = jax.tree.leaves(boxed["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
        assert all(isinstance(leaf, nn.Partitioned) for leaf in leaves), name
    variables = nn.unbox(variables)

    def loss_fn(params):
        out = teacher.apply(variables["teacher"], video)
        targets = teacher_targets(out["layer_features"], mask, num_visible)
        feats = student.apply(
            {"params": params}, video, mask, num_visible=num_visible, train=True,
            rngs={"droppath": jax.random.PRNGKey(1)},
        )["features"]
        return alignment_loss(feats, targets)

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables["student"]["params"])
    assert 0.0 < float(loss) < 4.0
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["encoder"]["blocks"]["attn"]["qkv_kernel"]).sum()) > 0


def _hf_to_openai(hf: dict, depth: int) -> dict:
    """transformers CLIPVisionModelWithProjection state dict -> OpenAI `visual` names."""
    v = "vision_model."
    state = {
        "conv1.weight": hf[v + "embeddings.patch_embedding.weight"],
        "class_embedding": hf[v + "embeddings.class_embedding"],
        "positional_embedding": hf[v + "embeddings.position_embedding.weight"],
        "proj": hf["visual_projection.weight"].T,
    }
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for p in ("weight", "bias"):
            state[f"{ours}.{p}"] = hf[f"{v}{theirs}.{p}"]
    for i in range(depth):
        h, o = f"{v}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            state[f"{o}attn.in_proj_{p}"] = np.concatenate(
                [hf[f"{h}self_attn.{n}_proj.{p}"] for n in ("q", "k", "v")]
            )
            for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                 ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                state[f"{o}{ours}.{p}"] = hf[f"{h}{theirs}.{p}"]
    assert len(state) == len(hf) - 4 * depth  # every HF weight used once (q/k/v packed: 6 -> 2)
    return state


@pytest.mark.parity
def test_clip_vision_matches_transformers():
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    depth = 3
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=128, num_hidden_layers=depth, num_attention_heads=4, image_size=24,
        patch_size=6, projection_dim=16, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    hf = CLIPVisionModelWithProjection(config).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():  # every weight random, LayerNorms included
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            param.copy_(base + 0.2 * torch.randn_like(param))
    images = torch.randn(3, 3, 24, 24)
    with torch.no_grad():
        want = hf(pixel_values=images, output_hidden_states=True, output_attentions=True)
    state = _hf_to_openai({k: v.numpy() for k, v in hf.state_dict().items() if "position_ids" not in k}, depth)
    spec, variables = clip.convert_clip_visual(state, num_heads=4)
    model = build_model({**spec, "return_layers": tuple(range(depth)), "return_attention": True})
    got = model.apply(variables, images.numpy().transpose(0, 2, 3, 1))

    hidden = np.stack([h.numpy() for h in want.hidden_states[1:]])
    errors = {
        "hidden_states": np.abs(got["hidden_states"] - hidden).max(),
        "tokens": np.abs(got["tokens"] - want.last_hidden_state.numpy()).max(),
        "embedding": np.abs(got["embedding"] - want.image_embeds.numpy()).max(),
        "cls_attention": np.abs(got["cls_attention"] - want.attentions[-1].mean(1)[:, 0, 1:].numpy()).max(),
    }
    pooled = hf.vision_model.post_layernorm(want.last_hidden_state[:, 0]).detach().numpy()
    errors["pooled"] = np.abs(got["pooled"] - pooled).max()
    assert max(errors.values()) <= 1e-4, errors
