"""Convert an official PyTorch checkpoint into a vfm_jax checkpoint folder.

    python -m vfm_jax.convert --model umt_classifier --src k400_b16.pth --out /ckpt/umt_b16_k400

The source is read without executing pickle code (`converters.torch_io`);
every key must be mapped, or the conversion fails naming the leftovers. The
output is a params-only checkpoint whose metadata holds the model spec, so
`vfm_jax.load_pretrained(out)` and `python -m vfm_jax.evaluate
--checkpoint=out` (with a config of the same model) read it.
"""
from __future__ import annotations

from typing import Callable

from absl import app, flags

from vfm_jax import checkpointing, cli
from vfm_jax.converters import bert, clip, internvideo_mm, umt, uniformerv2, viclip, videomae
from vfm_jax.converters.torch_io import load_weights

# name -> converter(torch state dict, num_heads, scan_layers, **options) -> (model spec, variables)
CONVERTERS: dict[str, Callable] = {
    "umt_classifier": umt.convert_classifier,
    "umt_pretrain": umt.convert_pretrain,
    "umt_video_text": umt.convert_video_text,
    "clip_visual": clip.convert_clip_visual,
    "clip_text": clip.convert_clip_text,
    "clip": clip.convert_clip,
    "viclip": viclip.convert_viclip,
    "internvideo_mm": internvideo_mm.convert_internvideo_mm,
    "bert": bert.convert_bert_checkpoint,
    "videomae": videomae.convert_videomae,
    "uniformerv2": uniformerv2.convert_uniformerv2,
}
# Options only some converters take.
OPTIONS = {
    "fusion_layer": ("bert",),
    "text_num_heads": ("umt_video_text", "viclip", "internvideo_mm", "clip"),
    "teacher_num_heads": ("umt_video_text",),
    "decoder_num_heads": ("videomae",),
    "activation": ("clip",),
    "context_length": ("clip", "clip_text"),
}


def convert(model: str, src: str, out: str, *, num_heads: int | None = None, scan_layers: bool = True,
            allow_unknown_classes: bool = False, **options) -> dict:
    """Convert `src` with converter `model` into `out`; returns the model spec.

    `allow_unknown_classes` reads checkpoints that also pickle objects of
    other classes (a Lightning `hyper_parameters` dict, argparse `args`):
    those become inert stand-ins and are dropped (`converters.torch_io`).
    """
    if model not in CONVERTERS:
        raise ValueError(f"unknown converter {model!r}; available: {sorted(CONVERTERS)}")
    options = {k: v for k, v in options.items() if v is not None}
    for key in options:
        if model not in OPTIONS.get(key, ()):
            raise ValueError(f"--{key} applies to converters {OPTIONS.get(key, ())}, not {model!r}")
    weights = load_weights(src, allow_unknown_classes=allow_unknown_classes)
    spec, variables = CONVERTERS[model](weights, num_heads=num_heads, scan_layers=scan_layers, **options)
    metadata = {
        "converter": model,
        "source": str(src),
        "model": spec,
        "scan_layers": scan_layers,
        "param_dtype": "float32",
        "step": 0,
    }
    checkpointing.save_variables(out, variables, metadata)
    return spec


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.setup_logging()
    f = flags.FLAGS
    spec = convert(f.model, f.src, f.out, num_heads=f.num_heads, scan_layers=f.scan_layers,
                   allow_unknown_classes=f.allow_unknown_classes, **{key: f[key].value for key in OPTIONS})
    print(f"converted {f.src} -> {f.out}: " + ", ".join(f"{k}={v}" for k, v in spec.items()), flush=True)


if __name__ == "__main__":
    flags.DEFINE_enum("model", None, sorted(CONVERTERS), "Which checkpoint type to convert.")
    flags.DEFINE_string("src", None, "Official checkpoint (.pth/.pt/.bin/.pyth/.safetensors/.npz).")
    flags.DEFINE_string("out", None, "Output checkpoint folder.")
    flags.DEFINE_integer("num_heads", None, "Attention heads (default: width / 64).")
    flags.DEFINE_bool("scan_layers", True, "Stack layers for nn.scan (else one subtree per layer).")
    flags.DEFINE_bool(
        "allow_unknown_classes", False,
        "Read checkpoints that also pickle other objects (Lightning hyper_parameters, argparse args); they are dropped.",
    )
    flags.DEFINE_integer("fusion_layer", None, "bert: first layer to cross-attend (UMT: 9 base, 19 large).")
    flags.DEFINE_integer(
        "text_num_heads", None,
        "umt_video_text: BERT heads; viclip, internvideo_mm, clip: text tower heads (default: width / 64).",
    )
    flags.DEFINE_integer("teacher_num_heads", None, "umt_video_text: CLIP teacher heads (default: width / 64).")
    flags.DEFINE_integer("decoder_num_heads", None, "videomae: pixel decoder heads (default: width / 64).")
    flags.DEFINE_enum(
        "activation", None, ["quick_gelu", "gelu"],
        "clip: the MLP activation, not visible in the weights: quick_gelu (OpenAI, DFN, MetaCLIP; the default) "
        "or gelu (OpenCLIP LAION and DataComp models, names without -quickgelu).",
    )
    flags.DEFINE_integer(
        "context_length", None, "clip, clip_text: keep the first N rows of the text position table (ViCLIP: 32)."
    )
    flags.mark_flags_as_required(["model", "src", "out"])
    app.run(main)
