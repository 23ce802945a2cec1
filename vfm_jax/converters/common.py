"""Key bookkeeping and layout transposes shared by all converters."""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np


class KeyTracker:
    """A torch state dict that remembers which keys were used.

    `finish()` fails on keys never read (unexpected) and `take` fails on
    missing ones, so no weight is silently dropped or left at its init.
    """

    def __init__(self, state: Mapping[str, Any], prefix: str = ""):
        self._state = {k: np.asarray(v) for k, v in state.items()}
        self._prefix = prefix
        self._used: set[str] = set()

    def has(self, key: str) -> bool:
        return self._prefix + key in self._state

    def take(self, key: str) -> np.ndarray:
        full = self._prefix + key
        if full not in self._state:
            raise KeyError(f"checkpoint has no key {full!r}")
        self._used.add(full)
        return self._state[full].astype(np.float32)

    def scoped(self, prefix: str) -> "KeyTracker":
        """A view under `prefix` that shares this tracker's keys and used-key record."""
        view = KeyTracker({})
        view._state, view._used, view._prefix = self._state, self._used, self._prefix + prefix
        return view

    def count(self, pattern: str) -> int:
        """Number of `pattern.format(i)` keys for i = 0, 1, ... (e.g. blocks)."""
        n = 0
        while self.has(pattern.format(n)):
            n += 1
        return n

    def finish(self, ignore: tuple[str, ...] = ()):
        left = sorted(k for k in self._state if k not in self._used and not k.startswith(ignore))
        if left:
            shown = ", ".join(left[:20]) + (f" ... ({len(left)} in all)" if len(left) > 20 else "")
            raise ValueError(f"checkpoint keys not mapped by the converter: {shown}")


def linear(w: np.ndarray) -> np.ndarray:
    """torch Linear weight (out, in) -> Flax Dense kernel (in, out)."""
    return w.T


def layer_norm(state: KeyTracker, key: str) -> dict:
    return {"scale": state.take(f"{key}.weight"), "bias": state.take(f"{key}.bias")}


def stack_layers(blocks: list[dict]) -> dict:
    """[{...}] per block -> one tree with a leading layers axis (the nn.scan layout)."""
    return jax.tree.map(lambda *xs: np.stack(xs), *blocks)
