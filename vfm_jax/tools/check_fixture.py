"""Check our port against a golden fixture of the official PyTorch code.

    python -m vfm_jax.tools.check_fixture <fixture dir> [--tolerance=1e-4]

Reads the fixture's `config.json` (its `fixture` field names the kind and its
constructor arguments give the sizes), converts `state_dict.npz` with the
public converter, runs our model on `inputs.npz`, and compares with
`outputs.npz`. Prints the max abs error per output, then the overall max abs
error as the last line; exits non-zero above the tolerance.
"""
from __future__ import annotations

import json
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from etils import epath

from data.masking import num_visible
from vfm_jax.converters import clip, internvideo_mm, umt, uniformerv2, viclip
from vfm_jax.converters.torch_io import load_weights
from vfm_jax.layers.transformer import last_layers
from vfm_jax.models import build_model
from vfm_jax.tasks import umt as umt_task


def _umt_finetune(fixture: epath.Path, config: dict, inputs: dict) -> dict[str, np.ndarray]:
    spec, variables = umt.convert_classifier(
        load_weights(fixture / "state_dict.npz"), num_heads=config["constructor_kwargs"]["num_heads"]
    )
    model = build_model(spec)
    video = np.transpose(inputs["video"], (0, 2, 3, 4, 1))  # (N, C, T, H, W) -> (N, T, H, W, C)
    logits, state = model.apply(variables, video, mutable=["intermediates"])
    ours = {k: v[0] for k, v in state["intermediates"].items()}
    return {"logits": logits, **ours}


