"""PyTorch counterparts of the benchmarked JAX training steps, built from transformers modules.

    python -m experiments.bench.torch_models --spec '{"umt": {...}, "viclip": {...}}' --out FILE

`gpu_suite` and `cpu_suite` run this file as a subprocess, so torch and jax
never share a process (their CUDA libraries need not agree, and each
framework's allocator keeps what it took). It imports torch, transformers and
numpy only. Random weights, synthetic random inputs; the specs are the dicts
of `gpu_suite.UMT_B16` / `gpu_suite.VICLIP_B16` (or their scaled-down
variants), the same ones the JAX steps are built from.

- UMT stage 1: `VideoMAEModel` (tubelet 1, q/v biases, no mean pooling) is
  the student and sees only the visible tokens (`bool_masked_pos` drops the
  masked ones inside the embeddings); its last K blocks' outputs go through
  its final LayerNorm, get the sinusoid table added again and one
  Linear -> LayerNorm -> L2 head each. `CLIPVisionModel` (+ a bias-free
  projection) is the frozen teacher: its last block's CLS->patch attention
  (recomputed for the one CLS row: SDPA never returns probabilities) draws
  the attention-guided mask (Gumbel-top-k per frame, the distribution of the
  official `torch.multinomial`), its last K blocks give the targets.
  Loss mean(2 - 2 <s, t>); AdamW.
- ViCLIP: `CLIPVisionModel`'s embeddings / pre_layrnorm / encoder /
  post_layernorm over joint space-time tokens (each frame patch-embedded, the
  spatial position table plus a learned temporal embedding added, 90% of the
  patch tokens dropped at random, CLS kept), a bias-free projection, and
  `CLIPTextModelWithProjection`; symmetric InfoNCE with a learned
  temperature; AdamW.

On CUDA the step runs under bf16 autocast with SDPA attention (params fp32);
on CPU in fp32.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F


def _hidden(out):
    """A layer's output tensor whether the transformers version returns a tensor or a tuple."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _tower(model, name):
    """transformers moved CLIP's `vision_model` / `text_model` inner module around; accept both layouts."""
    return getattr(model, name, model)


def _unmasked_args(layer) -> tuple:
    """Nones for the required mask arguments of a layer's forward (their number varies by model and version)."""
    required = [
        p for p in inspect.signature(layer.forward).parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return (None,) * (len(required) - 1)


def _run_layers(layers, h, keep=()):
    """h through `layers` (no mask); returns (h, [outputs of the layers in `keep`], input of the last layer)."""
    kept, last_in = [], h
    extra = _unmasked_args(layers[0])
    for i, layer in enumerate(layers):
        if i == len(layers) - 1:
            last_in = h
        h = _hidden(layer(h, *extra))
        if i in keep:
            kept.append(h)
    return h, kept, last_in


def _last_layers(depth, count):
    return tuple(range(depth - count, depth))


def _clip_vision_config(v, image_size):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=v["width"], intermediate_size=4 * v["width"], num_hidden_layers=v["depth"],
        num_attention_heads=v["num_heads"], image_size=image_size, patch_size=v["patch_size"],
        hidden_act="quick_gelu", layer_norm_eps=1e-5, attn_implementation="sdpa",
    )


