"""Harvest post-pretraining: text masking, the MLM loss, the task on 8 devices, WiSE-FT, and a tiny run."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vfm_jax
from conftest import run_module
from configs.harvest import post_pretrain
from configs.internvideo import mm_zero_shot
from data.synthetic import DIRECTIONS, MovingShapes, VOCAB_FILE
from data.tokenizers import fixed_length, load_tokenizer
from vfm_jax import checkpointing, sharding
from vfm_jax.evaluate import evaluate
from vfm_jax.tasks import build_task
from vfm_jax.tasks.harvest import draw_text_mask, mlm_loss
from vfm_jax.tools.wise_ft import wise_ft
from vfm_jax.train import train_and_evaluate


def test_text_mask_spares_start_end_and_padding_and_caps_the_count():
    lengths = np.array([2, 5, 12, 12])
    text_mask = np.arange(12)[None, :] < lengths[:, None]
    for seed in range(5):
        drawn, positions, weights = draw_text_mask(jax.random.key(seed), jnp.asarray(text_mask), 0.9, 4)
        drawn, positions, weights = map(np.asarray, (drawn, positions, weights))
        for row, n in enumerate(lengths):
            eligible = set(range(1, n - 1))
            masked = set(np.flatnonzero(drawn[row]).tolist())
            assert masked <= eligible and len(masked) <= 4
            assert sorted(positions[row][weights[row] > 0].tolist()) == sorted(masked)
            assert list(positions[row][: len(masked)]) == sorted(masked)  # masked first, in order
    # Row 0 ([CLS] [SEP]) has nothing to mask; a long row at p = 0.9 hits the cap.
    assert weights[0].sum() == 0 and weights[2].sum() == 4

    rate = np.asarray(draw_text_mask(jax.random.key(0), jnp.ones((4000, 12), bool), 0.15, 10)[0])[:, 1:11].mean()
    assert abs(rate - 0.15) < 0.01


def test_mlm_loss_averages_cross_entropy_over_masked_positions_only():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
    labels = rng.integers(0, 7, size=(2, 3))
    weights = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(mlm_loss(logits, labels, weights), (ce * weights).sum() / 3, rtol=1e-5)
    assert float(mlm_loss(logits, labels, np.zeros_like(weights))) == 0.0


def _tiny_batch(task, config, size=16):
    encode = fixed_length(load_tokenizer("bert", VOCAB_FILE), config.data.max_text_length)
    source = MovingShapes("train", num_examples=size, frames=config.data.frames, size=config.data.size,
                          encode_text=encode)
    examples = [source[i] for i in range(size)]
    batch = {k: np.stack([e[k] for e in examples]) for k in task.input_keys}
    batch["index"] = batch["index"] % (size // 2)
    return batch


def test_loss_and_gradient_on_8_devices_equal_one_device():
    """Patch drop, text masking and the MLM decoder under a batch sharded on 8 devices: the 1-device numbers."""
    config = post_pretrain.get_config("model=tiny")
    task = build_task(config)
    batch = _tiny_batch(task, config)
    params = nn.unbox(task.init(jax.random.key(0), batch))["params"]
    assert {"mlm_decoder", "mlm_bias", "text_mask_embedding", "logit_scale"} <= set(params)
    rng = jax.random.key(3)

    def loss_and_grad(params, batch):
        return jax.value_and_grad(lambda p: task.loss_fn(p, {}, batch, rng)[0], )(params)

    want_loss, want_grad = jax.jit(loss_and_grad)(params, batch)
    _, (metrics, _) = jax.jit(lambda p, b: task.loss_fn(p, {}, b, rng))(params, batch)
    assert float(metrics["masked_tokens"]) > 0 and float(metrics["mlm_loss"]) > 0
    np.testing.assert_allclose(metrics["loss"], metrics["contrastive_loss"] + metrics["mlm_loss"], rtol=1e-6)
    mesh = sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1}, jax.devices()[:8])
    with jax.set_mesh(mesh):
        sharded = jax.device_put(batch, sharding.batch_sharding(mesh))
        got_loss, got_grad = jax.jit(loss_and_grad, out_shardings=sharding.replicated(mesh))(params, sharded)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # The mask embedding and the decoder learn; the clamp keeps CLIP's bounds on logit_scale.
    assert float(jnp.abs(want_grad["text_mask_embedding"]).sum()) > 0
    clamped = task.constrain_params({**params, "logit_scale": jnp.float32(7.0)})
    assert float(clamped["logit_scale"]) == pytest.approx(np.log(100.0))


def test_mlm_needs_the_decoder():
    config = post_pretrain.get_config("model=tiny")
    config.model.mlm_decoder_depth = 0
    with pytest.raises(ValueError, match="mlm_decoder_depth"):
        build_task(config)
    config.task.mlm_weight = 0.0
    build_task(config)  # contrastive alone


def test_wise_ft_averages_the_source_weights_only():
    trained = {"vision_encoder": {"proj": np.full((2, 2), 4.0, np.float32), "global_blocks": {"b": np.ones(3)}},
               "logit_scale": np.float32(2.0)}
    source = {"proj": np.zeros((2, 2), np.float32)}
    mixed, counts = wise_ft(trained, {"vision_encoder": source}, 0.25)
    np.testing.assert_allclose(mixed["vision_encoder"]["proj"], 3.0)
    np.testing.assert_allclose(mixed["vision_encoder"]["global_blocks"]["b"], 1.0)
    assert mixed["logit_scale"] == 2.0 and counts == {"vision_encoder": 1}
    with pytest.raises(ValueError, match="does not fit"):
        wise_ft(trained, {"vision_encoder": {"proj": np.zeros((3, 2))}}, 0.5)
    with pytest.raises(ValueError, match="no subtree"):
        wise_ft(trained, {"text_encoder": source}, 0.5)


@pytest.mark.slow
def test_tiny_post_pretraining_then_zero_shot_and_retrieval_above_chance(tmp_path):
    """From scratch on the synthetic captions with half the patches of every frame dropped and text masked."""
    config = post_pretrain.get_config("model=tiny")
    results = train_and_evaluate(config, tmp_path / "run", devices=jax.devices()[:1])
    print({k: round(v, 3) for k, v in results.items() if k.startswith(("zero_shot", "retrieval", "train_mlm"))})
    # Chance: 1/4 directions, 1/128 validation clips (measured: 0.81, 0.37). The frame-wise backbone
    # sees motion only through the global blocks' 3-D DPE, so direction is the hard part here.
    candidates = config.data.val_examples
    assert results["zero_shot_top1"] >= 2 / len(DIRECTIONS), results["zero_shot_top1"]
    assert results["retrieval_t2v_r1"] >= 10 / candidates, results["retrieval_t2v_r1"]
    assert results["train_mlm_accuracy"] > 0.5, results["train_mlm_accuracy"]  # masked caption words come back

    # The zero-shot config reads the run's encoders (not its decoder) to the same numbers.
    again = evaluate(mm_zero_shot.get_config("model=tiny"), str(tmp_path / "run"), devices=jax.devices()[:1])
    for key in ("zero_shot_top1", "retrieval_t2v_r1", "retrieval_t2v_r1_dsl"):
        assert again[key] == pytest.approx(results[key]), key

    # WiSE-FT through the CLI: the video tower averaged with "its source" (here a fresh init), the rest kept.
    trained = checkpointing.load_variables(tmp_path / "run")["params"]
    source = jax.tree.map(lambda x: np.full(x.shape, 0.5, x.dtype), jax.device_get(trained["vision_encoder"]))
    source.pop("global_blocks")  # an image CLIP has no global blocks
    checkpointing.save_variables(tmp_path / "clip", {"params": {"vision_encoder": source}}, {})
    proc = run_module("vfm_jax.tools.wise_ft", f"--finetuned={tmp_path / 'run'}", f"--out={tmp_path / 'wise'}",
                      f"--source=vision_encoder={tmp_path / 'clip'}:vision_encoder", "--coef=0.5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, mixed = vfm_jax.load_pretrained(tmp_path / "wise")
    np.testing.assert_allclose(mixed["params"]["vision_encoder"]["proj"],
                               0.5 * np.asarray(trained["vision_encoder"]["proj"]) + 0.25, rtol=1e-6)
    np.testing.assert_array_equal(mixed["params"]["vision_encoder"]["global_blocks"]["balance"],
                                  trained["vision_encoder"]["global_blocks"]["balance"])
    np.testing.assert_array_equal(mixed["params"]["text_encoder"]["ln_final"]["scale"],
                                  trained["text_encoder"]["ln_final"]["scale"])
