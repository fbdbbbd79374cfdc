"""The matmul of a dense layer, with a backward pass laid out for XLA:CPU.

``y = x · W`` contracts the last ``k`` axes of ``x [..., *in]`` with the first ``k`` of
``W [*in, *out]``. Its gradients are ``dx = g · Wᵀ`` and ``dW = xᵀ · g``, where ``g [..., *out]``
is the output gradient. Left to autodiff, XLA:CPU lowers ``dW`` with the token axis contracted
on both operands, which its GEMM kernels take only after a transposed copy of ``g``; the copy is
fused into (and so recomputed with) whatever produced ``g`` -- the LayerNorm backward, the GELU
backward or, behind attention, the head transposes -- and the head-major attention gradients
are transposed once more for the bias gradient. In a BERT-base train step these copies cost
about 8% of the step on a 2-core CPU.

Here the backward is written out: both operands are flattened to matrices ``x [T, K]``,
``g [T, N]`` (``T`` = all leading axes), ``dx = g · Wᵀ`` (``W`` used in its ``[N, K]``-contracting
form, no copy) and ``dW = (xᵀ) · g``. XLA folds the written transpose into the product, so
``dW`` becomes one GEMM contracting the token axis of both operands *in place*, which XLA:CPU
hands to Eigen with no copy of either operand: on the 2-core machine that form runs at
108-120 GFLOP/s at BERT-base shapes (4096 tokens, 768 x 768 / 768 x 3072 / 3072 x 768), the
copy-then-GEMM form autodiff produces at 62-80 GFLOP/s. ``g`` is never transposed. Values and
gradients are the same as autodiff's (the same products, summed in another order: float32
rounding only).

It is used on the CPU backend; elsewhere (GPU, TPU) the compilers fold transposes into their
GEMMs and plain ``lax.dot_general`` is kept. ``JAXBERT_DENSE_VJP=xla`` (or ``explicit``) forces
one or the other for A/B measurements; it is read when a function is traced, so a function
already jitted keeps the mode it was traced with (set it before the first step, or per process
as ``benchmarks/finetune_step.py --jax-variant "xla=JAXBERT_DENSE_VJP=xla"`` does).

Measured (``finetune_step.py --frameworks jaxbert --jax-variant explicit= --jax-variant
xla=JAXBERT_DENSE_VJP=xla``, 2 cores): MiniLM step 4.32 s vs 4.77 s, BERT-base 29.2 s vs 34.3 s.
"""

from __future__ import annotations

import math
import os
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

DENSE_VJP_MODES = ("auto", "explicit", "xla")


def _use_explicit_vjp() -> bool:
    mode = os.environ.get("JAXBERT_DENSE_VJP", "auto")
    if mode not in DENSE_VJP_MODES:
        raise ValueError(f"JAXBERT_DENSE_VJP={mode!r}; known: {DENSE_VJP_MODES}")
    if mode == "auto":
        return jax.default_backend() == "cpu"
    return mode == "explicit"


def _contract(x: jax.Array, w: jax.Array, k: int) -> jax.Array:
    return lax.dot_general(x, w, ((tuple(range(x.ndim - k, x.ndim)), tuple(range(k))), ((), ())))


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _explicit_vjp_matmul(x: jax.Array, w: jax.Array, k: int) -> jax.Array:
    return _contract(x, w, k)


def _explicit_fwd(x, w, k):
    return _contract(x, w, k), (x, w)


def _explicit_bwd(k, res, g):
    x, w = res
    tokens = math.prod(x.shape[: x.ndim - k])
    n_in, n_out = math.prod(w.shape[:k]), math.prod(w.shape[k:])
    x2, g2, w2 = x.reshape(tokens, n_in), g.reshape(tokens, n_out), w.reshape(n_in, n_out)
    dx = lax.dot_general(g2, w2, (((1,), (1,)), ((), ())))                 # [T, N] . [K, N]^T
    dw = lax.dot_general(jnp.transpose(x2), g2, (((1,), (0,)), ((), ())))  # [K, T] . [T, N]
    return dx.reshape(x.shape).astype(x.dtype), dw.reshape(w.shape).astype(w.dtype)


_explicit_vjp_matmul.defvjp(_explicit_fwd, _explicit_bwd)


def dense_matmul(x: jax.Array, w: jax.Array, contract_dims: int = 1) -> jax.Array:
    """``x [..., *in] · W [*in, *out] -> [..., *out]`` over the last ``contract_dims`` axes of ``x``."""
    if x.shape[x.ndim - contract_dims:] != w.shape[:contract_dims]:
        raise ValueError(f"dense_matmul: x {x.shape} and W {w.shape} disagree on the {contract_dims} "
                         "contracted axes")
    if _use_explicit_vjp():
        return _explicit_vjp_matmul(x, w, contract_dims)
    return _contract(x, w, contract_dims)


def dense_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                      preferred_element_type=None, **kwargs) -> jax.Array:
    """``lax.dot_general``'s signature, for ``flax.linen.Dense(dot_general=...)``.

    A dense contraction (last axes of ``lhs`` with the leading axes of ``rhs``, no batch axes,
    default precision) goes through :func:`dense_matmul`; anything else to ``lax.dot_general``.
    """
    (lc, rc), (lb, rb) = dimension_numbers
    k = len(rc)
    dense = (not lb and not rb and tuple(rc) == tuple(range(k))
             and tuple(lc) == tuple(range(lhs.ndim - k, lhs.ndim)))
    if dense and precision is None and preferred_element_type is None and not kwargs:
        return dense_matmul(lhs, rhs, k)
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type, **kwargs)
