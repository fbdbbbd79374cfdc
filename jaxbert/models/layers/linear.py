"""A dense layer over several input/output axes whose kernel is created directly in its final shape.

``flax.linen.DenseGeneral`` initialises a flattened 2-D kernel and reshapes it, which clashes
with 3-D logical axis names when a mesh and rules are active; this layer avoids that and is
the single place where a quantized or binarized dense variant can later be swapped in.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxbert.models.layers.dense_matmul import dense_matmul
from jaxbert.models.layers.initializers import dense_init, zeros_init


class DenseND(nn.Module):
    """``y = x · W + b`` contracting the last ``contract_dims`` axes of ``x`` with the first of ``W``.

    ``x [..., *in_dims]``, ``W [*in_dims, *features]``, ``b [*features]`` -> ``[..., *features]``.
    ``kernel_axes`` / ``bias_axes`` are the logical names of ``W`` / ``b``.
    """

    features: Sequence[int]
    kernel_axes: Sequence[str | None]
    bias_axes: Sequence[str | None]
    contract_dims: int = 1
    use_bias: bool = True
    initializer_range: float = 0.02
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = tuple(self.features)
        in_dims = x.shape[x.ndim - self.contract_dims:]
        kernel = self.param("kernel", nn.with_logical_partitioning(dense_init(self.initializer_range), self.kernel_axes),
                            tuple(in_dims) + features, self.param_dtype)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        y = dense_matmul(x, kernel, self.contract_dims)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(zeros_init, self.bias_axes), features,
                              self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y
