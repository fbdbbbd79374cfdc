"""Position-wise feed-forward blocks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxbert.models.layers.activations import get_activation
from jaxbert.models.layers.initializers import dense_init, zeros_init


class Mlp(nn.Module):
    """``embed -> mlp -> act -> embed`` with kernels ``wi [embed, mlp]`` and ``wo [mlp, embed]``."""

    intermediate_size: int
    activation: str = "gelu"
    use_bias: bool = True
    initializer_range: float = 0.02
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [b, l, embed] -> [b, l, embed]``."""
        h = nn.Dense(self.intermediate_size, use_bias=self.use_bias,
                     kernel_init=nn.with_logical_partitioning(dense_init(self.initializer_range), ("embed", "mlp")),
                     bias_init=nn.with_logical_partitioning(zeros_init, ("mlp",)),
                     dtype=self.dtype, param_dtype=self.param_dtype, name="wi")(x)
        h = get_activation(self.activation)(h)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        return nn.Dense(x.shape[-1], use_bias=self.use_bias,
                        kernel_init=nn.with_logical_partitioning(dense_init(self.initializer_range), ("mlp", "embed")),
                        bias_init=nn.with_logical_partitioning(zeros_init, ("embed",)),
                        dtype=self.dtype, param_dtype=self.param_dtype, name="wo")(h)
