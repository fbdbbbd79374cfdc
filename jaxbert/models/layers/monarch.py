"""Monarch matrices: block-diagonal linear layers and the full Monarch product (Dao et al. 2022; Fu et al. 2023).

Conventions (row vectors, ``y = x @ W`` as everywhere in jaxbert; kernels are ``[in, out]``):

* A **block-diagonal** kernel is stored as ``w [k, p, q]``: ``k`` blocks, each mapping ``p``
  inputs to ``q`` outputs. The dense matrix it stands for is ``blockdiag(w[0], ..., w[k-1])``
  of shape ``[k p, k q]``; ``x [..., k p] -> [..., k q]`` costs ``k p q`` multiply-adds instead
  of ``k^2 p q``.
* The **Monarch** product of two block-diagonal factors ``w1 [k1, p1, q1]`` and ``w2 [k2, p2, q2]``
  (``k1 q1 == k2 p2``) is the matrix ``M = B1 P1 B2 P2`` (applied to row vectors left to right):
  block-diagonal ``B1``, the reshape-transpose permutation ``P1`` ("``(r l) -> (l r)``" with
  ``l = k2``), block-diagonal ``B2``, then ``P2`` ("``(l s) -> (s l)``"). This is
  ``blockdiag_butterfly_multiply_reference(version=3)`` of HazyResearch/m2 written for row
  vectors; ``monarch_dense`` materialises ``M`` for tests and analysis.

Initialisation follows the reference (``StructuredLinear.reset_parameters``): each block is
``U(-1/sqrt(p), 1/sqrt(p))`` (PyTorch's ``kaiming_uniform_(a=sqrt(5))`` of the dense matrix,
rescaled by ``sqrt(k)`` because only ``1/k`` of it is non-zero, i.e. a dense init with fan-in =
the block's input size), and the bias is ``U(-1/sqrt(n_out), 1/sqrt(n_out))``. Feature sizes
that ``k`` does not divide are zero-padded up to a multiple of ``k`` on the way in and cropped
on the way out, as the reference does.

Logical axis names: the block axis is replicated (``None``); the within-block input / output
axes take the names given by ``kernel_axes`` (default ``("embed", "mlp")``), so a block-diagonal
layer shards like the dense layer it replaces.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
from einops import rearrange


def blockdiag_multiply(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x [..., k p] @ blockdiag(w) -> [..., k q]`` for ``w [k, p, q]``."""
    k, p, _ = w.shape
    if x.shape[-1] != k * p:
        raise ValueError(f"blockdiag_multiply: x has {x.shape[-1]} features, kernel {tuple(w.shape)} expects "
                         f"{k} x {p} = {k * p}")
    xb = rearrange(x, "... (k p) -> ... k p", k=k)
    y = jnp.einsum("...kp,kpq->...kq", xb, w.astype(x.dtype))
    return rearrange(y, "... k q -> ... (k q)")


def monarch_multiply(x: jax.Array, w1: jax.Array, w2: jax.Array) -> jax.Array:
    """``x @ M`` with ``M = B1 P1 B2 P2`` (see the module docstring). ``x [..., k1 p1] -> [..., k2 q2]``."""
    k1, _, q1 = w1.shape
    k2, p2, _ = w2.shape
    if k1 * q1 != k2 * p2:
        raise ValueError(f"monarch_multiply: first factor gives {k1} x {q1} = {k1 * q1} features but the second "
                         f"expects {k2} x {p2} = {k2 * p2}")
    h = blockdiag_multiply(x, w1)
    h = rearrange(h, "... (r l) -> ... (l r)", l=k2)  # P1
    h = blockdiag_multiply(h, w2)
    return rearrange(h, "... (l s) -> ... (s l)", l=k2)  # P2


def blockdiag_dense(w: jax.Array) -> jax.Array:
    """The dense ``[k p, k q]`` matrix of a block-diagonal kernel ``w [k, p, q]``."""
    return jax.scipy.linalg.block_diag(*[w[i] for i in range(w.shape[0])])


