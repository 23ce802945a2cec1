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
    """x + DropPath(Attn(LN(x))); x + DropPath(MLP(LN(x))). `drop_path` may be a traced scalar."""

    num_heads: int
    mlp_dim: int
    qkv_bias: str = "qv"
    dropout: float = 0.0
    ln_eps: float = 1e-6
    attention_impl: str = "auto"
    deterministic: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, drop_path, key_lengths=None):
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        h = SelfAttention(
            self.num_heads, self.qkv_bias, self.attention_impl, self.dtype, name="attn"
        )(layer_norm(self.ln_eps, name="norm1")(x).astype(self.dtype), key_lengths=key_lengths)
        x = x + DropPath(drop_path)(h, deterministic=self.deterministic)
        h = Mlp(self.mlp_dim, self.dropout, self.dtype, name="mlp")(
            layer_norm(self.ln_eps, name="norm2")(x).astype(self.dtype),
            deterministic=self.deterministic,
        )
        x = x + DropPath(drop_path)(h, deterministic=self.deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class _ScanBlock(Block):
    """Block with the (carry, xs) -> (carry, ys) signature nn.scan wants."""

    def __call__(self, x, drop_path, key_lengths=None):
        return super().__call__(x, drop_path, key_lengths), None


class Encoder(nn.Module):
    """`depth` Blocks with stochastic-depth rates rising linearly from 0 to `drop_path_rate`.

    With `scan=True` the params of all blocks are stacked on a leading `layers`
    axis under `blocks` (compile time independent of depth); otherwise they
    are `blocks_0 ... blocks_{depth-1}`.
    """

    depth: int
    num_heads: int
    mlp_dim: int
    qkv_bias: str = "qv"
    dropout: float = 0.0
    drop_path_rate: float = 0.0
    ln_eps: float = 1e-6
    attention_impl: str = "auto"
    scan: bool = True
    remat_policy: str = "none"
    deterministic: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, key_lengths=None):
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy {self.remat_policy!r} not in {sorted(REMAT_POLICIES)}")
        rates = np.linspace(0.0, self.drop_path_rate, self.depth, dtype=np.float32)
        kwargs = dict(
            num_heads=self.num_heads, mlp_dim=self.mlp_dim, qkv_bias=self.qkv_bias,
            dropout=self.dropout, ln_eps=self.ln_eps, attention_impl=self.attention_impl,
            deterministic=self.deterministic, dtype=self.dtype,
        )
        block_cls = _ScanBlock if self.scan else Block
        if self.remat_policy != "none":
            block_cls = nn.remat(
                block_cls, policy=REMAT_POLICIES[self.remat_policy], prevent_cse=not self.scan
            )
        if self.scan:
            stack = nn.scan(
                block_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True, "droppath": True},
                in_axes=(0, nn.broadcast),
                length=self.depth,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(**kwargs, name="blocks")
            x, _ = stack(x, jnp.asarray(rates), key_lengths)
            return x
        for i in range(self.depth):
            x = block_cls(**kwargs, name=f"blocks_{i}")(x, float(rates[i]), key_lengths)
        return x
