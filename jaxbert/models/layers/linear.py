"""A dense layer over several input/output axes, and the named registry of dense matmuls.

``flax.linen.DenseGeneral`` initialises a flattened 2-D kernel and reshapes it, which clashes
with 3-D logical axis names when a mesh and rules are active; :class:`DenseND` creates its
kernel directly in its final shape.

**The matmul seam.** Every dense layer of the encoder blocks (attention projections, MLP) takes
its contraction from a ``dot_general`` with ``jax.lax.dot_general``'s signature. A model config
names one (``config.dot_general``, ``"standard"`` by default) and the block resolves the name here
with :func:`get_dot_general`; a quantized or binarized matmul is one :func:`register_dot_general`
call and a config value, not a new block. ``"standard"`` is
:func:`jaxbert.models.layers.dense_matmul.dense_dot_general` (plain ``lax.dot_general`` with the
CPU-friendly backward pass).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxbert.models.layers.dense_matmul import dense_dot_general
from jaxbert.models.layers.initializers import dense_init, zeros_init

#: ``dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None) -> array``
DotGeneral = Callable[..., jax.Array]

DOT_GENERALS: dict[str, DotGeneral] = {"standard": dense_dot_general}


def register_dot_general(name: str, fn: DotGeneral, *, replace: bool = False) -> None:
    """Make ``fn`` (``lax.dot_general``'s signature) selectable as ``config.dot_general = name``."""
    if not callable(fn):
        raise TypeError(f"dot_general {name!r} must be callable, got {type(fn).__name__}")
    if name in DOT_GENERALS and not replace:
        raise ValueError(f"dot_general {name!r} is already registered (pass replace=True to override)")
    DOT_GENERALS[name] = fn


def get_dot_general(name: str) -> DotGeneral:
    """The matmul registered as ``name``; a clear error listing the known names otherwise."""
    if name not in DOT_GENERALS:
        raise ValueError(f"unknown dot_general {name!r}; registered: {sorted(DOT_GENERALS)} "
                         "(add one with jaxbert.models.layers.linear.register_dot_general)")
    return DOT_GENERALS[name]


class DenseND(nn.Module):
    """``y = x · W + b`` contracting the last ``contract_dims`` axes of ``x`` with the first of ``W``.

    ``x [..., *in_dims]``, ``W [*in_dims, *features]``, ``b [*features]`` -> ``[..., *features]``.
    ``kernel_axes`` / ``bias_axes`` are the logical names of ``W`` / ``b``; ``dot_general`` does the
    contraction (see the module docstring).
    """

    features: Sequence[int]
    kernel_axes: Sequence[str | None]
    bias_axes: Sequence[str | None]
    contract_dims: int = 1
    use_bias: bool = True
    initializer_range: float = 0.02
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    dot_general: DotGeneral = dense_dot_general

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = tuple(self.features)
        k = self.contract_dims
        in_dims = x.shape[x.ndim - k:]
        kernel = self.param("kernel", nn.with_logical_partitioning(dense_init(self.initializer_range), self.kernel_axes),
                            tuple(in_dims) + features, self.param_dtype)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        y = self.dot_general(x, kernel, ((tuple(range(x.ndim - k, x.ndim)), tuple(range(k))), ((), ())))
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(zeros_init, self.bias_axes), features,
                              self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y
