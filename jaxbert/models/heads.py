"""Task heads that sit on top of any encoder's ``[b, l, embed]`` output.

Each head is a small Linen module; the task wrappers in :mod:`jaxbert.models.task_models` combine a
backbone with one of them. Parameter names (kernel ``[in, out]``) are what the checkpoint
converters map to and from Hugging Face names.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxbert.models.layers.activations import get_activation
from jaxbert.models.layers.dropout import Dropout
from jaxbert.models.layers.initializers import dense_init, zeros_init
from jaxbert.models.layers.norms import layer_norm


def _dense(features: int, axes: tuple[str | None, str | None], init_range: float, dtype, param_dtype, name: str):
    return nn.Dense(features, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=nn.with_logical_partitioning(dense_init(init_range), axes),
                    bias_init=nn.with_logical_partitioning(zeros_init, (axes[1],)), name=name)


class MaskedLMHead(nn.Module):
    """BERT MLM head: dense -> act -> LayerNorm -> tied decoder (``embedding_table.T``) + own bias.

    ``hidden [..., embed]``, ``embedding_table [vocab, embed]`` -> logits ``[..., vocab]`` (float32).
    """

    hidden_size: int
    vocab_size: int
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    # ModernBERT's head: no dense bias, LayerNorm without bias (``classifier_bias`` / ``norm_bias``).
    use_bias: bool = True
    norm_bias: bool = True
    decoder_bias: bool = True

    @nn.compact
    def __call__(self, hidden: jax.Array, embedding_table: jax.Array) -> jax.Array:
        h = nn.Dense(self.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.use_bias,
                     kernel_init=nn.with_logical_partitioning(dense_init(self.initializer_range), ("embed", "embed_out")),
                     bias_init=nn.with_logical_partitioning(zeros_init, ("embed_out",)), name="transform")(hidden)
        h = get_activation(self.activation)(h)
        h = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, "transform_norm", use_bias=self.norm_bias)(h)
        logits = jnp.einsum("...e,ve->...v", h, embedding_table.astype(self.dtype),
                            preferred_element_type=jnp.float32)
        if not self.decoder_bias:
            return logits
        bias = self.param("bias", nn.with_logical_partitioning(zeros_init, ("vocab",)),
                          (self.vocab_size,), self.param_dtype)
        return logits + bias.astype(jnp.float32)


class ClassificationHead(nn.Module):
    """[dense ``pre`` -> ``pre_activation``] -> dropout -> dense to ``num_labels``.
    ``[..., embed] -> [..., num_labels]`` (float32).

    Used for sequence classification / regression (on the pooled vector) and for token
    classification (on every position). ``pre_activation`` (e.g. ``"relu"``: DistilBERT's
    ``pre_classifier``) adds a square dense layer ``pre`` and that activation first; None: none.
    """

    num_labels: int
    dropout_rate: float = 0.1
    initializer_range: float = 0.02
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    pre_activation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        if self.pre_activation is not None:
            x = get_activation(self.pre_activation)(
                _dense(x.shape[-1], ("embed", "embed_out"), self.initializer_range, self.dtype, self.param_dtype,
                       "pre")(x))
        x = Dropout(self.dropout_rate)(x, deterministic=deterministic)
        out = _dense(self.num_labels, ("embed", "classes"), self.initializer_range, self.dtype,
                     self.param_dtype, "out")(x)
        return out.astype(jnp.float32)


class SpanHead(nn.Module):
    """Extractive QA: dense to 2 -> (start_logits, end_logits), each ``[b, l]`` (float32)."""

    initializer_range: float = 0.02
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = _dense(2, ("embed", "classes"), self.initializer_range, self.dtype,
                        self.param_dtype, "out")(hidden).astype(jnp.float32)
        return logits[..., 0], logits[..., 1]
