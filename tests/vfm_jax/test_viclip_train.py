"""ViCLIP training and zero-shot evaluation: the contrastive loss, the evaluators' metrics, and the run.

The end-to-end test trains the tiny config from scratch on the synthetic
moving shapes (captions that name each clip's motion direction, marker order
and blink count), then classifies the direction zero-shot from class-name
prompts and retrieves the validation clips from their captions.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs.viclip import pretrain, zero_shot
from data.synthetic import DIRECTIONS, MovingShapes, VOCAB_FILE
from data.tokenizers import fixed_length, load_tokenizer
from vfm_jax import sharding
from vfm_jax.evaluate import evaluate
from vfm_jax.evaluators.dual_encoder_retrieval import dual_softmax, retrieval_metrics
from vfm_jax.evaluators.zero_shot import class_names, ensemble_prompts, pre_text, prompts
from vfm_jax.models import build_model
from vfm_jax.tasks import build_task
from vfm_jax.tasks.viclip import clamped, vtc_loss
from vfm_jax.train import train_and_evaluate


def _normalized(rng, shape):
    x = rng.normal(size=shape)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


# --------------------------------------------------------------------------- loss


def test_loss_is_symmetric_infonce_with_one_positive_each():
    rng = np.random.default_rng(0)
    v, t = _normalized(rng, (6, 8)), _normalized(rng, (6, 8))
    logits = v.astype(np.float64) @ t.T / 0.05
    want = -(np.trace(_log_softmax(logits)) + np.trace(_log_softmax(logits.T))) / (2 * 6)
    got = vtc_loss(jnp.asarray(v), jnp.asarray(t), jnp.arange(6), jnp.float32(0.05))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_clips_of_one_video_are_all_positives():
    rng = np.random.default_rng(1)
    v, t = _normalized(rng, (5, 8)), _normalized(rng, (5, 8))
    ids = np.array([3, 3, 7, 3, 9])
    same = (ids[:, None] == ids[None]).astype(np.float64)
    targets = same / same.sum(axis=1, keepdims=True)
    logits = v.astype(np.float64) @ t.T / 0.1
    want = -((targets * _log_softmax(logits)).sum() + (targets * _log_softmax(logits.T)).sum()) / (2 * 5)
    np.testing.assert_allclose(vtc_loss(jnp.asarray(v), jnp.asarray(t), jnp.asarray(ids), 0.1), want, rtol=1e-5)

    # Two clips of one video (rows 0, 1) and another video: embedding both clips alike reaches the
    # floor (the entropy of the targets, log 2 on the two shared rows); telling them apart is penalised,
    # unless their indices differ.
    e = jnp.eye(3)
    alike, apart = e[jnp.array([0, 0, 2])], e
    one_video, three_videos = jnp.array([0, 0, 1]), jnp.arange(3)
    assert float(vtc_loss(alike, alike, one_video, 0.01)) == pytest.approx(2 / 3 * math.log(2), rel=1e-5)
    assert float(vtc_loss(apart, apart, one_video, 0.01)) > 10
    assert float(vtc_loss(apart, apart, three_videos, 0.01)) < 1e-3


def test_temperature_clamp_reads_the_bound_and_passes_the_whole_gradient():
    assert float(clamped(jnp.float32(0.004), 0.01)) == pytest.approx(0.01)
    assert float(clamped(jnp.float32(0.03), 0.01)) == pytest.approx(0.03)
    for temp in (0.004, 0.01, 0.03):
        assert float(jax.grad(lambda x: clamped(x, 0.01) ** 2)(jnp.float32(temp))) == pytest.approx(
            2 * max(temp, 0.01)
        )
    task = build_task(pretrain.get_config("model=tiny"))
    params = task.constrain_params({"temp": jnp.float32(0.002), "other": jnp.ones(2)})
    assert float(params["temp"]) == pytest.approx(0.01) and np.all(params["other"] == 1)


def _tiny_batch(task, config, size=16):
    encode = fixed_length(load_tokenizer("bert", VOCAB_FILE), config.data.max_text_length)
    source = MovingShapes("train", num_examples=size, frames=config.data.frames, size=config.data.size,
                          encode_text=encode)
    examples = [source[i] for i in range(size)]
    batch = {k: np.stack([e[k] for e in examples]) for k in task.input_keys}
    batch["index"] = batch["index"] % (size // 2)  # every video twice: multi-positive rows
    return batch


def test_global_batch_loss_and_gradient_on_8_devices_equal_one_device():
    """The loss over a batch sharded on 8 devices (the all-gather of both embeddings) is the 1-device loss."""
    config = pretrain.get_config("model=tiny")
    config.model.vision.drop_path_rate = 0.1  # both rng streams of training in use
    task = build_task(config)
    batch = _tiny_batch(task, config)
    params = nn.unbox(task.init(jax.random.PRNGKey(0), batch))["params"]
    rng = jax.random.PRNGKey(3)

    def loss_and_grad(params, batch):
        return jax.value_and_grad(lambda p: task.loss_fn(p, {}, batch, rng)[0])(params)

    want_loss, want_grad = jax.jit(loss_and_grad)(params, batch)
    mesh = sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1}, jax.devices()[:8])
    with jax.set_mesh(mesh):
        sharded = jax.device_put(batch, sharding.batch_sharding(mesh))
        got_loss, got_grad = jax.jit(loss_and_grad, out_shardings=sharding.replicated(mesh))(params, sharded)
    assert len(sharded["video"].sharding.device_set) == 8
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert float(optax.global_norm(want_grad)) > 0


def test_converted_clip_towers_fit_the_viclip_towers():
    """`task.vision_checkpoint` / `text_checkpoint` hold CLIPVision / CLIPText params: same names and shapes."""
    config = pretrain.get_config("model=tiny")
    vision, text, embed_dim = dict(config.model.vision), dict(config.model.text), config.model.embed_dim
    video = jax.ShapeDtypeStruct((1, 8, vision["image_size"], vision["image_size"], 3), jnp.uint8)
    clip_only = {k: v for k, v in vision.items() if k not in ("num_frames", "drop_ratio", "drop_path_rate",
                                                                 "temporal_init_std")}
    clip_vision = build_model(dict(arch="clip_vision", output_dim=embed_dim, **clip_only))
    clip_text = build_model(dict(arch="clip_text", output_dim=embed_dim, **text))

    def shapes(init, *args):
        tree = jax.eval_shape(lambda *a: nn.unbox(init(jax.random.PRNGKey(0), *a))["params"], *args)
        return jax.tree.map(lambda x: x.shape, tree)

    params = shapes(build_task(config).init, {"video": video})
    assert params["vision_encoder"].pop("temporal_positional_embedding") == (vision["num_frames"], vision["width"])
    assert params["vision_encoder"] == shapes(clip_vision.init, jnp.zeros((1, *video.shape[2:])))
    assert params["text_encoder"] == shapes(clip_text.init, jnp.zeros((1, text["context_length"]), jnp.int32))


# --------------------------------------------------------------------------- evaluators


def test_retrieval_metrics_on_a_hand_built_matrix():
    # Text queries (rows) over videos; the match of text q is video q.
    t2v = np.array([
        [0.9, 0.1, 0.2, 0.3],  # rank 1
        [0.8, 0.7, 0.1, 0.0],  # rank 2
        [0.1, 0.2, 0.6, 0.5],  # rank 1
        [0.5, 0.5, 0.5, 0.5],  # a tie counts against the match: rank 4
    ])
    out = retrieval_metrics(t2v, t2v.T)
    assert out["t2v_r1"] == 0.5 and out["t2v_r5"] == 1.0 and out["t2v_r10"] == 1.0
    assert out["t2v_mdr"] == 1.5 and out["t2v_mnr"] == 2.0
    # Video q ranks the texts by column q: ranks 1, 1, 1 and 2 (text 2 ties video 3's own text).
    assert out["v2t_r1"] == 0.75 and out["v2t_mdr"] == 1.0 and out["v2t_mnr"] == 1.25
    assert out["mean_recall"] == pytest.approx(np.mean([0.5, 1, 1, 0.75, 1, 1]))


def test_dual_softmax_reweights_over_the_queries_and_demotes_a_hub():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 7))
    prior = np.exp(3.0 * scores) / np.exp(3.0 * scores).sum(axis=0, keepdims=True)
    np.testing.assert_allclose(dual_softmax(scores, 3.0), scores * prior)

    # Video 0 is a hub every text likes; text 1 ranks it above its own video 1 until DSL discounts
    # the hub for the text that likes it less.
    t2v = np.array([[0.9, 0.1], [0.8, 0.7]])
    assert retrieval_metrics(t2v, t2v.T)["t2v_r1"] == 0.5
    for scale in (1.0, 100.0):
        assert retrieval_metrics(dual_softmax(t2v, scale), t2v.T)["t2v_r1"] == 1.0


def test_prompts_ensembling_and_class_names(tmp_path):
    assert prompts(("a", "b"), ("x {}", "{} y"), clean=False) == ["x a", "a y", "x b", "b y"]
    assert prompts(("Petting animal (not cat)",), ("{}, an action",), clean=True) == [
        "petting animal not cat an action"
    ]
    assert pre_text("Can you recognize the action of tying knot (not on a tie)?") == (
        "can you recognize the action of tying knot not on a tie"
    )
    with pytest.raises(ValueError, match="exactly one"):
        prompts(("a",), ("no slot",), clean=False)

    # 2 classes x 2 templates, class-major.
    emb = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(ensemble_prompts(emb, 2, "similarity"), [[0.5, 0.5], [1.0, 0.0]])
    np.testing.assert_allclose(ensemble_prompts(emb, 2, "clip"), [[0.5 ** 0.5, 0.5 ** 0.5], [1.0, 0.0]], rtol=1e-6)

    (tmp_path / "names.txt").write_text("abseiling\nair drumming\n\n")
    cfg = ml_collections.ConfigDict(dict(class_names=(), class_names_file=str(tmp_path / "names.txt")))
    assert class_names(cfg) == ("abseiling", "air drumming")
    cfg.class_names = ("x",)
    with pytest.raises(ValueError, match="exactly one"):
        class_names(cfg)


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_tiny_contrastive_training_then_zero_shot_and_retrieval_above_chance(tmp_path):
    config = pretrain.get_config("model=tiny")
    results = train_and_evaluate(config, tmp_path / "run", devices=jax.devices()[:1])

    assert results["train_temp"] >= np.float32(config.model.temp_min)  # the clamp held
    print({k: round(v, 3) for k, v in results.items() if k.startswith(("zero_shot", "retrieval"))})
    # Chance: a uniform guess among the directions; a random ranking of the validation clips.
    candidates = config.data.val_examples
    assert results["zero_shot_top1"] >= 2 / len(DIRECTIONS), results["zero_shot_top1"]
    assert results["retrieval_t2v_r1"] >= 10 / candidates, results["retrieval_t2v_r1"]
    assert results["retrieval_t2v_mdr"] <= (candidates + 1) / 2 / 10, results["retrieval_t2v_mdr"]

    # The zero-shot config evaluates the checkpoint through `vfm_jax.evaluate` to the same numbers.
    again = evaluate(zero_shot.get_config("model=tiny"), str(tmp_path / "run"), devices=jax.devices()[:1])
    for key in ("zero_shot_top1", "retrieval_t2v_r1", "retrieval_v2t_mdr", "retrieval_t2v_r1_dsl"):
        assert again[key] == pytest.approx(results[key]), key


def test_frozen_text_tower_gets_no_gradient_and_no_decay():
    """The B/16 recipe (`freeze_text`): the loss still reads the text tower; its gradient is zero, and decay skips it."""
    from vfm_jax.optim import decay_mask

    config = pretrain.get_config("model=tiny")
    config.task.freeze_text = True
    task = build_task(config)
    batch = _tiny_batch(task, config)
    params = nn.unbox(task.init(jax.random.PRNGKey(0), batch))["params"]
    grads = jax.jit(jax.grad(lambda p: task.loss_fn(p, {}, batch, jax.random.PRNGKey(1))[0]))(params)
    assert not any(np.any(g) for g in jax.tree.leaves(grads["text_encoder"]))
    assert float(optax.global_norm(grads["vision_encoder"])) > 0
    b16 = pretrain.get_config("model=B16")
    assert b16.task.freeze_text and not pretrain.get_config("model=L14").task.freeze_text
    mask = decay_mask(params, b16.optim.no_decay)
    assert not any(jax.tree.leaves(mask["text_encoder"])) and mask["vision_encoder"]["proj"] is False
    assert any(jax.tree.leaves(mask["vision_encoder"]))
