"""Token masks for masked video modelling, with static shapes.

Masks are boolean with True = MASKED (hidden from the encoder), over the L = T' * H' * W'
patch tokens in the order the video ViT flattens them: T-major, then row-major within
a frame. Every generator hides the same number of tokens in every frame, so each clip
keeps a fixed number of visible tokens and the encoder input shape is static under jit.
"""
import jax
import jax.numpy as jnp
import numpy as np


def num_masked(tokens_per_frame: int, mask_ratio: float) -> int:
    """int(mask_ratio * tokens_per_frame), the per-frame count VideoMAE and UMT hide."""
    if not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    if tokens_per_frame <= 0:
        raise ValueError(f"tokens_per_frame must be positive, got {tokens_per_frame}")
    return int(mask_ratio * tokens_per_frame)


def num_visible(tokens_per_frame: int, mask_ratio: float) -> int:
    """Visible tokens per frame; UMT: 196 - int(0.8 * 196) = 40."""
    return tokens_per_frame - num_masked(tokens_per_frame, mask_ratio)


def _frame_mask(rng: np.random.Generator, tokens_per_frame: int, masked: int) -> np.ndarray:
    mask = np.zeros(tokens_per_frame, bool)
    mask[rng.permutation(tokens_per_frame)[:masked]] = True
    return mask


def tube_mask(rng: np.random.Generator, frames: int, tokens_per_frame: int, mask_ratio: float) -> np.ndarray:
    """(frames * tokens_per_frame,) VideoMAE tube mask: one spatial mask repeated in time.

    Hiding the same positions in every frame stops the encoder from copying a patch
    from its temporal neighbour (VideoMAE's "t_consist", ratio 0.9).
    """
    if frames <= 0:
        raise ValueError(f"frames must be positive, got {frames}")
    masked = num_masked(tokens_per_frame, mask_ratio)
    return np.tile(_frame_mask(rng, tokens_per_frame, masked), frames)


def random_frame_mask(rng: np.random.Generator, frames: int, tokens_per_frame: int,
                      mask_ratio: float) -> np.ndarray:
    """(frames * tokens_per_frame,) independent spatial mask per frame, equal counts per frame."""
    if frames <= 0:
        raise ValueError(f"frames must be positive, got {frames}")
    masked = num_masked(tokens_per_frame, mask_ratio)
    return np.concatenate([_frame_mask(rng, tokens_per_frame, masked) for _ in range(frames)])


def visible_indices(mask) -> np.ndarray:
    """Sorted positions of the visible (False) tokens: (N_vis,) for (L,), (B, N_vis) for (B, L).

    A batch must have equal visible counts, otherwise it could not be stacked.
    """
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.ndim not in (1, 2):
        raise ValueError(f"mask must be a bool (L,) or (B, L) array, got {mask.dtype} {mask.shape}")
    if mask.ndim == 1:
        return np.flatnonzero(~mask)
    counts = (~mask).sum(axis=1)
    if np.any(counts != counts[0]):
        raise ValueError(f"masks in a batch must have equal visible counts, got {sorted(set(counts.tolist()))}")
    return np.stack([np.flatnonzero(~row) for row in mask])


def gather_visible(tokens: jax.Array, mask: jax.Array, num_visible: int | None = None) -> jax.Array:
    """(B, L, D) tokens, (B, L) mask -> (B, num_visible, D) visible tokens in position order.

    Equals VideoMAE's x[~mask].reshape(B, -1, D). Under jit the mask is traced, so pass
    num_visible (a python int); without it the count is read from a concrete mask.
    """
    if tokens.ndim != 3 or mask.shape != tokens.shape[:2]:
        raise ValueError(f"need tokens (B, L, D) and mask (B, L), got {tokens.shape} and {mask.shape}")
    if num_visible is None:
        num_visible = visible_indices(np.asarray(mask)).shape[-1]
    # A stable sort of the mask puts the False (visible) positions first, in order.
    order = jnp.argsort(mask, axis=1, stable=True)[:, :num_visible]
    return jnp.take_along_axis(tokens, order[..., None], axis=1)


def attention_guided_mask(key: jax.Array, attn: jax.Array, mask_ratio: float) -> jax.Array:
    """(B, T, N) teacher CLS->patch attention -> (B, T * N) UMT attention-guided mask.

    UMT keeps N_vis = N - int(mask_ratio * N) tokens per frame, sampled without
    replacement with probability proportional to the attention (torch.multinomial).
    Gumbel-top-k draws the same distribution: the k largest log(attn) + Gumbel noise
    are a sequential weighted sample without replacement. Zero attention is clipped
    to the smallest normal float32 (log ~ -87); float32 Gumbel noise spans less than
    40, so such tokens lose to every token with attention above ~1e-20 and are drawn
    only when fewer than N_vis tokens have attention. The mask covers patch tokens
    only; UMT prepends an unmasked CLS position in the model.
    """
    if attn.ndim != 3:
        raise ValueError(f"attn must be (B, T, N), got shape {attn.shape}")
    keep = num_visible(attn.shape[-1], mask_ratio)
    attn = attn.astype(jnp.float32)
    logits = jnp.log(jnp.maximum(attn, jnp.finfo(jnp.float32).tiny))
    logits = logits + jax.random.gumbel(key, attn.shape, jnp.float32)
    _, visible = jax.lax.top_k(logits, keep)
    mask = jnp.put_along_axis(jnp.ones(attn.shape, bool), visible, False, axis=-1, inplace=False)
    return mask.reshape(attn.shape[0], -1)