class UMTStage1(torch.nn.Module):
    """Student + frozen teacher + heads; `forward(video)` is the stage-1 loss."""

    def __init__(self, spec):
        super().__init__()
        from transformers import CLIPVisionModel, VideoMAEConfig, VideoMAEModel

        s, t = spec["student"], spec["teacher"]
        self.spec = spec
        self.student = VideoMAEModel(VideoMAEConfig(
            image_size=spec["image_size"], patch_size=s["patch_size"], num_channels=3,
            num_frames=spec["frames"], tubelet_size=1, hidden_size=s["width"],
            num_hidden_layers=s["depth"], num_attention_heads=s["num_heads"],
            intermediate_size=4 * s["width"], hidden_act="gelu", qkv_bias=True,
            use_mean_pooling=False, layer_norm_eps=1e-6, attn_implementation="sdpa",
        ))
        k, out = spec["return_layers"], t["output_dim"]
        self.heads = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(s["width"], out), torch.nn.LayerNorm(out, eps=1e-6))
            for _ in range(k)
        )
        self.teacher = CLIPVisionModel(_clip_vision_config(t, spec["image_size"]))
        self.teacher_proj = torch.nn.Linear(t["width"], out, bias=False)
        for p in [*self.teacher.parameters(), *self.teacher_proj.parameters()]:
            p.requires_grad_(False)
        self.teacher.eval()
        # VideoMAE keeps its sinusoid table as a plain CPU tensor; a device copy for the re-added positions.
        self.register_buffer("pos", self.student.embeddings.position_embeddings.detach().clone(), persistent=False)

    def trainable(self):
        return [*self.student.parameters(), *self.heads.parameters()]

    @torch.no_grad()
    def teacher_outputs(self, video):
        """(B, L) mask (True = masked) and (K, B, N_vis, out) targets."""
        b, frames = video.shape[:2]
        tower = _tower(self.teacher, "vision_model")
        x = video.flatten(0, 1)
        h = tower.pre_layrnorm(tower.embeddings(x))
        depth = len(tower.encoder.layers)
        _, hidden, last_in = _run_layers(tower.encoder.layers, h, _last_layers(depth, self.spec["return_layers"]))
        # Last block's CLS->patch attention, averaged over heads (UMT's attn[:, 0, 1:]).
        layer = tower.encoder.layers[-1]
        attn = layer.self_attn
        y = layer.layer_norm1(last_in)
        n, length, width = y.shape
        heads = self.spec["teacher"]["num_heads"]
        q = attn.q_proj(y[:, :1]).view(n, 1, heads, -1).transpose(1, 2)
        k = attn.k_proj(y).view(n, length, heads, -1).transpose(1, 2)
        logits = (q.float() @ k.float().transpose(-1, -2)) * (width // heads) ** -0.5
        cls_attn = logits.softmax(-1).mean(1)[:, 0, 1:]  # (B*T, P)
        patches = cls_attn.shape[-1]
        keep = patches - int(self.spec["mask_ratio"] * patches)
        gumbel = -torch.log(-torch.log(torch.rand_like(cls_attn).clamp_min(1e-20)))
        visible = torch.topk(cls_attn.clamp_min(1e-38).log() + gumbel, keep, dim=-1).indices
        mask = torch.ones_like(cls_attn, dtype=torch.bool).scatter_(-1, visible, False).view(b, -1)
        feats = torch.stack(hidden)[:, :, 1:]  # (K, B*T, P, D)
        feats = F.normalize(self.teacher_proj(tower.post_layernorm(feats)).float(), dim=-1)
        feats = feats.reshape(feats.shape[0], b, frames * patches, -1)
        targets = feats[:, ~mask].reshape(feats.shape[0], b, frames * keep, -1)
        return mask, targets

    def forward(self, video):
        """video (B, T, 3, H, W) -> scalar alignment loss."""
        mask, targets = self.teacher_outputs(video)
        emb = self.student.embeddings(video, mask)
        layers = self.student.encoder.layer
        _, hidden, _ = _run_layers(layers, emb, _last_layers(len(layers), self.spec["return_layers"]))
        pos = self.pos.to(emb.dtype).expand(video.shape[0], -1, -1)[~mask].view(video.shape[0], -1, emb.shape[-1])
        student = torch.stack([
            F.normalize(head(self.student.layernorm(h) + pos).float(), dim=-1) for head, h in zip(self.heads, hidden)
        ])
        return (2.0 - 2.0 * (student * targets).sum(-1)).mean()

    def example(self, batch, device):
        s = self.spec
        return (torch.randn(batch, s["frames"], 3, s["image_size"], s["image_size"], device=device),)


class ViCLIP(torch.nn.Module):
    """Joint space-time CLIP vision tower with 90% token drop + CLIP text tower; `forward` is the loss."""

    def __init__(self, spec):
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionModel

        v, t = spec["vision"], spec["text"]
        self.spec = spec
        self.vision = CLIPVisionModel(_clip_vision_config(v, spec["image_size"]))
        self.vision_proj = torch.nn.Linear(v["width"], spec["embed_dim"], bias=False)
        self.temporal = torch.nn.Parameter(torch.zeros(spec["frames"], v["width"]))
        self.text = CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=t["vocab_size"], hidden_size=t["width"], intermediate_size=4 * t["width"],
            num_hidden_layers=t["depth"], num_attention_heads=t["num_heads"],
            max_position_embeddings=t["context"], projection_dim=spec["embed_dim"],
            hidden_act="quick_gelu", layer_norm_eps=1e-5, attn_implementation="sdpa",
            pad_token_id=0, bos_token_id=t["vocab_size"] - 2, eos_token_id=t["vocab_size"] - 1,
        ))
        self.log_temp = torch.nn.Parameter(torch.tensor(math.log(0.01)))

    def trainable(self):
        return list(self.parameters())

    def encode_video(self, video):
        b, frames = video.shape[:2]
        tower = _tower(self.vision, "vision_model")
        emb = tower.embeddings
        x = emb.patch_embedding(video.flatten(0, 1).to(emb.patch_embedding.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # (B*T, P, D)
        pos = emb.position_embedding.weight
        width = x.shape[-1]
        x = (x + pos[1:]).view(b, frames, -1, width) + self.temporal[None, :, None]
        x = x.reshape(b, -1, width)
        tokens = x.shape[1]
        keep = tokens - int(self.spec["drop_ratio"] * tokens)
        idx = torch.rand(b, tokens, device=x.device).argsort(dim=1)[:, :keep]
        x = torch.gather(x, 1, idx[..., None].expand(-1, -1, width))
        cls = (emb.class_embedding + pos[0]).to(x.dtype).expand(b, 1, width)
        h = tower.pre_layrnorm(torch.cat([cls, x], dim=1))
        h, _, _ = _run_layers(tower.encoder.layers, h)
        return F.normalize(self.vision_proj(tower.post_layernorm(h[:, 0])).float(), dim=-1)

    def forward(self, video, text_ids):
        v = self.encode_video(video)
        t = F.normalize(self.text(input_ids=text_ids).text_embeds.float(), dim=-1)
        logits = v @ t.T / self.log_temp.exp()
        labels = torch.arange(v.shape[0], device=v.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    def example(self, batch, device):
        s, t = self.spec, self.spec["text"]
        video = torch.randn(batch, s["frames"], 3, s["image_size"], s["image_size"], device=device)
        ids = torch.randint(1, t["vocab_size"] - 2, (batch, t["context"]), device=device)
        ids[:, 0], ids[:, -1] = t["vocab_size"] - 2, t["vocab_size"] - 1  # <start> ... <end>
        return video, ids


MODELS = {"umt": UMTStage1, "viclip": ViCLIP}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(name: str, spec: dict, *, device: torch.device, warmup: int, steps: int) -> dict:
    """Build `MODELS[name]` from `spec`, run warm-up + timed AdamW steps; times in ms."""
    torch.manual_seed(0)
    start = time.perf_counter()
    model = MODELS[name](spec).to(device)
    model.train()
    if name == "umt":
        model.teacher.eval()
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(model.trainable(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=cuda)
    inputs = model.example(spec["batch"], device)
    _sync(device)
    setup_s = time.perf_counter() - start
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = model(*inputs)
        loss.backward()
        opt.step()
        return loss

    times, losses = [], []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        loss = step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            losses.append(loss.item())
    median = statistics.median(times)
    result = {
        "framework": f"torch {torch.__version__}",
        "precision": "bf16 autocast, fp32 params, SDPA" if cuda else "fp32",
        "batch": spec["batch"],
        "setup_s": setup_s,
        "step_time_ms": 1000 * median,
        "step_times_ms": [1000 * t for t in times],
        "clips_per_sec": spec["batch"] / median,
        "loss": losses[-1],
        "finite": bool(np.isfinite(losses).all()),
        "trainable_params": sum(p.numel() for p in model.trainable() if p.requires_grad),
    }
    if cuda:
        result["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", required=True, help="JSON {name: spec} of the cases to run, in order")
    parser.add_argument("--out", required=True, help="JSON file written after every case")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0: default)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    for name, spec in json.loads(args.spec).items():
        base = name.split(":")[0]
        try:
            results[name] = bench(base, spec, device=device, warmup=args.warmup, steps=args.steps)
        except Exception as e:  # noqa: BLE001 - one failing case must not lose the others
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