def monarch_dense(w1: jax.Array, w2: jax.Array) -> jax.Array:
    """The dense matrix ``M`` with ``monarch_multiply(x, w1, w2) == x @ M``."""
    n = w1.shape[0] * w1.shape[1]
    return monarch_multiply(jnp.eye(n, dtype=w1.dtype), w1, w2)


def blocks_for(features: int, nblocks: int) -> tuple[int, int]:
    """``(block_size, padded_features)`` for ``features`` split into ``nblocks`` blocks (ceil, as the reference)."""
    size = int(math.ceil(features / nblocks))
    return size, size * nblocks


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def _pad_features(x: jax.Array, n: int) -> jax.Array:
    if x.shape[-1] == n:
        return x
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])])


class BlockdiagLinear(nn.Module):
    """``y = x @ blockdiag(kernel) + bias`` with ``kernel [nblocks, in/nblocks, out/nblocks]``.

    ``features`` is the output size; the input size is read from ``x``. Parameter ``kernel``
    has logical axes ``(None, *kernel_axes)``; ``bias [features]`` has ``kernel_axes[1]``.
    """

    features: int
    nblocks: int = 4
    use_bias: bool = True
    kernel_axes: Sequence[str | None] = ("embed", "mlp")
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = x.shape[-1]
        p, n_in_ext = blocks_for(n_in, self.nblocks)
        q, n_out_ext = blocks_for(self.features, self.nblocks)
        kernel = self.param("kernel", nn.with_logical_partitioning(_uniform(1.0 / math.sqrt(p)),
                                                                   (None, *self.kernel_axes)),
                            (self.nblocks, p, q), self.param_dtype)
        x = _pad_features(x.astype(self.dtype), n_in_ext)
        y = blockdiag_multiply(x, kernel.astype(self.dtype))[..., :self.features]
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(_uniform(1.0 / math.sqrt(self.features)),
                                                                   (self.kernel_axes[1],)),
                              (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class MonarchLinear(nn.Module):
    """``y = x @ M + bias`` with ``M = B1 P1 B2 P2`` a Monarch matrix of ``nblocks`` x ``nblocks`` blocks.

    Parameters ``w1 [nblocks, in/nblocks, out/nblocks]`` and ``w2 [nblocks, out/nblocks, out/nblocks]``
    (``n_in n_out / nblocks + n_out^2 / nblocks`` weights instead of ``n_in n_out``; with
    ``nblocks = sqrt(n)`` this is ``O(n^1.5)``). Each factor is initialised like a dense layer of
    the factor's block fan-in (the fly / m2 ``MonarchLinear`` init).
    """

    features: int
    nblocks: int = 4
    use_bias: bool = True
    kernel_axes: Sequence[str | None] = ("embed", "mlp")
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.nblocks
        p, n_in_ext = blocks_for(x.shape[-1], k)
        q, n_out_ext = blocks_for(self.features, k)
        w1 = self.param("w1", nn.with_logical_partitioning(_uniform(1.0 / math.sqrt(p)), (None, self.kernel_axes[0], None)),
                        (k, p, q), self.param_dtype)
        w2 = self.param("w2", nn.with_logical_partitioning(_uniform(1.0 / math.sqrt(q)), (None, None, self.kernel_axes[1])),
                        (k, q, q), self.param_dtype)
        x = _pad_features(x.astype(self.dtype), n_in_ext)
        y = monarch_multiply(x, w1.astype(self.dtype), w2.astype(self.dtype))[..., :self.features]
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(_uniform(1.0 / math.sqrt(self.features)),
                                                                   (self.kernel_axes[1],)),
                              (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


def permutation_matrix(perm: Sequence[int]) -> np.ndarray:
    """The 0/1 matrix ``P`` with ``(x @ P)[..., j] = x[..., perm[j]]``."""
    n = len(perm)
    out = np.zeros((n, n), np.float32)
    out[np.asarray(perm), np.arange(n)] = 1.0
    return out
