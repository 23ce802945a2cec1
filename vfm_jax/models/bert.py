"""The BERT text encoder of UMT stage 2, with cross-attention "fusion" layers.

This is the ALBEF/VINDLU `xbert` that unmasked_teacher uses
(`multi_modality/models/backbones/bert/xbert.py`): HF BERT (post-LN, erf GELU,
LayerNorm eps 1e-12, learned absolute positions, token type 0) whose layers
[0, fusion_layer) are text-only and whose layers [fusion_layer, depth) add a
cross-attention to the vision tokens between self-attention and the FFN. UMT
runs the two parts separately (`mode='text'` for VTC, `mode='fusion'` on the
text output for VTM and MLM), hence `encode_text` and `fuse`. The MLM head is
`cls.predictions`, whose decoder is tied to the word embeddings. There is no
pooler: UMT takes the [CLS] token itself.

Param tree: `embeddings` {word_embeddings, position_embeddings,
token_type_embeddings, norm}, `text_layers`, `fusion_layers` (each
{`layers`: stacked on a leading axis} when `scan_layers`, else
{`layers_0`, ...} counted from the start of that stack), `mlm_head`
{transform, norm, bias}. A stack with no layers has no entry.

Masks: text masks are (B, L) 1/0 and must be right-padded (our tokenizers pad
on the right): they become `key_lengths = mask.sum(-1)` for the attention
call-site, so a hole in the middle of a mask would be misread. Padded query
positions are computed like HF computes them (attending to the valid keys);
callers ignore them.

Dropout: hidden dropout where BERT applies it (after the embeddings
LayerNorm and after the attention-output and FFN-output denses). Dropout on
the attention probabilities (BERT's `attention_probs_dropout_prob`) is not
applied: the attention call-site (`kernels.attention`) never materialises the
probabilities.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from kernels.attention import dot_product_attention
from vfm_jax.layers.common import Dtype, layer_norm, trunc_normal, with_axes
from vfm_jax.layers.mlp import ACTIVATIONS, Mlp
from vfm_jax.layers.transformer import REMAT_POLICIES


class BertEmbeddings(nn.Module):
    """ids (B, L) -> LN(word + position + token type 0), then dropout (HF `BertEmbeddings`).

    Set up (not compact) so that the MLM head can `attend` with the word table.
    """

    vocab_size: int
    width: int
    max_positions: int = 512
    type_vocab_size: int = 2
    ln_eps: float = 1e-12
    dropout: float = 0.1
    dtype: Dtype = jnp.float32

    def setup(self):
        def embed(num: int, axis: str | None) -> nn.Embed:
            return nn.Embed(
                num, self.width, dtype=self.dtype, embedding_init=with_axes(trunc_normal, (axis, "embed"))
            )

        self.word_embeddings = embed(self.vocab_size, "vocab")
        self.position_embeddings = embed(self.max_positions, "length")
        self.token_type_embeddings = embed(self.type_vocab_size, None)
        self.norm = layer_norm(self.ln_eps)
        self.hidden_dropout = nn.Dropout(self.dropout)

    def __call__(self, ids: jax.Array, *, deterministic: bool) -> jax.Array:
        length = ids.shape[1]
        if length > self.max_positions:
            raise ValueError(f"text length {length} exceeds max_positions={self.max_positions}")
        x = (
            self.word_embeddings(ids)
            + self.position_embeddings(jnp.arange(length))[None]
            + self.token_type_embeddings(jnp.zeros((), jnp.int32))
        )
        x = self.norm(x).astype(self.dtype)
        return self.hidden_dropout(x, deterministic=deterministic)


class BertAttention(nn.Module):
    """Post-LN attention sublayer: LN(x + Dropout(out(Attn(query(x), key(kv), value(kv))))).

    `kv` is `x` for self-attention and the vision tokens (any width) for
    cross-attention; keys at positions >= `key_lengths` are ignored.
    """

    num_heads: int
    ln_eps: float = 1e-12
    dropout: float = 0.1
    attention_impl: str = "auto"
    deterministic: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, kv: jax.Array, key_lengths: jax.Array | None) -> jax.Array:
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads

        # Explicit params + einsum rather than nn.DenseGeneral, which initialises a flattened
        # 2-D kernel and so cannot carry these 3-D logical axes under a mesh.
        def project(name: str, inputs: jax.Array) -> jax.Array:
            kernel = self.param(
                f"{name}_kernel", with_axes(trunc_normal, ("embed", "heads", "head_dim")),
                (inputs.shape[-1], self.num_heads, head_dim),
            )
            bias = self.param(
                f"{name}_bias", with_axes(nn.initializers.zeros, ("heads", "head_dim")), (self.num_heads, head_dim)
            )
            return jnp.einsum("bld,dhk->blhk", inputs.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(
                self.dtype
            )

        h = dot_product_attention(
            project("query", x), project("key", kv), project("value", kv),
            key_lengths=key_lengths, impl=self.attention_impl,
        )
        out_kernel = self.param(
            "out_kernel", with_axes(trunc_normal, ("heads", "head_dim", "embed")), (self.num_heads, head_dim, width)
        )
        out_bias = self.param("out_bias", with_axes(nn.initializers.zeros, ("embed",)), (width,))
        h = jnp.einsum("blhk,hkd->bld", h, out_kernel.astype(self.dtype)) + out_bias.astype(self.dtype)
        h = nn.Dropout(self.dropout)(h, deterministic=self.deterministic)
        # The residual sum is taken in fp32, where the norm runs.
        return layer_norm(self.ln_eps, name="norm")(x.astype(jnp.float32) + h).astype(self.dtype)


class BertLayer(nn.Module):
    """Self-attention, then (fusion layers) cross-attention to the vision tokens, then the FFN; all post-LN."""

    num_heads: int
    mlp_dim: int
    cross_attention: bool = False
    ln_eps: float = 1e-12
    dropout: float = 0.1
    attention_impl: str = "auto"
    deterministic: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, key_lengths, vision=None, vision_lengths=None):
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        attention = functools.partial(
            BertAttention, self.num_heads, self.ln_eps, self.dropout, self.attention_impl,
            self.deterministic, self.dtype,
        )
        x = attention(name="attention")(x, x, key_lengths)
        if self.cross_attention:
            if vision is None:
                raise ValueError("fusion layers need the vision tokens")
            x = attention(name="cross_attention")(x, vision, vision_lengths)
        h = Mlp(self.mlp_dim, 0.0, self.dtype, "gelu", name="mlp")(x, deterministic=self.deterministic)
        h = nn.Dropout(self.dropout)(h, deterministic=self.deterministic)
        x = layer_norm(self.ln_eps, name="mlp_norm")(x.astype(jnp.float32) + h).astype(self.dtype)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class _ScanLayer(BertLayer):
    """BertLayer with the (carry, ...) -> (carry, ys) signature nn.scan wants."""

    def __call__(self, x, key_lengths, vision=None, vision_lengths=None):
        return super().__call__(x, key_lengths, vision, vision_lengths), None


class BertStack(nn.Module):
    """`count` BertLayers, scanned (params stacked under `layers`) or unrolled (`layers_{i}`).

    `deterministic` is a call argument (not a field) so that one set-up stack
    serves both training and evaluation.
    """

    count: int
    num_heads: int
    mlp_dim: int
    cross_attention: bool = False
    ln_eps: float = 1e-12
    dropout: float = 0.1
    attention_impl: str = "auto"
    scan: bool = True
    remat_policy: str = "none"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, key_lengths, vision=None, vision_lengths=None, *, deterministic: bool = True):
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy {self.remat_policy!r} not in {sorted(REMAT_POLICIES)}")
        if self.count == 0:
            return x
        layer_cls = _ScanLayer if self.scan else BertLayer
        if self.remat_policy != "none":
            layer_cls = nn.remat(layer_cls, policy=REMAT_POLICIES[self.remat_policy], prevent_cse=not self.scan)
        kwargs = dict(
            num_heads=self.num_heads, mlp_dim=self.mlp_dim, cross_attention=self.cross_attention,
            ln_eps=self.ln_eps, dropout=self.dropout, attention_impl=self.attention_impl,
            deterministic=deterministic, dtype=self.dtype,
        )
        if self.scan:
            stack = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                length=self.count,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(**kwargs, name="layers")
            x, _ = stack(x, key_lengths, vision, vision_lengths)
            return x
        for i in range(self.count):
            x = layer_cls(**kwargs, name=f"layers_{i}")(x, key_lengths, vision, vision_lengths)
        return x


class MlmHead(nn.Module):
    """BERT `cls.predictions`: dense -> GELU -> LayerNorm -> tied word table^T + bias; fp32 logits."""

    ln_eps: float = 1e-12
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden: jax.Array, word_embeddings: nn.Embed) -> jax.Array:
        width = hidden.shape[-1]
        h = nn.Dense(
            width,
            dtype=self.dtype,
            kernel_init=with_axes(trunc_normal, ("embed", "mlp")),
            bias_init=with_axes(nn.initializers.zeros, ("mlp",)),
            name="transform",
        )(hidden)
        h = layer_norm(self.ln_eps, name="norm", axis="mlp")(ACTIVATIONS["gelu"](h)).astype(self.dtype)
        bias = self.param("bias", with_axes(nn.initializers.zeros, ("vocab",)), (word_embeddings.num_embeddings,))
        return word_embeddings.attend(h).astype(jnp.float32) + bias


class BertTextEncoder(nn.Module):
    """UMT's text encoder: `encode_text` (text layers), `fuse` (fusion layers), `mlm_logits`.

    Call each with `model.apply(variables, ..., method=BertTextEncoder.fuse)`
    or from a parent module; `__call__` runs all three so that `init`
    creates every param. `vision_width` (None: `width`) is the width of the
    vision tokens the fusion layers' keys and values project from.
    """

    vocab_size: int = 30522
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    fusion_layer: int = 9
    vision_width: int | None = None
    max_positions: int = 512
    type_vocab_size: int = 2
    ln_eps: float = 1e-12
    dropout: float = 0.1
    attention_impl: str = "auto"
    scan_layers: bool = True
    remat_policy: str = "none"
    dtype: Dtype = jnp.float32

    def setup(self):
        if not 0 <= self.fusion_layer <= self.depth:
            raise ValueError(f"fusion_layer={self.fusion_layer} is outside [0, depth={self.depth}]")
        self.embeddings = BertEmbeddings(
            self.vocab_size, self.width, self.max_positions, self.type_vocab_size, self.ln_eps,
            self.dropout, self.dtype,
        )
        stack = functools.partial(
            BertStack, num_heads=self.num_heads, mlp_dim=self.mlp_dim, ln_eps=self.ln_eps,
            dropout=self.dropout, attention_impl=self.attention_impl, scan=self.scan_layers,
            remat_policy=self.remat_policy, dtype=self.dtype,
        )
        self.text_layers = stack(self.fusion_layer, cross_attention=False)
        self.fusion_layers = stack(self.depth - self.fusion_layer, cross_attention=True)
        self.mlm_head = MlmHead(self.ln_eps, self.dtype)

    def encode_text(self, ids: jax.Array, mask: jax.Array, *, train: bool = False) -> jax.Array:
        """(B, L) ids and right-padded 1/0 mask -> (B, L, D): embeddings + layers [0, fusion_layer)."""
        x = self.embeddings(ids, deterministic=not train)
        return self.text_layers(x, _lengths(mask), deterministic=not train)

    def fuse(
        self,
        text_hidden: jax.Array,
        mask: jax.Array,
        vision: jax.Array,
        *,
        vision_lengths: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        """(B, L, D) text states, their right-padded mask and (B, N, Dv) vision tokens -> (B, L, D).

        Layers [fusion_layer, depth); `vision_lengths` (B,) marks padded vision
        tokens (None: all N are valid, as in UMT).
        """
        vision_width = self.vision_width or self.width
        if vision.shape[-1] != vision_width:
            raise ValueError(f"vision tokens have width {vision.shape[-1]}, expected vision_width={vision_width}")
        return self.fusion_layers(
            text_hidden.astype(self.dtype), _lengths(mask), vision.astype(self.dtype), vision_lengths,
            deterministic=not train,
        )

    def mlm_logits(self, hidden: jax.Array) -> jax.Array:
        """(B, L, D) -> (B, L, vocab) fp32 logits of the MLM head."""
        return self.mlm_head(hidden, self.embeddings.word_embeddings)

    def __call__(self, ids, mask, vision, *, train: bool = False) -> dict[str, jax.Array]:
        text = self.encode_text(ids, mask, train=train)
        fused = self.fuse(text, mask, vision, train=train)
        return {"text": text, "fused": fused, "mlm_logits": self.mlm_logits(fused)}


def _lengths(mask: jax.Array) -> jax.Array:
    """Right-padded (B, L) 1/0 mask -> (B,) int32 key lengths."""
    return jnp.sum(mask.astype(jnp.int32), axis=-1)