def _umt_pretrain(fixture: epath.Path, config: dict, inputs: dict) -> dict[str, np.ndarray]:
    """Teacher on the fixture's resized `clip_videos`, student on `videos` with its mask, then the loss."""
    student_kw, teacher_kw = config["student"]["constructor_kwargs"], config["teacher"]["constructor_kwargs"]
    spec, teacher_vars = clip.convert_clip_visual(
        load_weights(fixture / "teacher_state_dict.npz"), num_heads=teacher_kw["heads"]
    )
    spec["return_layers"] = last_layers(
        spec["depth"], teacher_kw["clip_return_layer"], teacher_kw["clip_return_interval"]
    )
    if list(spec["return_layers"]) != sorted(config["teacher"]["return_index"]):
        raise ValueError(f"teacher layers {spec['return_layers']} != official {config['teacher']['return_index']}")
    teacher = build_model({**spec, "return_attention": True})
    clip_video = np.transpose(inputs["clip_videos"], (0, 2, 3, 4, 1))  # (B, C, T, H, W) -> (B, T, H, W, C)
    t_out = teacher.apply(teacher_vars, clip_video)

    spec, student_vars = umt.convert_pretrain(
        load_weights(fixture / "student_state_dict.npz"), num_heads=student_kw["encoder_num_heads"],
        clip_return_interval=student_kw["clip_student_return_interval"],
    )
    student = build_model(spec)
    video = np.transpose(inputs["videos"], (0, 2, 3, 4, 1))
    mask = inputs["bool_masked_pos"]
    frames = video.shape[1] // spec["tubelet_size"]
    per_frame = num_visible((student_kw["img_size"] // spec["patch_size"]) ** 2, config["engine"]["mask_ratio"])
    s_out, state = student.apply(
        student_vars, video, mask, num_visible=frames * per_frame, mutable=["intermediates"]
    )
    targets = umt_task.teacher_targets(t_out["layer_features"], mask, frames * per_frame)
    loss_clip = umt_task.alignment_loss(s_out["features"], targets)
    return {
        "student_clip_features": s_out["features"],
        "student_encoder_clip_vis": s_out["encoder_features"],
        "teacher_norm_clip": t_out["layer_features"],
        "teacher_targets_clip": targets,
        "teacher_attn": t_out["cls_attention"].reshape(-1, t_out["cls_attention"].shape[-1]),
        "loss_clip": loss_clip,
        # The engine's `loss_pixel` is torch.zeros(1), hence the (1,) shape.
        "loss": (config["engine"]["clip_loss_ratio"] * loss_clip).reshape(1),
        "student_pos_embed": state["intermediates"]["pos_embed"][0],
    }


def _viclip(fixture: epath.Path, config: dict, inputs: dict) -> dict[str, np.ndarray]:
    """Both towers in evaluation mode (no token drop), their raw and normalised embeddings, similarities."""
    spec, variables = viclip.convert_viclip(
        load_weights(fixture / "state_dict.npz"), num_heads=config["vision_encoder_ctor"]["heads"],
        text_num_heads=config["text_encoder_ctor"]["transformer_heads"],
    )
    model = build_model(spec)

    def run(m, video, ids):
        return m.vision_encoder(video), m.text_encoder(ids), m.encode_video(video), m.encode_text(ids)

    video = np.transpose(inputs["video"], (0, 1, 3, 4, 2))  # (B, T, C, H, W) -> (B, T, H, W, C)
    apply = jax.jit(lambda v, x, t: model.apply(v, x, t, method=run, mutable=["intermediates"]))
    (vision, text, video_norm, text_norm), state = apply(variables, video, inputs["text_ids"])
    sims = video_norm @ text_norm.T
    return {
        "video_embeds": vision["embedding"],
        "video_embeds_norm": video_norm,
        "text_embeds": text["embedding"],
        "text_embeds_norm": text_norm,
        "sims": sims,
        # `ViCLIP.get_predict_label` scales by a fixed 100, not by the learned `temp`.
        "label_probs": jax.nn.softmax(100.0 * sims, axis=-1),
        "vision_ln_pre_out": state["intermediates"]["vision_encoder"]["ln_pre_out"][0],
        "vision_ln_post_out": vision["tokens"].transpose(1, 0, 2),  # the official output is sequence-first
        "text_ln_final_out": text["tokens"],
    }


def _internvideo_mm(fixture: epath.Path, config: dict, inputs: dict) -> dict[str, np.ndarray]:
    """Both towers in evaluation mode (no patch drop), embeddings, CLIP logits and the named intermediates."""
    ctor = config["videointern_ctor"]
    spec, variables = internvideo_mm.convert_internvideo_mm(
        load_weights(fixture / "state_dict.npz"), num_heads=config["visual_backbone_ctor"]["heads"],
        text_num_heads=ctor["transformer_heads"],
    )
    if spec["vision"]["global_layers"] != list(config["visual_backbone_ctor"]["return_list"]):
        raise ValueError(f"fixture return_list {config['visual_backbone_ctor']['return_list']} is not the last layers")
    model = build_model(spec)

    def run(m, video, ids):
        return m.vision_encoder(video), m.text_encoder(ids), m.encode_video(video), m.encode_text(ids)

    video = np.transpose(inputs["video"], (0, 2, 3, 4, 1))  # (B, C, T, H, W) -> (B, T, H, W, C)
    apply = jax.jit(lambda v, x, t: model.apply(v, x, t, method=run, mutable=["intermediates"]))
    (vision, text, video_norm, text_norm), state = apply(variables, video, inputs["text_ids"])
    logits = jnp.exp(variables["params"]["logit_scale"]) * video_norm @ text_norm.T
    inter = state["intermediates"]["vision_encoder"]
    tokens = vision["tokens"]  # (B, T, 1+P, D)
    return {
        "video_embeds": vision["embedding"],
        "text_embeds": text["embedding"],
        "video_embeds_norm": video_norm,
        "text_embeds_norm": text_norm,
        "logits_per_video": logits,
        "probs": jax.nn.softmax(logits, axis=-1),
        "video_feats_pre_ln_post": vision["features"],
        "global_cls_token_out": inter["global_blocks"]["query"][0].transpose(1, 0, 2),  # (1, B, D) sequence-first
        "vision_ln_pre_out": inter["ln_pre_out"][0],  # (B*T, 1+P, D), batch ordered (b t)
        "video_backbone_tokens": tokens.transpose(2, 0, 1, 3),  # official (1+P, B, T, D)
        "text_tokens_ln_final": text["tokens"],
    }


def _uniformerv2(fixture: epath.Path, config: dict, inputs: dict) -> dict[str, np.ndarray]:
    """The classifier in evaluation mode (BatchNorm on its running statistics), logits and the hooked features."""
    ctor = config["backbone_ctor"]
    spec, variables = uniformerv2.convert_uniformerv2(
        load_weights(fixture / "state_dict.npz"), num_heads=ctor["heads"], global_heads=ctor["n_head"],
        global_layers=ctor["return_list"],
    )
    model = build_model(spec)
    video = np.transpose(inputs["video"], (0, 2, 3, 4, 1))  # (B, C, T, H, W) -> (B, T, H, W, C)
    logits, state = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(variables, video)
    inter = {k: v[0] for k, v in state["intermediates"].items() if k != "global"}
    return {
        "logits": logits,
        "feature_pre_head": inter["fused"],
        "feature_head_ln_out": inter["head_norm_out"],
        "global_cls_token_out": state["intermediates"]["global"]["query"][0].transpose(1, 0, 2),  # (1, B, D)
        "ln_pre_out": inter["ln_pre_out"],  # (B*T, 1+P, D), batch ordered (b t)
        "backbone_last_block_out": inter["hidden_states"][-1].transpose(1, 0, 2),  # official (1+P, B*T, D)
    }


# fixture kind -> fn(fixture dir, config, inputs) -> {output name: our array}
CHECKS: dict[str, Callable] = {
    "umt_finetune": _umt_finetune,
    "umt_pretrain": _umt_pretrain,
    "viclip": _viclip,
    "internvideo_mm": _internvideo_mm,
    "uniformerv2": _uniformerv2,
}


def check(fixture_dir) -> dict[str, float]:
    """Max abs error per output of the fixture (every output must be produced)."""
    fixture = epath.Path(fixture_dir)
    config = json.loads((fixture / "config.json").read_text())
    kind = config.get("fixture")
    if kind not in CHECKS:
        raise ValueError(f"fixture kind {kind!r} has no check yet; available: {sorted(CHECKS)}")
    inputs = dict(np.load(fixture / "inputs.npz"))
    expected = dict(np.load(fixture / "outputs.npz"))
    ours = jax.device_get(CHECKS[kind](fixture, config, inputs))
    missing = sorted(set(expected) - set(ours))
    if missing:
        raise ValueError(f"our model produced no {missing} for fixture {kind}")
    errors = {}
    for name, want in expected.items():
        got = np.asarray(ours[name])
        if got.shape != want.shape:
            raise ValueError(f"{name}: shape {got.shape} != expected {want.shape}")
        errors[name] = float(np.max(np.abs(got.astype(np.float64) - want)))
    return errors


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: python -m vfm_jax.tools.check_fixture <fixture dir>")
    errors = check(argv[1])
    for name, err in errors.items():
        print(f"{name}: max abs error {err:.3e}")
    worst = max(errors.values())
    print(f"max abs error {worst:.3e}", flush=True)
    if worst > flags.FLAGS.tolerance:
        sys.exit(1)


if __name__ == "__main__":
    flags.DEFINE_float("tolerance", 1e-4, "Largest allowed max abs error.")
    app.run(main)
