"""Model architectures and the table of named presets.

`ARCHS` maps a config's `model.arch` to its Flax module; every other key of
`config.model` is a constructor argument. `PRESETS` names published sizes for
`vfm_jax.get_model`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from vfm_jax.models.bert import BertTextEncoder
from vfm_jax.models.clip import CLIP, CLIPText, CLIPVision
from vfm_jax.models.internvideo_cma import InternVideoCMA
from vfm_jax.models.internvideo_mm import InternVideoMM
from vfm_jax.models.umt import UMTStudent, UMTVideoText
from vfm_jax.models.uniformerv2 import UniFormerV2
from vfm_jax.models.viclip import ViCLIP
from vfm_jax.models.videomae import VideoMAEPretrain
from vfm_jax.models.vit import VideoViT

ARCHS: dict[str, type[nn.Module]] = {
    "video_vit": VideoViT,
    "umt_student": UMTStudent,
    "umt_video_text": UMTVideoText,
    "clip_vision": CLIPVision,
    "clip_text": CLIPText,
    "clip": CLIP,
    "viclip": ViCLIP,
    "internvideo_mm": InternVideoMM,
    "internvideo_cma": InternVideoCMA,
    "bert_text": BertTextEncoder,
    "videomae_pretrain": VideoMAEPretrain,
    "uniformerv2": UniFormerV2,
}

PRESETS: dict[str, dict[str, Any]] = {
    # The quickstart model: trains on the synthetic 32x32 clips in about a minute on a CPU.
    "vit_tiny_video": dict(arch="video_vit", width=64, depth=3, num_heads=4, patch_size=8, tubelet_size=1),
    # UMT students (released scripts use tubelet 1).
    "umt_b16": dict(arch="video_vit", width=768, depth=12, num_heads=12, patch_size=16, tubelet_size=1),
    "umt_l16": dict(arch="video_vit", width=1024, depth=24, num_heads=16, patch_size=16, tubelet_size=1),
    # VideoMAE encoders (tubelet 2).
    "videomae_b16": dict(arch="video_vit", width=768, depth=12, num_heads=12, patch_size=16, tubelet_size=2),
    "videomae_l16": dict(arch="video_vit", width=1024, depth=24, num_heads=16, patch_size=16, tubelet_size=2),
    "videomae_h16": dict(arch="video_vit", width=1280, depth=32, num_heads=16, patch_size=16, tubelet_size=2),
    # VideoMAE pre-training (encoder + pixel decoder), decoders of InternVideo's `scripts/pretrain`.
    "videomae_pretrain_b16": dict(arch="videomae_pretrain", width=768, depth=12, num_heads=12, patch_size=16,
                                  tubelet_size=2, decoder_width=384, decoder_depth=4, decoder_num_heads=6),
    "videomae_pretrain_l16": dict(arch="videomae_pretrain", width=1024, depth=24, num_heads=16, patch_size=16,
                                  tubelet_size=2, decoder_width=512, decoder_depth=12, decoder_num_heads=8),
    "videomae_pretrain_h16": dict(arch="videomae_pretrain", width=1280, depth=32, num_heads=16, patch_size=16,
                                  tubelet_size=2, decoder_width=512, decoder_depth=8, decoder_num_heads=8),
    # UMT stage-2 text encoders: layers from `fusion_layer` on cross-attend to the video tokens.
    "bert_base_uncased": dict(
        arch="bert_text", vocab_size=30522, width=768, depth=12, num_heads=12, mlp_dim=3072, fusion_layer=9
    ),
    "bert_large_uncased": dict(
        arch="bert_text", vocab_size=30522, width=1024, depth=24, num_heads=16, mlp_dim=4096, fusion_layer=19
    ),
    # ViCLIP (InternVid): 8 frames at 224, 90% of the patch tokens dropped in training, text context 32.
    "viclip_b16": dict(
        arch="viclip", embed_dim=512,
        vision=dict(width=768, depth=12, num_heads=12, patch_size=16, image_size=224, num_frames=8,
                    drop_ratio=0.9, drop_path_rate=0.1),
        text=dict(vocab_size=49408, width=512, depth=12, num_heads=8, context_length=32),
    ),
    "viclip_l14": dict(
        arch="viclip", embed_dim=768,
        vision=dict(width=1024, depth=24, num_heads=16, patch_size=14, image_size=224, num_frames=8,
                    drop_ratio=0.9, drop_path_rate=0.1),
        text=dict(vocab_size=49408, width=768, depth=12, num_heads=12, context_length=32),
    ),
    # InternVideo-MM (InternVideo v1): frame-wise CLIP ViT + 4 global UniBlocks on the last layers, text context 77.
    "internvideo_mm_b16": dict(
        arch="internvideo_mm", embed_dim=512,
        vision=dict(width=768, depth=12, num_heads=12, patch_size=16, image_size=224, global_layers=(8, 9, 10, 11)),
        text=dict(vocab_size=49408, width=512, depth=12, num_heads=8, context_length=77),
    ),
    "internvideo_mm_l14": dict(
        arch="internvideo_mm", embed_dim=768,
        vision=dict(width=1024, depth=24, num_heads=16, patch_size=14, image_size=224,
                    global_layers=(20, 21, 22, 23)),
        text=dict(vocab_size=49408, width=768, depth=12, num_heads=12, context_length=77),
    ),
    # UniFormerV2 (Kinetics regime: global UniBlocks on the last 4 layers, no local MHRA; see configs/uniformerv2).
    "uniformerv2_b16": dict(arch="uniformerv2", width=768, depth=12, num_heads=12, patch_size=16, image_size=224,
                            global_layers=(8, 9, 10, 11)),
    "uniformerv2_l14": dict(arch="uniformerv2", width=1024, depth=24, num_heads=16, patch_size=14, image_size=224,
                            global_layers=(20, 21, 22, 23)),
    "uniformerv2_l14_336": dict(arch="uniformerv2", width=1024, depth=24, num_heads=16, patch_size=14,
                                image_size=336, global_layers=(20, 21, 22, 23)),
    # Image CLIP (OpenAI ViT-B/16, ViT-L/14; QuickGELU: OpenCLIP's LAION/DataComp weights convert with gelu).
    "clip_b16": dict(
        arch="clip", embed_dim=512, vision=dict(width=768, depth=12, num_heads=12, patch_size=16, image_size=224),
        text=dict(vocab_size=49408, width=512, depth=12, num_heads=8, context_length=77),
    ),
    "clip_l14": dict(
        arch="clip", embed_dim=768, vision=dict(width=1024, depth=24, num_heads=16, patch_size=14, image_size=224),
        text=dict(vocab_size=49408, width=768, depth=12, num_heads=12, context_length=77),
    ),
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    """Module from a `config.model`-style mapping; an unknown key is an error that names it."""
    spec = dict(spec)
    arch = spec.pop("arch", None)
    if arch not in ARCHS:
        raise ValueError(f"model.arch={arch!r} is not one of {sorted(ARCHS)}")
    cls = ARCHS[arch]
    fields = {f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")}
    unknown = sorted(set(spec) - fields)
    if unknown:
        raise ValueError(f"model key(s) {unknown} are not arguments of {arch}; valid: {sorted(fields)}")
    if "dtype" in spec:
        if spec["dtype"] not in DTYPES:
            raise ValueError(f"model.dtype={spec['dtype']!r} is not one of {sorted(DTYPES)}")
        spec["dtype"] = DTYPES[spec["dtype"]]
    return cls(**spec)


def get_model(name: str, **overrides) -> nn.Module:
    """A named model from PRESETS, e.g. `get_model('umt_b16', num_classes=400)`."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(PRESETS)}")
    spec = {**PRESETS[name], **overrides}
    # Classifier archs default to no head; others (e.g. bert_text) have no num_classes.
    cls = ARCHS.get(spec.get("arch"))
    if cls is not None and "num_classes" in {f.name for f in dataclasses.fields(cls)}:
        spec.setdefault("num_classes", 0)
    return build_model(spec)
