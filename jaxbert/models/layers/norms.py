"""Normalisation layers with logical axis names on their parameters."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxbert.models.layers.initializers import ones_init, zeros_init


def layer_norm(eps: float, dtype, param_dtype, name: str, use_bias: bool = True) -> nn.Module:
    """A LayerNorm whose scale/bias carry the ``embed`` logical axis.

    Statistics are computed in float32 even for bfloat16 inputs;
    ``dtype`` is the output dtype.
    """
    return LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias, name=name)


def _row_mean(x: jax.Array) -> jax.Array:
    """Mean over the last axis as a matrix-vector product: ``[..., d] -> [..., 1]``.

    XLA:CPU runs a row reduction over a few hundred features several times slower than a
    GEMV into a ``[d, 1]`` vector of ``1/d`` (which it hands to its matmul library).
    """
    d = x.shape[-1]
    return jnp.dot(x, jnp.full((d, 1), 1.0 / d, x.dtype), precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm_f32(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis, all float32."""
    return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
    centered = x - _row_mean(x)
    inv_std = jax.lax.rsqrt(_row_mean(centered * centered) + eps)
    normed = centered * inv_std
    return normed * scale + bias, (normed, inv_std, scale)


def _layer_norm_bwd(eps, residuals, g):
    # d/dx of LayerNorm: inv_std * (gs - mean(gs) - xhat * mean(gs * xhat)), gs = g * scale.
    del eps
    normed, inv_std, scale = residuals
    gs = g * scale
    dx = inv_std * (gs - _row_mean(gs) - normed * _row_mean(gs * normed))
    lead = tuple(range(g.ndim - 1))
    return dx, jnp.sum(g * normed, axis=lead), jnp.sum(g, axis=lead)


_layer_norm_f32.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with float32 statistics and a hand-written backward pass.

    Same parameters (``scale``, optional ``bias``, both on the ``embed`` logical axis) and the
    same function as ``flax.linen.LayerNorm(force_float32_reductions=True)``, with the variance
    taken around the mean (not ``E[x^2] - E[x]^2``). The custom VJP keeps one normalised copy of
    the input instead of autodiff's chain of broadcasts; forward + backward of a ``[32, 128, 384]``
    MiniLM LayerNorm on CPU drops from ~9.6 to ~7.3 ms. ``x [..., d] -> [..., d]`` in ``dtype``.
    """

    epsilon: float = 1e-12
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(ones_init, ("embed",)), (d,), self.param_dtype)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(zeros_init, ("embed",)), (d,), self.param_dtype)
        else:
            bias = jnp.zeros((d,), jnp.float32)
        out_dtype = self.dtype if self.dtype is not None else x.dtype
        y = _layer_norm_f32(x.astype(jnp.float32), scale.astype(jnp.float32), bias.astype(jnp.float32),
                            float(self.epsilon))
        return y.astype(out_dtype)


NORM_TYPES = ("layernorm", "rmsnorm")


def make_norm(kind: str, eps: float, dtype, param_dtype, name: str, use_bias: bool = True,
              low_precision: bool = False) -> nn.Module:
    """LayerNorm (with or without bias) or RMSNorm, parameters on the ``embed`` logical axis.

    ``low_precision=False`` (default) computes the statistics in float32 whatever the input
    dtype; ``low_precision=True`` keeps them in the compute ``dtype`` (a bf16 LayerNorm: less
    memory traffic, looser numerics; what "low-precision LayerNorm" means in MosaicBERT recipes).
    ``use_bias`` is ignored by RMSNorm, which has none.
    """
    if kind == "layernorm" and not low_precision:
        return LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias, name=name)
    if kind == "layernorm":
        return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias,
                            force_float32_reductions=not low_precision,
                            scale_init=nn.with_logical_partitioning(ones_init, ("embed",)),
                            bias_init=nn.with_logical_partitioning(zeros_init, ("embed",)),
                            name=name)
    if kind == "rmsnorm":
        return nn.RMSNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                          force_float32_reductions=not low_precision,
                          scale_init=nn.with_logical_partitioning(ones_init, ("embed",)), name=name)
    raise ValueError(f"unknown norm type {kind!r}; known: {NORM_TYPES}")
