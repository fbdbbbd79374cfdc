"""Position-wise feed-forward blocks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxbert.models.layers.activations import get_activation
from jaxbert.models.layers.dense_matmul import dense_dot_general
from jaxbert.models.layers.dropout import Dropout
from jaxbert.models.layers.initializers import dense_init, zeros_init
from jaxbert.models.layers.linear import DenseND, DotGeneral


class Mlp(nn.Module):
    """``embed -> mlp -> act -> embed`` with kernels ``wi [embed, mlp]`` and ``wo [mlp, embed]``.

    ``dot_general`` is both matmuls' contraction (:mod:`jaxbert.models.layers.linear`).
    """

    intermediate_size: int
    activation: str = "gelu"
    use_bias: bool = True
    initializer_range: float = 0.02
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    dot_general: DotGeneral = dense_dot_general

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [b, l, embed] -> [b, l, embed]``."""
        h = nn.Dense(self.intermediate_size, use_bias=self.use_bias,
                     kernel_init=nn.with_logical_partitioning(dense_init(self.initializer_range), ("embed", "mlp")),
                     bias_init=nn.with_logical_partitioning(zeros_init, ("mlp",)),
                     dtype=self.dtype, param_dtype=self.param_dtype, dot_general=self.dot_general, name="wi")(x)
        h = get_activation(self.activation)(h)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        return nn.Dense(x.shape[-1], use_bias=self.use_bias,
                        kernel_init=nn.with_logical_partitioning(dense_init(self.initializer_range), ("mlp", "embed")),
                        bias_init=nn.with_logical_partitioning(zeros_init, ("embed",)),
                        dtype=self.dtype, param_dtype=self.param_dtype, dot_general=self.dot_general, name="wo")(h)


class GluMlp(nn.Module):
    """Gated MLP (GeGLU / SwiGLU / ...): ``wo(act(x W_in) * (x W_gate))``.

    One input kernel ``wi [embed, 2, mlp]`` (logical axes ``embed, None, mlp``) computes both
    halves in one matmul: ``wi[:, 0]`` is the activated half and ``wi[:, 1]`` the linear gate,
    the order of ModernBERT's ``Wi`` (``input, gate = Wi(x).chunk(2)``) and MosaicBERT's
    ``gated_layers``. ``activation="gelu"`` gives GeGLU, ``"silu"`` SwiGLU.
    """

    intermediate_size: int
    activation: str = "gelu"
    in_bias: bool = False
    out_bias: bool = False
    initializer_range: float = 0.02
    out_initializer_range: float | None = None
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    dot_general: DotGeneral = dense_dot_general

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        """``x [..., embed] -> [..., embed]``."""
        h = DenseND(features=(2, self.intermediate_size), kernel_axes=("embed", None, "mlp"),
                    bias_axes=(None, "mlp"), use_bias=self.in_bias, initializer_range=self.initializer_range,
                    dtype=self.dtype, param_dtype=self.param_dtype, dot_general=self.dot_general, name="wi")(x)
        h = get_activation(self.activation)(h[..., 0, :]) * h[..., 1, :]
        h = Dropout(self.dropout_rate)(h, deterministic=deterministic)
        out_range = self.initializer_range if self.out_initializer_range is None else self.out_initializer_range
        return DenseND(features=(x.shape[-1],), kernel_axes=("mlp", "embed"), bias_axes=("embed",),
                       use_bias=self.out_bias, initializer_range=out_range,
                       dtype=self.dtype, param_dtype=self.param_dtype, dot_general=self.dot_general,
                       name="wo")(h)
