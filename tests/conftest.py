"""Test-session setup: 8 fake CPU devices so sharding tests need no accelerator.

The flag must be set before JAX initialises its backend, hence at import time.
"""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import subprocess  # noqa: E402

import pytest  # noqa: E402


def _tiny_config(**overrides):
    """The quickstart config shrunk for tests: depth 1, small batches, no periodic evals."""
    from configs.quickstart import get_config

    config = get_config("steps=4")
    config.model.depth = 1
    config.batch_size = 16
    config.log_every = 1
    config.eval_every = 1000
    config.checkpoint_every = 1000
    config.data.val_examples = 64
    config.evals.val.batch_size = 32
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


@pytest.fixture
def tiny_config():
    """Factory: tiny_config(**{'mesh.fsdp': 8, 'total_steps': 3}) -> ConfigDict."""
    return _tiny_config


def run_module(*args, devices: int = 1, timeout: int = 600, **popen):
    """`python -m <args>` from the repo root with `devices` fake CPU devices; returns CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=subprocess_env(devices), capture_output=True, text=True,
        timeout=timeout, **popen,
    )


def subprocess_env(devices: int = 1) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _bert_config(**kwargs):
    import transformers

    return transformers.BertConfig(
        hidden_act="gelu", layer_norm_eps=1e-12, type_vocab_size=2, attn_implementation="eager", **kwargs
    )


def _randomize(module, seed):
    """Non-trivial weights: norms around 1, every other param (biases included) N(0, 0.2)."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "LayerNorm.weight" in name:
                torch.nn.init.normal_(p, mean=1.0, std=0.2)
            else:
                torch.nn.init.normal_(p, std=0.2)
    return module.eval()


def umt_text_reference(*, vocab, width, depth, heads, mlp_dim, fusion_layer, vision_width, max_positions=64):
    """transformers modules standing in for UMT's xbert, and their state dict in UMT's layout.

    Returns (text, fusion, state) with random non-trivial weights:
    - `text`: BertForMaskedLM with `fusion_layer` layers: its `bert` is xbert's
      "text" mode and its `cls` is the MLM head (decoder tied to the word table).
    - `fusion`: the remaining layers as standalone `BertLayer`s built with
      cross-attention. transformers only builds cross-attention in decoder
      layers (`is_decoder=True`), and `BertModel` would then make the
      self-attention causal; xbert's fusion layers are bidirectional. At the
      layer level the mask is an explicit argument, so these layers get the
      plain (padding-only) bidirectional mask, exactly what xbert passes. Its
      cross-attention key/value are Linear(hidden, hidden) in transformers;
      xbert's take `encoder_width`, so they are replaced by
      Linear(vision_width, width).
    - `state`: both, named as in a UMT checkpoint (`text_encoder.bert.*`,
      `text_encoder.cls.predictions.*`, the `position_ids` buffer).
    """
    import numpy as np
    import torch
    from transformers import BertForMaskedLM
    from transformers.models.bert.modeling_bert import BertLayer

    sizes = dict(vocab_size=vocab, hidden_size=width, num_attention_heads=heads, intermediate_size=mlp_dim,
                 max_position_embeddings=max_positions)
    text = BertForMaskedLM(_bert_config(num_hidden_layers=fusion_layer, **sizes))
    assert text.cls.predictions.decoder.weight is text.bert.embeddings.word_embeddings.weight
    decoder_config = _bert_config(num_hidden_layers=depth, is_decoder=True, add_cross_attention=True, **sizes)
    fusion = torch.nn.ModuleList([BertLayer(decoder_config, layer_idx=i) for i in range(fusion_layer, depth)])
    for layer in fusion:
        layer.crossattention.self.key = torch.nn.Linear(vision_width, width)
        layer.crossattention.self.value = torch.nn.Linear(vision_width, width)
    _randomize(text, 0)
    _randomize(fusion, 1)

    state = {f"text_encoder.{k}": v.numpy() for k, v in text.state_dict().items()}
    for j, layer in enumerate(fusion):
        state.update({
            f"text_encoder.bert.encoder.layer.{fusion_layer + j}.{k}": v.numpy() for k, v in layer.state_dict().items()
        })
    # xbert registers position_ids as a persistent buffer, so UMT checkpoints carry it.
    state["text_encoder.bert.embeddings.position_ids"] = np.arange(max_positions)[None]
    return text, fusion, state
