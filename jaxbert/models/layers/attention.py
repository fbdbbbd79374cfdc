"""Multi-head attention with masks composed from padding / segment ids / causality.

Shapes: ``b`` batch, ``q``/``k`` query and key length, ``h`` heads, ``d`` head dim.
All masks are boolean ``[b, 1|h, q, k]`` with True = may attend.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxbert.models.layers.dropout import keep_mask
from jaxbert.models.layers.linear import DenseND

ATTENTION_IMPLEMENTATIONS = ("xla", "dot_product_attention", "cudnn")


def _cudnn_applies(query: jax.Array) -> bool:
    """cuDNN fused attention: GPU backend, fp16/bf16, head dim a multiple of 8 up to 128."""
    d = query.shape[-1]
    return (jax.default_backend() == "gpu" and query.dtype in (jnp.bfloat16, jnp.float16)
            and d % 8 == 0 and d <= 128)


def padding_mask(attention_mask: jax.Array) -> jax.Array:
    """``[b, k]`` 0/1 key mask -> boolean ``[b, 1, 1, k]``."""
    return attention_mask.astype(bool)[:, None, None, :]


def segment_mask(q_segment_ids: jax.Array, k_segment_ids: jax.Array | None = None) -> jax.Array:
    """Packed sequences: a token attends only to tokens of its own segment. ``[b,q],[b,k] -> [b,1,q,k]``.

    Segment id 0 marks padding and attends nowhere.
    """
    if k_segment_ids is None:
        k_segment_ids = q_segment_ids
    same = q_segment_ids[:, :, None] == k_segment_ids[:, None, :]
    valid = (k_segment_ids != 0)[:, None, :]
    return (same & valid)[:, None, :, :]


def causal_mask(q_len: int, k_len: int | None = None) -> jax.Array:
    """Lower-triangular ``[1, 1, q, k]`` mask (query i sees keys <= i, aligned at the end)."""
    k_len = q_len if k_len is None else k_len
    q_idx = jnp.arange(q_len)[:, None] + (k_len - q_len)
    return (jnp.arange(k_len)[None, :] <= q_idx)[None, None]


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
    """Logical AND of the given masks, ignoring ``None``; broadcasting as usual."""
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = jnp.logical_and(out, m)
    return out


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    deterministic: bool = True,
    implementation: str = "xla",
) -> jax.Array:
    """Scaled dot-product attention. ``q [b,q,h,d], k/v [b,k,h,d] -> [b,q,h,d]``.

    ``implementation="xla"`` is the reference: logits and softmax in float32, then cast back.
    ``implementation="dot_product_attention"`` calls ``jax.nn.dot_product_attention``, which
    uses cuDNN fused attention on GPU when the mask form allows; it has no attention dropout,
    so it is only used when dropout is off (it falls back to the reference otherwise), and not
    on the CPU backend, where the reference layout below is faster and numerically the same.
    ``implementation="cudnn"`` is the same call asking for cuDNN flash attention (the mask becomes
    a bias) where it applies (GPU, bf16/fp16, head dim <= 128 and a multiple of 8), and jax's XLA
    path elsewhere, so one config runs on CPU and GPU.
    Rows whose mask is all False (e.g. pad queries) produce a uniform average, never NaN.
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {implementation!r}; "
                         f"known: {ATTENTION_IMPLEMENTATIONS}")
    use_dropout = dropout_rate > 0.0 and not deterministic
    # On CPU, jax.nn.dot_product_attention lowers to the same math as the reference path below
    # but in the [b, q, h, d] einsum layout, which XLA:CPU runs several times slower; use ours.
    fused_backend = jax.default_backend() != "cpu"
    if implementation in ("dot_product_attention", "cudnn") and not use_dropout and fused_backend:
        impl = "cudnn" if implementation == "cudnn" and _cudnn_applies(query) else None
        if impl == "cudnn":  # cuDNN takes the mask as a bias with full [b, 1|h, q, k] extent
            full = (query.shape[0], 1, query.shape[1], key.shape[1])
            if mask is not None:
                mask = jnp.broadcast_to(mask, jnp.broadcast_shapes(mask.shape, full))
            if bias is not None:
                bias = jnp.broadcast_to(bias, jnp.broadcast_shapes(bias.shape, full)).astype(query.dtype)
        return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, implementation=impl)
    return _reference_attention(query, key, value, mask, bias, dropout_rate if use_dropout else 0.0,
                                dropout_rng)


