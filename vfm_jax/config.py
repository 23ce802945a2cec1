"""Config helpers: variant strings and the checks run before anything is written.

Configs are Python files with `get_config(arg)`; `arg` is the text after ':' in
`--config=configs/x.py:frames=16,model=B16`. `parse_arg` turns it into typed
values, refusing keys the config does not offer. `config_flags` loads the
result locked, so `--config.key=value` overrides of unknown keys or values of
the wrong type fail while flags are parsed.
"""
from __future__ import annotations

import ml_collections


def _convert(key: str, text: str, default):
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"config variant {key}={text!r}: expected a bool")
    try:
        return type(default)(text)
    except ValueError:
        raise ValueError(
            f"config variant {key}={text!r}: expected {type(default).__name__}"
        ) from None


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """'frames=16,model=B16' -> ConfigDict with the defaults' types; unknown keys raise naming the key."""
    values = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, text = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(
                f"unknown config variant key {key!r}; this config accepts {sorted(defaults)}"
            )
        if not sep:
            raise ValueError(f"config variant {key!r} needs a value: {key}=...")
        values[key] = _convert(key, text.strip(), defaults[key])
    return ml_collections.ConfigDict(values)
