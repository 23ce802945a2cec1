"""Pre-LN transformer block and the layer stack (nn.scan + nn.remat)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vfm_jax.layers.attention import SelfAttention
from vfm_jax.layers.common import Dtype, DropPath, layer_norm
from vfm_jax.layers.mlp import Mlp

# Names accepted for `remat_policy`; 'none' disables rematerialisation.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nn.Module):
    """x + DropPath(Attn(LN(x))); x + DropPath(MLP(LN(x))). `drop_path` may be a traced scalar.

    With `return_cls_attention` it returns (x, (B, L) CLS attention) (see SelfAttention).
    """

    num_heads: int
    mlp_dim: int
    qkv_bias: str = "qv"
    dropout: float = 0.0
    ln_eps: float = 1e-6
    activation: str = "gelu"
    attention_impl: str = "auto"
    return_cls_attention: bool = False
    causal: bool = False
    deterministic: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, drop_path, key_lengths=None):
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        h = SelfAttention(
            self.num_heads, self.qkv_bias, self.attention_impl, self.dtype,
            return_cls_attention=self.return_cls_attention, causal=self.causal, name="attn",
        )(layer_norm(self.ln_eps, name="norm1")(x).astype(self.dtype), key_lengths=key_lengths)
        if self.return_cls_attention:
            h, cls_attention = h
        x = x + DropPath(drop_path)(h, deterministic=self.deterministic)
        h = Mlp(self.mlp_dim, self.dropout, self.dtype, self.activation, name="mlp")(
            layer_norm(self.ln_eps, name="norm2")(x).astype(self.dtype),
            deterministic=self.deterministic,
        )
        x = x + DropPath(drop_path)(h, deterministic=self.deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return (x, cls_attention) if self.return_cls_attention else x


class _ScanBlock(Block):
    """Block with the (carry, xs) -> (carry, ys) signature nn.scan wants.

    ys holds, per layer, the block output if `emit_hidden` and the CLS
    attention if `return_cls_attention`.
    """

    emit_hidden: bool = False

    def __call__(self, x, drop_path, key_lengths=None):
        out = super().__call__(x, drop_path, key_lengths)
        ys = {}
        if self.return_cls_attention:
            out, ys["cls_attention"] = out
        if self.emit_hidden:
            ys["hidden"] = out
        return out, ys


def last_layers(depth: int, count: int, interval: int = 1) -> tuple[int, ...]:
    """Indices of `count` blocks counted back from the last one every `interval`, ascending.

    UMT's `return_index` (`depth - i * interval - 1` for i < count); its
    stacked outputs are in block order, which is ascending.
    """
    layers = sorted(depth - i * interval - 1 for i in range(count))
    if count < 0 or (layers and layers[0] < 0):
        raise ValueError(f"cannot return {count} layers every {interval} from a depth-{depth} stack")
    return tuple(layers)


class Encoder(nn.Module):
    """`depth` Blocks with stochastic-depth rates rising linearly from 0 to `drop_path_rate`.

    With `scan=True` the params of all blocks are stacked on a leading `layers`
    axis under `blocks` (compile time independent of depth); otherwise they
    are `blocks_0 ... blocks_{depth-1}`.

    Returns the last block's output, or, when `return_layers` (block indices)
    or `return_cls_attention` is set, `(x, aux)` with `aux['hidden']`
    (len(return_layers), B, L, D) in `return_layers` order and
    `aux['cls_attention']` (B, L) of the last block. Scanned, every layer's
    output is a scan output before the selection (one extra (depth, B, L, D)
    buffer); unrolled, only the requested ones are kept.
    """

    depth: int
    num_heads: int
    mlp_dim: int
    qkv_bias: str = "qv"
    dropout: float = 0.0
    drop_path_rate: float = 0.0
    ln_eps: float = 1e-6
    activation: str = "gelu"
    attention_impl: str = "auto"
    scan: bool = True
    remat_policy: str = "none"
    return_layers: tuple[int, ...] = ()
    return_cls_attention: bool = False
    causal: bool = False
    deterministic: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, key_lengths=None):
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy {self.remat_policy!r} not in {sorted(REMAT_POLICIES)}")
        if any(not 0 <= i < self.depth for i in self.return_layers):
            raise ValueError(f"return_layers {self.return_layers} outside a depth-{self.depth} stack")
        rates = np.linspace(0.0, self.drop_path_rate, self.depth, dtype=np.float32)
        kwargs = dict(
            num_heads=self.num_heads, mlp_dim=self.mlp_dim, qkv_bias=self.qkv_bias,
            dropout=self.dropout, ln_eps=self.ln_eps, activation=self.activation,
            attention_impl=self.attention_impl, causal=self.causal, deterministic=self.deterministic,
            dtype=self.dtype,
        )
        block_cls = _ScanBlock if self.scan else Block
        if self.remat_policy != "none":
            block_cls = nn.remat(
                block_cls, policy=REMAT_POLICIES[self.remat_policy], prevent_cse=not self.scan
            )
        aux = {}
        if self.scan:
            stack = nn.scan(
                block_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True, "droppath": True},
                in_axes=(0, nn.broadcast),
                length=self.depth,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(
                **kwargs, return_cls_attention=self.return_cls_attention,
                emit_hidden=bool(self.return_layers), name="blocks",
            )
            x, ys = stack(x, jnp.asarray(rates), key_lengths)
            if self.return_layers:
                aux["hidden"] = ys["hidden"][np.asarray(self.return_layers)]
            if self.return_cls_attention:
                aux["cls_attention"] = ys["cls_attention"][-1]
        else:
            hidden = {}
            for i in range(self.depth):
                last_attn = self.return_cls_attention and i == self.depth - 1
                x = block_cls(**kwargs, return_cls_attention=last_attn, name=f"blocks_{i}")(
                    x, float(rates[i]), key_lengths
                )
                if last_attn:
                    x, aux["cls_attention"] = x
                if i in self.return_layers:
                    hidden[i] = x
            if self.return_layers:
                aux["hidden"] = jnp.stack([hidden[i] for i in self.return_layers])
        if self.return_layers or self.return_cls_attention:
            return x, aux
        return x