def _reference_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None,
                         bias: jax.Array | None, dropout_rate: float, dropout_rng: jax.Array | None) -> jax.Array:
    """The XLA path. ``q [b,q,h,d], k/v [b,k,h,d] -> [b,q,h,d]``.

    Heads are moved in front of the sequence axes (``[b,h,l,d]``) so both matmuls are plain
    batched GEMMs (XLA:CPU runs the ``bqhd`` einsum layout several times slower); the query is
    scaled before the matmul (``[b,h,q,d]`` instead of ``[b,h,q,k]`` multiplies); logits and the
    softmax statistics are float32; the mask is added as a bias; normalisation by the softmax denominator is deferred to after
    the value matmul. Dropout on the unnormalised weights then dividing equals dropout on the
    normalised weights, so the result is the usual attention-dropout.
    """
    dtype = query.dtype
    scale = 1.0 / jnp.sqrt(jnp.float32(query.shape[-1]))
    q = jnp.swapaxes(query, 1, 2) * scale.astype(dtype)
    k = jnp.swapaxes(key, 1, 2)
    v = jnp.swapaxes(value, 1, 2)
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        # An additive bias built at the mask's (usually [b,1,1,k]) size: a broadcast add is ~3x
        # cheaper on CPU than a select over [b,h,q,k]. Half of float32's minimum cannot overflow
        # and still gives exp(.) == 0; an all-masked row becomes uniform, never NaN.
        logits = logits + jnp.where(mask, 0.0, 0.5 * jnp.finfo(jnp.float32).min)
    unnormalized = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
    denominator = jnp.sum(unnormalized, axis=-1, keepdims=True)
    weights = unnormalized.astype(dtype)
    if dropout_rate > 0.0:
        if dropout_rng is None:
            raise ValueError("attention dropout needs a dropout_rng")
        keep = keep_mask(dropout_rng, weights.shape, dropout_rate)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0).astype(dtype)
    out = jnp.einsum("bhqk,bhkd->bhqd", weights, v, preferred_element_type=jnp.float32) / denominator
    return jnp.swapaxes(out.astype(dtype), 1, 2)


class MultiHeadAttention(nn.Module):
    """Self-attention with separate q/k/v projections, kernels shaped ``[embed, heads, kv]``.

    The per-head kernel layout lets a ``tensor`` mesh axis shard heads without reshapes.
    """

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    use_bias: bool = True
    initializer_range: float = 0.02
    implementation: str = "xla"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None, bias: jax.Array | None = None,
                 deterministic: bool = True, kv_prefix: tuple[jax.Array, jax.Array] | None = None,
                 queries: jax.Array | None = None) -> jax.Array:
        """``x [b, l, embed]``, ``mask [b, 1|h, l, l]`` -> ``[b, l, embed]``.

        ``kv_prefix`` = ``(k, v)`` each ``[b, p, heads, kv]`` is prepended to the keys/values
        (every query may attend to it), the seam prefix tuning uses.
        ``queries [b, q, embed]`` (default ``x``): the states the queries are projected from,
        e.g. a subset of ``x``'s positions when only those outputs are needed; keys and values
        still come from all of ``x``. The output is then ``[b, q, embed]`` and ``mask``/``bias``
        must have ``q`` (or 1) rows.
        """
        proj = lambda name: DenseND(
            features=(self.num_heads, self.head_dim), kernel_axes=("embed", "heads", "kv"),
            bias_axes=("heads", "kv"), use_bias=self.use_bias, initializer_range=self.initializer_range,
            dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        q = proj("query")(x if queries is None else queries)
        k, v = proj("key")(x), proj("value")(x)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
        if kv_prefix is not None:
            pk, pv = kv_prefix
            k = jnp.concatenate([pk.astype(k.dtype), k], axis=1)
            v = jnp.concatenate([pv.astype(v.dtype), v], axis=1)
            if mask is not None:
                mask = jnp.concatenate([jnp.ones(mask.shape[:-1] + (pk.shape[1],), bool), mask], axis=-1)
            if bias is not None:
                bias = jnp.concatenate([jnp.zeros(bias.shape[:-1] + (pk.shape[1],), bias.dtype), bias], axis=-1)
        dropout_rng = None
        if self.dropout_rate > 0.0 and not deterministic:
            dropout_rng = self.make_rng("dropout")
        out = dot_product_attention(q, k, v, mask=mask, bias=bias, dropout_rate=self.dropout_rate,
                                    dropout_rng=dropout_rng, deterministic=deterministic,
                                    implementation=self.implementation)
        return DenseND(
            features=(x.shape[-1],), kernel_axes=("heads", "kv", "embed"), bias_axes=("embed",), contract_dims=2,
            use_bias=self.use_bias, initializer_range=self.initializer_range,
            dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)
