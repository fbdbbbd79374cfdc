"""Relative position schemes that act inside attention: ALiBi biases and rotary embeddings (RoPE).

Both are functions of *position ids* (not of the index in the array), so packed / unpadded
streams (:mod:`jaxbert.models.layers.unpad`) that carry each token's original position give
exactly the padded result.

ALiBi (Press et al. 2022), symmetric form used by MosaicBERT for a bidirectional encoder::

    bias[b, h, q, k] = -slope_h * |pos[b, q] - pos[b, k]|

with the slopes of the paper (a geometric sequence starting at ``2^(-8/n)`` for ``n`` a power
of two; other head counts interleave the next power of two, as the reference code does).

RoPE (Su et al. 2021) in the "rotate half" layout of GPT-NeoX / transformers / ModernBERT:
feature ``i`` and feature ``i + d/2`` of a head form one complex number that is rotated by
``pos * theta^(-2i/d)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


# ----------------------------------------------------------------------------- ALiBi


def alibi_slopes(num_heads: int) -> np.ndarray:
    """Per-head ALiBi slopes ``[num_heads]`` (float32), as in Press et al. / MosaicBERT."""
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]

    if math.log2(num_heads).is_integer():
        slopes = power_of_two(num_heads)
    else:
        closest = 2 ** math.floor(math.log2(num_heads))
        slopes = power_of_two(closest) + list(alibi_slopes(2 * closest))[0::2][: num_heads - closest]
    return np.asarray(slopes, np.float32)


def relative_distance(q_positions: jax.Array, k_positions: jax.Array | None = None) -> jax.Array:
    """``|pos_q - pos_k|`` as float32 ``[b, 1, q, k]`` from position ids ``[b, q]`` / ``[b, k]``."""
    if k_positions is None:
        k_positions = q_positions
    d = q_positions[:, :, None].astype(jnp.int32) - k_positions[:, None, :].astype(jnp.int32)
    return jnp.abs(d).astype(jnp.float32)[:, None]


def alibi_bias(slopes: jax.Array, distance: jax.Array) -> jax.Array:
    """``-slope_h * distance``: ``[h]`` x ``[b, 1, q, k]`` -> float32 ``[b, h, q, k]``."""
    return -jnp.asarray(slopes, jnp.float32)[None, :, None, None] * distance


def window_mask(distance: jax.Array, half_window: int) -> jax.Array:
    """Bidirectional sliding window: True where ``|pos_q - pos_k| <= half_window``. ``[b,1,q,k]`` bool.

    ModernBERT's ``local_attention=128`` is ``half_window=64`` (inclusive), as in transformers'
    ``sliding_window_bidirectional_overlay`` and the original ``distance <= 64`` mask.
    """
    return distance <= half_window


# ----------------------------------------------------------------------------- RoPE


def rope_frequencies(head_dim: int, theta: float) -> np.ndarray:
    """Inverse frequencies ``theta^(-2i/d)``, ``i < d/2`` -> float32 ``[d/2]``."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got head_dim={head_dim}")
    return (1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))).astype(np.float32)


def rope_angles(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """``cos, sin`` of ``pos * inv_freq``: positions ``[b, l]`` -> two float32 ``[b, l, d/2]``."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_frequencies(head_dim, theta))
    return jnp.cos(freqs), jnp.sin(freqs)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate ``x [b, l, h, d]`` by angles ``cos/sin [b, l, d/2]`` (rotate-half layout).

    Computed in float32 and cast back to ``x.dtype`` (transformers does the same).
    """
    dtype = x.dtype
    x = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(dtype)
