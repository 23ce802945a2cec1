"""WiSE-FT: average a trained model's weights with those of the model it started from.

    python -m vfm_jax.tools.wise_ft --finetuned=RUN_DIR --out=DIR --coef=0.5 \
      --source=vision_encoder=/ckpt/clip_b16_visual --source=text_encoder=/ckpt/clip_b16_text

Each `--source subtree=folder[:name]` names the converted weights a params
subtree of the run started from (a `clip_visual` / `clip_text` folder, or
one tower of a `clip` folder as `folder:vision_encoder`). Every source weight
must exist in that subtree with the same shape; there the output holds
(1 - coef) * trained + coef * source. Weights the source lacks (the global
blocks, the text mask embedding, a decoder) keep their trained values.
Harvest's zero-shot evaluation uses coef 0.5 (InternVideo1 `zs_classify.sh`:
`clip_wiseft_coef=0.5`), where both readings of the coefficient agree.
The output is a params-only checkpoint with the run's model spec, for
`python -m vfm_jax.evaluate --checkpoint=DIR` and `vfm_jax.load_pretrained`.
"""
from __future__ import annotations

import flax
import jax
import numpy as np
from absl import app, flags, logging

from vfm_jax import checkpointing, cli


def wise_ft(params: dict, sources: dict[str, dict], coef: float) -> tuple[dict, dict[str, int]]:
    """Mixed params and, per subtree, how many weights were averaged."""
    if not 0.0 <= coef <= 1.0:
        raise ValueError(f"coef={coef} must be in [0, 1]")
    mixed, counts = dict(params), {}
    for subtree, source in sources.items():
        if subtree not in params:
            raise ValueError(f"the trained params have no subtree {subtree!r}; they have {sorted(params)}")
        target = flax.traverse_util.flatten_dict(params[subtree], sep="/")
        loaded = flax.traverse_util.flatten_dict(source, sep="/")
        unfit = sorted(k for k in loaded if k not in target or loaded[k].shape != target[k].shape)
        if unfit:
            shown = [f"{k} {loaded[k].shape} vs {target[k].shape if k in target else 'absent'}" for k in unfit[:10]]
            raise ValueError(f"source of {subtree} does not fit the trained weights: {shown}")
        for key, value in loaded.items():
            trained = np.asarray(target[key], np.float32)
            target[key] = ((1.0 - coef) * trained + coef * np.asarray(value, np.float32)).astype(target[key].dtype)
        mixed[subtree] = flax.traverse_util.unflatten_dict(target, sep="/")
        counts[subtree] = len(loaded)
        logging.info("%s: %d of %d weights averaged", subtree, len(loaded), len(target))
    return mixed, counts


def load_source(path: str) -> dict:
    folder, name = checkpointing.split_subtree(path)
    params = checkpointing.load_variables(folder)["params"]
    if name and name not in params:
        raise ValueError(f"{folder} has no params subtree {name!r}; it has {sorted(params)}")
    return jax.device_get(params[name] if name else params)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.setup_logging()
    f = flags.FLAGS
    sources = {}
    for spec in f.source:
        subtree, sep, path = spec.partition("=")
        if not sep or not subtree or not path:
            raise app.UsageError(f"--source {spec!r} is not subtree=folder")
        sources[subtree] = load_source(path)
    params = jax.device_get(checkpointing.load_variables(f.finetuned)["params"])
    mixed, counts = wise_ft(params, sources, f.coef)
    metadata = dict(checkpointing.read_metadata(f.finetuned))
    metadata["wise_ft"] = {"finetuned": f.finetuned, "sources": list(f.source), "coef": f.coef, "averaged": counts}
    metadata["step"] = 0
    checkpointing.save_variables(f.out, {"params": mixed}, metadata)
    print(f"wise_ft: {f.finetuned} + {', '.join(f.source)} (coef {f.coef}) -> {f.out}", flush=True)


if __name__ == "__main__":
    flags.DEFINE_string("finetuned", None, "The trained run (workdir, checkpoints dir or step dir).")
    flags.DEFINE_multi_string("source", [], "subtree=folder[:name] of the weights the run started from.")
    flags.DEFINE_float("coef", 0.5, "Weight of the source: (1 - coef) * trained + coef * source.")
    flags.DEFINE_string("out", None, "Output checkpoint folder.")
    flags.mark_flags_as_required(["finetuned", "source", "out"])
    app.run(main)
