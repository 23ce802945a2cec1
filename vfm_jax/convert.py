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
from vfm_jax.converters import clip, umt
from vfm_jax.converters.torch_io import load_weights

# name -> converter(torch state dict, num_heads, scan_layers) -> (model spec, variables)
CONVERTERS: dict[str, Callable] = {
    "umt_classifier": umt.convert_classifier,
    "umt_pretrain": umt.convert_pretrain,
    "clip_visual": clip.convert_clip_visual,
}


def convert(model: str, src: str, out: str, *, num_heads: int | None = None, scan_layers: bool = True) -> dict:
    """Convert `src` with converter `model` into `out`; returns the model spec."""
    if model not in CONVERTERS:
        raise ValueError(f"unknown converter {model!r}; available: {sorted(CONVERTERS)}")
    spec, variables = CONVERTERS[model](load_weights(src), num_heads=num_heads, scan_layers=scan_layers)
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
    spec = convert(f.model, f.src, f.out, num_heads=f.num_heads, scan_layers=f.scan_layers)
    print(f"converted {f.src} -> {f.out}: " + ", ".join(f"{k}={v}" for k, v in spec.items()), flush=True)


if __name__ == "__main__":
    flags.DEFINE_enum("model", None, sorted(CONVERTERS), "Which checkpoint type to convert.")
    flags.DEFINE_string("src", None, "Official checkpoint (.pth/.pt/.bin/.pyth/.safetensors/.npz).")
    flags.DEFINE_string("out", None, "Output checkpoint folder.")
    flags.DEFINE_integer("num_heads", None, "Attention heads (default: width / 64).")
    flags.DEFINE_bool("scan_layers", True, "Stack layers for nn.scan (else one subtree per layer).")
    flags.mark_flags_as_required(["model", "src", "out"])
    app.run(main)
