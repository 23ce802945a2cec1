"""Converters from the official PyTorch checkpoints to vfm_jax params."""
