"""Normalisation layers with logical axis names on their parameters."""

from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from jaxbert.models.layers.initializers import ones_init, zeros_init


def layer_norm(eps: float, dtype, param_dtype, name: str, use_bias: bool = True) -> nn.LayerNorm:
    """A LayerNorm whose scale/bias carry the ``embed`` logical axis.

    Statistics are computed in float32 even for bfloat16 inputs (flax upcasts internally);
    ``dtype`` is the output dtype.
    """
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias,
                        scale_init=nn.with_logical_partitioning(ones_init, ("embed",)),
                        bias_init=nn.with_logical_partitioning(zeros_init, ("embed",)),
                        name=name)


NORM_TYPES = ("layernorm", "rmsnorm")


def make_norm(kind: str, eps: float, dtype, param_dtype, name: str, use_bias: bool = True,
              low_precision: bool = False) -> nn.Module:
    """LayerNorm (with or without bias) or RMSNorm, parameters on the ``embed`` logical axis.

    ``low_precision=False`` (default) computes the statistics in float32 whatever the input
    dtype; ``low_precision=True`` keeps them in the compute ``dtype`` (a bf16 LayerNorm: less
    memory traffic, looser numerics; what "low-precision LayerNorm" means in MosaicBERT recipes).
    ``use_bias`` is ignored by RMSNorm, which has none.
    """
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
