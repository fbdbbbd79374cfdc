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
