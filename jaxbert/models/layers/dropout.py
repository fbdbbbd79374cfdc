"""Dropout whose keep-mask comes from a counter-based integer hash instead of threefry.

Why: on XLA:CPU, ``jax.random.bernoulli`` (threefry) costs ~10 ns per element; a MiniLM train
step at batch 32 x 128 draws ~58M dropout decisions (attention probabilities dominate), about a
quarter of the whole step. Here the layer's key is turned into two 32-bit seeds (one tiny
threefry call) and every element's decision is a hash of its flat index under those seeds:
two rounds of the ``lowbias32`` integer mixer (C. Wellons' hash-prospector), a few integer
multiplies and shifts that XLA fuses into the consumer. The result is a deterministic function
of (key, shape), independent of how the array is sharded, and its keep rate is ``1 - rate`` to
within 2^-32. It is a statistical-quality hash, not a cryptographic generator: fine for dropout,
not for anything that must be unpredictable.

``impl="threefry"`` keeps ``jax.random.bernoulli`` for comparison.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import flax.linen as nn

DROPOUT_IMPLS = ("hash", "threefry")


def _mix32(x: jax.Array) -> jax.Array:
    """lowbias32: a bijective 32-bit integer mixer with low avalanche bias."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def keep_mask(rng: jax.Array, shape: tuple[int, ...], rate: float, impl: str = "hash") -> jax.Array:
    """Boolean ``shape`` array, True with probability ``1 - rate`` (True = keep the element)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    if impl == "threefry":
        return jax.random.bernoulli(rng, 1.0 - rate, shape)
    if impl != "hash":
        raise ValueError(f"unknown dropout impl {impl!r}; known: {DROPOUT_IMPLS}")
    n = math.prod(shape)
    if n >= 2 ** 32:
        raise ValueError(f"hash dropout indexes elements with uint32; shape {shape} has {n} >= 2^32 elements "
                         "(use impl='threefry')")
    seeds = jax.random.bits(rng, (2,), jnp.uint32)
    index = jax.lax.iota(jnp.uint32, n).reshape(shape) if shape else jnp.uint32(0)
    bits = _mix32(_mix32(index ^ seeds[0]) + seeds[1])
    threshold = min(round((1.0 - rate) * 2.0 ** 32), 2 ** 32 - 1)
    return bits < jnp.uint32(threshold)


def dropout(x: jax.Array, rate: float, rng: jax.Array, impl: str = "hash") -> jax.Array:
    """Inverted dropout of ``x`` (kept elements scaled by ``1 / (1 - rate)``)."""
    if rate == 0.0:
        return x
    keep = keep_mask(rng, x.shape, rate, impl)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


class Dropout(nn.Module):
    """Drop-in for ``flax.linen.Dropout`` (same ``'dropout'`` RNG stream, same call signature)."""

    rate: float
    impl: str = "hash"
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        return dropout(x, self.rate, self.make_rng(self.rng_collection), self.impl)
