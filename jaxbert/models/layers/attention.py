"""Multi-head attention with masks composed from padding / segment ids / causality.

Shapes: ``b`` batch, ``q``/``k`` query and key length, ``h`` heads, ``d`` head dim.
All masks are boolean ``[b, 1|h, q, k]`` with True = may attend.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxbert.models.layers.dense_matmul import dense_dot_general
from jaxbert.models.layers.dropout import keep_mask
from jaxbert.models.layers.linear import DenseND, DotGeneral
from jaxbert.models.layers.positions import apply_rope

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


def prepend_kv_prefix(kv_prefix: tuple[jax.Array, jax.Array], k: jax.Array, v: jax.Array,
                      mask: jax.Array | None = None, bias: jax.Array | None = None):
    """Put the prefix keys/values ``(pk, pv)`` ``[b, p, heads, kv]`` before ``k``, ``v`` ``[b, l, heads, kv]``.

    The seam prefix tuning uses: every query may attend to the ``p`` prefix positions, so
    ``mask [b, h, q, l]`` gains ``p`` True columns and ``bias`` ``p`` zero columns in front (both
    may be None). Returns ``(k, v, mask, bias)`` with key length ``p + l``.
    """
    pk, pv = kv_prefix
    p = pk.shape[1]
    k = jnp.concatenate([pk.astype(k.dtype), k], axis=1)
    v = jnp.concatenate([pv.astype(v.dtype), v], axis=1)
    if mask is not None:
        mask = jnp.concatenate([jnp.ones(mask.shape[:-1] + (p,), bool), mask], axis=-1)
    if bias is not None:
        bias = jnp.concatenate([jnp.zeros(bias.shape[:-1] + (p,), bias.dtype), bias], axis=-1)
    return k, v, mask, bias


def select_queries(t: jax.Array, query_index: jax.Array | None, axis: int = 1,
                   first_token_only: bool = False) -> jax.Array:
    """The kept query rows of ``t`` along ``axis``: ``query_index [b, k]`` (int) -> ``k`` rows per batch row.

    ``first_token_only`` is the ``k = 1``, index-0 case as a static slice (no gather). An axis of
    size 1 (a mask or bias shared by every query) is returned as is. Neither given: ``t`` unchanged.
    """
    if t is None or t.shape[axis] == 1 or (query_index is None and not first_token_only):
        return t
    if first_token_only:
        return jax.lax.slice_in_dim(t, 0, 1, axis=axis)
    if query_index.ndim != 2 or query_index.shape[0] not in (1, t.shape[0]):
        raise ValueError(f"query_index must be [batch, kept] ints, got shape {query_index.shape} for "
                         f"an array of shape {t.shape}")
    index = query_index.astype(jnp.int32).reshape(
        (query_index.shape[0],) + (1,) * (axis - 1) + (query_index.shape[1],) + (1,) * (t.ndim - axis - 1))
    return jnp.take_along_axis(t, index, axis=axis)


class MultiHeadAttention(nn.Module):
    """Self-attention (attention kind ``"standard"``): q/k/v projections, RoPE, bias, masks, output.

    Kernels are shaped ``[embed, heads, kv]`` (``qkv_layout="separate"``: ``query``/``key``/``value``)
    or ``[embed, 3, heads, kv]`` (``"fused"``: one ``qkv`` kernel, one matmul); ``out`` is
    ``[heads, kv, embed]``. The per-head layout lets a ``tensor`` mesh axis shard heads without
    reshapes. ``dot_general`` is every projection's contraction
    (:mod:`jaxbert.models.layers.linear`).
    """

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    use_bias: bool = True
    initializer_range: float = 0.02
    implementation: str = "xla"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    qkv_layout: str = "separate"
    dot_general: DotGeneral = dense_dot_general

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None, bias: jax.Array | None = None,
                 deterministic: bool = True, kv_prefix: tuple[jax.Array, jax.Array] | None = None,
                 queries: jax.Array | None = None, rope: tuple[jax.Array, jax.Array] | None = None,
                 query_rope: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        """``x [b, l, embed]``, ``mask [b, 1|h, q, l]`` bool, ``bias [b, 1|h, q, l]`` -> ``[b, q, embed]``.

        ``kv_prefix`` = ``(k, v)`` each ``[b, p, heads, kv]`` is prepended to the keys/values
        (every query may attend to it), the seam prefix tuning uses.
        ``queries [b, q, embed]`` (default ``x``, ``q = l``): the states the queries are projected
        from, e.g. the kept positions of ``x`` when only those outputs are needed; keys and values
        still come from all of ``x``, and ``mask``/``bias`` must have ``q`` (or 1) rows.
        ``rope = (cos, sin)`` ``[b, l, kv/2]`` rotates keys (and queries); ``query_rope`` (default
        ``rope``) are the angles at the query positions.
        """
        h, d = self.num_heads, self.head_dim
        dense = lambda features, kaxes, baxes, name, contract=1: DenseND(
            features=features, kernel_axes=kaxes, bias_axes=baxes, contract_dims=contract, use_bias=self.use_bias,
            initializer_range=self.initializer_range, dtype=self.dtype, param_dtype=self.param_dtype,
            dot_general=self.dot_general, name=name)
        if self.qkv_layout == "fused":
            qkv = dense((3, h, d), ("embed", None, "heads", "kv"), (None, "heads", "kv"), "qkv")
            full = qkv(x)
            k, v = full[..., 1, :, :], full[..., 2, :, :]
            q = full[..., 0, :, :] if queries is None else qkv(queries)[..., 0, :, :]
        elif self.qkv_layout == "separate":
            q = dense((h, d), ("embed", "heads", "kv"), ("heads", "kv"), "query")(x if queries is None else queries)
            k = dense((h, d), ("embed", "heads", "kv"), ("heads", "kv"), "key")(x)
            v = dense((h, d), ("embed", "heads", "kv"), ("heads", "kv"), "value")(x)
        else:
            raise ValueError(f"qkv_layout={self.qkv_layout!r}; expected 'separate' or 'fused'")
        if rope is not None:
            qcos, qsin = rope if query_rope is None else query_rope
            q, k = apply_rope(q, qcos, qsin), apply_rope(k, *rope)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
        if kv_prefix is not None:
            k, v, mask, bias = prepend_kv_prefix(kv_prefix, k, v, mask, bias)
        dropout_rng = None
        if self.dropout_rate > 0.0 and not deterministic:
            dropout_rng = self.make_rng("dropout")
        out = dot_product_attention(q, k, v, mask=mask, bias=bias, dropout_rate=self.dropout_rate,
                                    dropout_rng=dropout_rng, deterministic=deterministic,
                                    implementation=self.implementation)
        return dense((x.shape[-1],), ("heads", "kv", "embed"), ("embed",), "out", contract=2)(out)


#: Attention kinds a block config may name (``config.attention_kind``). A kind is a Linen module
#: class taking :class:`MultiHeadAttention`'s attributes and call signature.
ATTENTION_KINDS: dict[str, type[nn.Module]] = {"standard": MultiHeadAttention}


def register_attention_kind(name: str, module: type[nn.Module], *, replace: bool = False) -> None:
    """Make ``module`` selectable as ``config.attention_kind = name``."""
    if name in ATTENTION_KINDS and not replace:
        raise ValueError(f"attention kind {name!r} is already registered (pass replace=True to override)")
    ATTENTION_KINDS[name] = module


def get_attention_kind(name: str) -> type[nn.Module]:
    """The attention module class registered as ``name``."""
    if name not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention kind {name!r}; registered: {sorted(ATTENTION_KINDS)} "
                         "(add one with jaxbert.models.layers.attention.register_attention_kind)")
    return ATTENTION_KINDS[name]
