"""One configurable encoder block for the BERT family: BERT/MiniLM, MosaicBERT, ModernBERT and their ablations.

Every variant is the same :class:`EncoderBlock` in the same :class:`Encoder` (BERT's config is
:class:`jaxbert.models.bert.model.BertConfig`, this config with BERT's defaults); the config chooses

============================ ==========================================================================
norm position                ``"post"`` (BERT, MosaicBERT: ``x = N(x + f(x))``) or ``"pre"`` (ModernBERT:
                             ``x = x + f(N(x))``)
norm type                    ``"layernorm"`` (``norm_bias`` on/off) or ``"rmsnorm"``; ``low_precision_norm``
                             keeps statistics in the compute dtype (bf16 LayerNorm)
positions                    ``"absolute"`` (learned table), ``"alibi"`` (symmetric distance bias), ``"rope"``
                             (``rope_theta`` for global layers, ``local_rope_theta`` for sliding ones), ``"none"``
MLP                          ``"mlp"`` (``hidden_act``: GELU, ...) or ``"glu"`` (GeGLU with gelu, SwiGLU with silu)
biases                       ``attention_bias``, ``mlp_in_bias``, ``mlp_out_bias``, ``norm_bias``
embedding / final norm       ``embedding_norm``, ``final_norm``; ``first_layer_attention_norm=False`` drops
                             layer 0's pre-attention norm (ModernBERT: the embedding norm already did it)
attention pattern            ``"global"``, ``"sliding"`` (window ``local_attention``: a token sees
                             ``|i - j| <= local_attention // 2``), ``"alternating"`` (global every
                             ``global_attn_every_n_layers`` layers, from layer 0), or explicit ``layer_types``
q/k/v layout                 ``"separate"`` (``query/key/value`` kernels, BERT names) or ``"fused"``
                             (one ``qkv [embed, 3, heads, kv]`` kernel: one matmul, ModernBERT's ``Wqkv``)
execution                    ``unpad`` (gather real tokens into a packed stream, see
                             :mod:`jaxbert.models.layers.unpad`); ``attention_implementation``; ``dtype`` /
                             ``param_dtype``; ``remat``; ``first_token_shortcut`` ([CLS]-only last block)
seams                        ``attention_kind`` (a name in ``layers/attention.ATTENTION_KINDS``),
                             ``relative_positions`` (a name in ``layers/relative.RELATIVE_POSITION_KINDS``:
                             an encoder-level module whose output every layer's attention reads),
                             ``dot_general`` (a name in ``layers/linear.DOT_GENERALS``: the matmul of every
                             attention projection and MLP layer), ``extensions`` (``layers/extensions``)
============================ ==========================================================================

Kept tokens: ``Encoder(...)(..., query_index=[b, k])`` runs the last block for those positions only
(their queries see every token's keys/values) and returns ``[b, k, embed]``, the full output
gathered there; ``first_token_only`` is the ``k = 1``, index-0 case (see :class:`EncoderBlock`).

This module is family-neutral: the named flavours (config factories, presets, Hugging Face config
mappings) live in their family folders ``jaxbert/models/<family>/`` and are reached through
:mod:`jaxbert.models.registry`.

All masks (padding, segments, sliding windows) and the ALiBi bias are built once from position
ids and composed in :func:`jaxbert.models.layers.attention.dot_product_attention`.

Parameter tree (``L`` layers; a BERT config gives exactly the tree of the former ``BertModel``, so
its checkpoints load unchanged)::

    embeddings/word_embeddings/embedding         [vocab, embed]
    embeddings/position_embeddings/embedding     [max_position, embed]   (absolute positions)
    embeddings/token_type_embeddings/embedding   [type_vocab, embed]     (type_vocab_size > 0)
    embeddings/norm/{scale[,bias]}               [embed]                 (embedding_norm)
    layer_{i}/attention/{query,key,value}/kernel [embed, heads, kv]      (separate) [bias [heads, kv]]
    layer_{i}/attention/qkv/kernel               [embed, 3, heads, kv]   (fused)    [bias [3, heads, kv]]
    layer_{i}/attention/out/kernel               [heads, kv, embed]      [bias [embed]]
    layer_{i}/attention_norm/{scale[,bias]}      [embed]   (absent in layer 0 when first_layer_attention_norm=False)
    layer_{i}/mlp/wi/kernel [embed, mlp] (mlp) or [embed, 2, mlp] (glu); mlp/wo/kernel [mlp, embed]; biases
    layer_{i}/mlp_norm/{scale[,bias]}            [embed]
    final_norm/{scale[,bias]}                    [embed]                 (final_norm)
    pooler/dense/{kernel,bias}                   (add_pooling_layer)
    relative_positions/...                       (relative_positions: the kind's own parameters)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn
from flax import struct
from flax.core import meta

# DTYPES is re-exported (bert/model.py imports it from here)
from jaxbert.models.config_base import DTYPES, ConfigMixin, check_choice, check_execution_fields  # noqa: F401
from jaxbert.models.layers import extensions
from jaxbert.models.layers import positions as pos_lib
from jaxbert.models.layers import relative as relative_lib
from jaxbert.models.layers import unpad as unpad_lib
from jaxbert.models.layers.attention import (ATTENTION_KINDS, combine_masks, get_attention_kind, padding_mask,
                                             segment_mask, select_queries)
from jaxbert.models.layers.dropout import Dropout
from jaxbert.models.layers.initializers import dense_init, zeros_init
from jaxbert.models.layers.linear import get_dot_general
from jaxbert.models.layers.mlp import GluMlp, Mlp
from jaxbert.models.layers.norms import NORM_TYPES, make_norm
from jaxbert.models.layers.stack import block_stack

NORM_POSITIONS = ("post", "pre")
POSITION_TYPES = ("absolute", "alibi", "rope", "none")
MLP_TYPES = ("mlp", "glu")
ATTENTION_PATTERNS = ("global", "sliding", "alternating")
LAYER_TYPES = ("global", "sliding")
QKV_LAYOUTS = ("separate", "fused")


@dataclasses.dataclass(frozen=True)
class EncoderConfig(ConfigMixin):
    """Hyper-parameters of the configurable encoder (see the module docstring for the switches).

    Field names that BERT configs share (``hidden_size``, ``hidden_act``, ``layer_norm_eps``,
    dropout probabilities, ...) keep the ``transformers.BertConfig`` names, so task wrappers and
    the engine treat this config like :class:`~jaxbert.models.bert.BertConfig`.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2  # 0 = no token-type embeddings
    pad_token_id: int = 0
    initializer_range: float = 0.02
    # -- block
    norm_position: str = "post"
    norm_type: str = "layernorm"
    norm_bias: bool = True
    layer_norm_eps: float = 1e-12
    low_precision_norm: bool = False
    embedding_norm: bool = True
    final_norm: bool = False
    first_layer_attention_norm: bool = True
    position_embedding_type: str = "absolute"
    rope_theta: float = 10000.0
    local_rope_theta: float | None = None
    mlp_type: str = "mlp"
    hidden_act: str = "gelu"
    attention_bias: bool = True
    mlp_in_bias: bool = True
    mlp_out_bias: bool = True
    qkv_layout: str = "separate"
    attention_pattern: str = "global"
    local_attention: int = 128
    global_attn_every_n_layers: int = 3
    layer_types: tuple[str, ...] | None = None
    # -- dropout
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    embedding_dropout_prob: float | None = None  # None: hidden_dropout_prob
    classifier_dropout: float | None = None
    # Sequence classification: a dense layer + this activation before the classifier (DistilBERT's
    # pre_classifier: "relu"); None: the classifier reads the [CLS] state directly.
    classifier_pre_activation: str | None = None
    # -- MLM head (EncoderForMaskedLM): dense -> act -> norm -> tied decoder
    head_act: str | None = None  # None: hidden_act
    head_bias: bool = True
    head_norm_bias: bool = True
    decoder_bias: bool = True
    add_pooling_layer: bool = False
    # -- execution
    unpad: bool = False
    unpad_row_length: int | None = None  # host plans: stream row length (None: the batch's length)
    unpad_buckets: int = 4  # host plans: number of stream-row bucket sizes
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_implementation: str = "xla"
    remat: bool = False
    # When the caller reads only the first token of the last layer (the [CLS] pooler of sequence
    # classification asks with ``first_token_only=True``), run the last block for that token alone:
    # the same outputs for it, about 1/num_hidden_layers less compute. BERT configs default to True;
    # False always runs the full last block (the previous behaviour of MosaicBERT / ModernBERT).
    first_token_shortcut: bool = False
    # -- seams (names resolved through registries in jaxbert/models/layers, so configs stay JSON)
    attention_kind: str = "standard"  # layers/attention.py ATTENTION_KINDS
    # layers/relative.py RELATIVE_POSITION_KINDS: an encoder-level module (MPNet's bucketed bias,
    # DeBERTa's relative embeddings) whose output every layer's attention reads; None: none.
    relative_positions: str | None = None
    dot_general: str = "standard"  # layers/linear.py DOT_GENERALS: every attention projection and MLP matmul
    # Modules inserted at the extension sites (adapters, prefixes, soft prompts); see
    # jaxbert/models/layers/extensions.py. Not part of the HF config.
    extensions: tuple = ()
    model_type: str = "jaxbert-encoder"  # "bert" (BertConfig), "modernbert" = convertible to/from transformers

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        check_choice("norm_position", self.norm_position, NORM_POSITIONS)
        check_choice("norm_type", self.norm_type, NORM_TYPES)
        check_choice("position_embedding_type", self.position_embedding_type, POSITION_TYPES)
        check_choice("mlp_type", self.mlp_type, MLP_TYPES)
        check_choice("qkv_layout", self.qkv_layout, QKV_LAYOUTS)
        check_choice("attention_pattern", self.attention_pattern, ATTENTION_PATTERNS)
        check_choice("attention_kind", self.attention_kind, sorted(ATTENTION_KINDS))
        if self.relative_positions is not None:
            check_choice("relative_positions", self.relative_positions,
                         sorted(relative_lib.RELATIVE_POSITION_KINDS))
        check_execution_fields(self, ("hidden_act", "head_act", "classifier_pre_activation"))
        if self.position_embedding_type == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE rotates pairs of features and needs an even head dimension; "
                             f"hidden_size={self.hidden_size} / num_attention_heads={self.num_attention_heads} "
                             f"= {self.head_dim}")
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_hidden_layers:
                raise ValueError(f"layer_types has {len(self.layer_types)} entries for "
                                 f"num_hidden_layers={self.num_hidden_layers}")
            for t in self.layer_types:
                check_choice("layer_types entry", t, LAYER_TYPES)
        if self.global_attn_every_n_layers < 1:
            raise ValueError(f"global_attn_every_n_layers must be >= 1, got {self.global_attn_every_n_layers}")
        if "sliding" in self.attention_layer_types:
            if self.local_attention < 2:
                raise ValueError(f"local_attention={self.local_attention} must be >= 2 (a token sees "
                                 "|i - j| <= local_attention // 2)")
            if self.local_attention > self.max_position_embeddings:
                raise ValueError(f"local_attention={self.local_attention} (sliding window) is larger than "
                                 f"max_position_embeddings={self.max_position_embeddings}: every window "
                                 "would cover the whole sequence; use attention_pattern='global' instead")
        if self.mlp_type == "mlp" and self.mlp_in_bias != self.mlp_out_bias:
            raise ValueError("mlp_type='mlp' has one bias switch: set mlp_in_bias == mlp_out_bias")
        if self.unpad_buckets < 1:
            raise ValueError(f"unpad_buckets must be >= 1, got {self.unpad_buckets}")
        if self.type_vocab_size < 0:
            raise ValueError(f"type_vocab_size must be >= 0, got {self.type_vocab_size}")

    # ------------------------------------------------------------------ derived

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def attention_layer_types(self) -> tuple[str, ...]:
        """``"global"`` / ``"sliding"`` per layer."""
        if self.layer_types is not None:
            return tuple(self.layer_types)
        if self.attention_pattern == "global":
            return ("global",) * self.num_hidden_layers
        if self.attention_pattern == "sliding":
            return ("sliding",) * self.num_hidden_layers
        n = self.global_attn_every_n_layers
        return tuple("global" if i % n == 0 else "sliding" for i in range(self.num_hidden_layers))

    def rope_theta_for(self, layer_type: str) -> float:
        if layer_type == "sliding" and self.local_rope_theta is not None:
            return self.local_rope_theta
        return self.rope_theta

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["layer_types"] = list(self.layer_types) if self.layer_types is not None else None
        return out

    def mlm_head_options(self) -> dict[str, Any]:
        """Keyword arguments for :class:`jaxbert.models.heads.MaskedLMHead` (read by EncoderForMaskedLM)."""
        return {"activation": self.head_act or self.hidden_act, "use_bias": self.head_bias,
                "norm_bias": self.head_norm_bias, "decoder_bias": self.decoder_bias}

    def non_embedding_param_count(self) -> int:
        """Parameters of the encoder body (attention, MLP, norms; no embedding tables, head or pooler)."""
        e, h, d, m = self.hidden_size, self.num_attention_heads, self.head_dim, self.intermediate_size
        nb = 2 if self.norm_type == "layernorm" and self.norm_bias else 1
        attn = 3 * e * h * d + h * d * e + (3 * h * d + e if self.attention_bias else 0)
        mlp_in = e * m * (2 if self.mlp_type == "glu" else 1)
        mlp = mlp_in + m * e + (mlp_in // e if self.mlp_in_bias else 0) + (e if self.mlp_out_bias else 0)
        norms = 2 * self.num_hidden_layers - (0 if self.first_layer_attention_norm or self.norm_position == "post" else 1)
        total = self.num_hidden_layers * (attn + mlp) + norms * nb * e
        total += nb * e * (int(self.embedding_norm) + int(self.final_norm))
        return total


# ----------------------------------------------------------------------------- modules


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """Position ids that restart at 0 where the segment id changes. ``[b, l] -> [b, l]`` int32."""
    l = segment_ids.shape[-1]
    idx = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), segment_ids.shape)
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                              segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    first = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    return idx - first


@struct.dataclass
class EncoderOutput:
    """``last_hidden_state [b, l, embed]``; ``pooler_output [b, embed]`` or None; per-layer states if asked."""

    last_hidden_state: jax.Array
    pooler_output: jax.Array | None = None
    hidden_states: tuple[jax.Array, ...] | None = None


def _norm(cfg: EncoderConfig, name: str, use_bias: bool | None = None) -> nn.Module:
    return make_norm(cfg.norm_type, cfg.layer_norm_eps, cfg.compute_dtype, cfg.storage_dtype, name,
                     use_bias=cfg.norm_bias if use_bias is None else use_bias,
                     low_precision=cfg.low_precision_norm)


class EncoderEmbeddings(nn.Module):
    """Token (+ learned position) (+ token type) embeddings, optional norm, dropout.

    Reads ``vocab_size``, ``hidden_size``, ``position_embedding_type``, ``max_position_embeddings``,
    ``type_vocab_size``, ``embedding_norm`` (+ the norm fields), the dropout rates and dtypes of
    ``config`` (M2's config has the BERT values of these).
    """

    config: Any

    @nn.compact
    def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool = True):
        cfg = self.config
        embed = lambda n, name, axis: nn.Embed(
            n, cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
            embedding_init=nn.with_logical_partitioning(dense_init(cfg.initializer_range), (axis, "embed")),
            name=name)
        x = embed(cfg.vocab_size, "word_embeddings", "vocab")(input_ids)
        if cfg.position_embedding_type == "absolute":
            x = x + embed(cfg.max_position_embeddings, "position_embeddings", None)(position_ids)
        if cfg.type_vocab_size > 0:
            x = x + embed(cfg.type_vocab_size, "token_type_embeddings", None)(token_type_ids)
        if cfg.embedding_norm:
            x = _norm(cfg, "norm")(x)
        rate = cfg.hidden_dropout_prob if cfg.embedding_dropout_prob is None else cfg.embedding_dropout_prob
        x = Dropout(rate)(x, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Pooler(nn.Module):
    """BERT pooler: ``tanh(W h[:, 0] + b)``. ``[b, l, embed] -> [b, embed]``."""

    config: Any

    @nn.compact
    def __call__(self, hidden):
        cfg = self.config
        h = nn.Dense(cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
                     kernel_init=nn.with_logical_partitioning(dense_init(cfg.initializer_range), ("embed", "embed_out")),
                     bias_init=nn.with_logical_partitioning(zeros_init, ("embed_out",)),
                     name="dense")(hidden[:, 0])
        return jnp.tanh(h)


class EncoderBlock(nn.Module):
    """One transformer block, pre- or post-norm (the module docstring lists the switches).

    Post-norm (BERT, MosaicBERT): ``x = N(x + Drop(Attn(x))); x = N(x + Drop(MLP(x)))``; pre-norm
    (ModernBERT): ``x = x + Drop(Attn(N(x))); x = x + Drop(MLP(N(x)))``. The extension sites are
    called once each (:mod:`jaxbert.models.layers.extensions`): ``attention_kv`` into the
    attention, ``after_attention`` / ``after_mlp`` on each sub-layer output before its residual.
    The attention module is ``config.attention_kind`` and every dense matmul ``config.dot_general``.

    **Kept tokens.** ``query_index [b, k]`` (int positions of ``x``) runs the block for those tokens
    only: their queries attend to the keys/values of every token of ``x``, and the residuals, norms
    and MLP of the other positions are not computed; the output is ``[b, k, embed]``, equal to the
    full output gathered at ``query_index``. ``first_token_only`` is the ``k = 1``, index-0 case
    (a static slice, no gather), what BERT's [CLS]-only last block uses.
    """

    config: EncoderConfig
    layer_index: int = 0

    @nn.compact
    def __call__(self, x, mask, deterministic: bool = True, first_token_only: bool = False, query_index=None,
                 distance=None, rope=None, relative=None):
        """``x [b, l, embed]``; ``mask [b, 1, 1|l, l]`` bool; ``distance [b, 1, l, l]`` (ALiBi);
        ``rope = (cos, sin)`` each ``[b, l, head_dim/2]``; ``relative``: the encoder's
        relative-position context (:mod:`jaxbert.models.layers.relative`, already at the kept
        query rows) -> ``[b, l | k, embed]``."""
        cfg = self.config
        dt, pdt = cfg.compute_dtype, cfg.storage_dtype
        pre = cfg.norm_position == "pre"
        subset = first_token_only or query_index is not None
        keep = lambda t, axis=1: select_queries(t, query_index, axis, first_token_only)
        kv_prefix = extensions.prefix_kv(cfg, self.layer_index, x.shape[0], dt)
        h = x
        if pre and (self.layer_index > 0 or cfg.first_layer_attention_norm):
            h = _norm(cfg, "attention_norm")(x)
        bias = None
        if cfg.position_embedding_type == "alibi":
            bias = pos_lib.alibi_bias(pos_lib.alibi_slopes(cfg.num_attention_heads), keep(distance, 2))
        query_rope = None if rope is None or not subset else (keep(rope[0]), keep(rope[1]))
        bias, relative = relative_lib.merge_bias(relative, bias)
        attention = get_attention_kind(cfg.attention_kind)(
            num_heads=cfg.num_attention_heads, head_dim=cfg.head_dim, dropout_rate=cfg.attention_probs_dropout_prob,
            use_bias=cfg.attention_bias, initializer_range=cfg.initializer_range,
            implementation=cfg.attention_implementation, dtype=dt, param_dtype=pdt, qkv_layout=cfg.qkv_layout,
            dot_general=get_dot_general(cfg.dot_general), name="attention")
        queries = keep(h) if subset else None
        h = attention(h, mask=keep(mask, 2), bias=bias, deterministic=deterministic, kv_prefix=kv_prefix,
                      queries=queries, rope=rope, query_rope=query_rope, **relative)
        if subset:  # the kept rows of the residual stream (post-norm: the very rows the queries read)
            x = keep(x) if pre else queries
        h = Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
        h = extensions.apply_site(cfg, "after_attention", self.layer_index, h, deterministic)
        x = x + h if pre else _norm(cfg, "attention_norm")(x + h)
        h = _norm(cfg, "mlp_norm")(x) if pre else x
        if cfg.mlp_type == "glu":
            h = GluMlp(cfg.intermediate_size, activation=cfg.hidden_act, in_bias=cfg.mlp_in_bias,
                       out_bias=cfg.mlp_out_bias, initializer_range=cfg.initializer_range,
                       dtype=dt, param_dtype=pdt, dot_general=get_dot_general(cfg.dot_general), name="mlp")(h)
        else:
            h = Mlp(cfg.intermediate_size, activation=cfg.hidden_act, use_bias=cfg.mlp_in_bias,
                    initializer_range=cfg.initializer_range, dtype=dt, param_dtype=pdt,
                    dot_general=get_dot_general(cfg.dot_general), name="mlp")(h)
        h = Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
        h = extensions.apply_site(cfg, "after_mlp", self.layer_index, h, deterministic)
        x = x + h if pre else _norm(cfg, "mlp_norm")(x + h)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Encoder(nn.Module):
    """The configurable encoder backbone (BERT, MiniLM, MosaicBERT, ModernBERT, ...).

    ``input_ids [b, l]``, optional ``attention_mask [b, l]`` (1 = real token), ``token_type_ids``,
    ``position_ids``. Returns :class:`EncoderOutput`.

    Packed rows (several sequences per row, :mod:`jaxbert.data.packing`): pass ``segment_ids
    [b, l]`` (1, 2, ... per sequence, 0 = padding). Attention is then restricted to the token's
    own segment (combined with ``attention_mask``) and, unless ``position_ids`` is given,
    positions restart at 0 in every segment.

    Unpadded execution (``config.unpad=True``, or whenever ``unpad_index`` is passed): the
    layers run on the real tokens only, packed as ``unpad_index [r, R]`` from
    :func:`jaxbert.models.layers.unpad.plan` (computed on the host; its shape is the compiled
    shape). Without an index, ``config.unpad=True`` uses one stream row per batch row (same
    results, no saving). Outputs come back as ``[b, l, embed]`` with zeros at padding.

    ``first_token_only=True`` says the caller reads only token 0 of the last layer (the pooler,
    a [CLS] classifier): with ``config.first_token_shortcut`` (BERT's default) the last block then
    runs for that token alone and ``last_hidden_state`` is ``[b, 1, embed]``; token 0's values
    and the pooler output are those of the full computation. ``query_index [b, k]`` does the same
    for any kept positions (``last_hidden_state [b, k, embed]``). Unpadded execution runs the full
    last block (``first_token_only`` is then ignored; ``query_index`` is refused).
    """

    config: EncoderConfig
    # EncoderForSequenceClassification passes first_token_only=True to backbones that say so.
    supports_first_token_only = True

    def setup(self):
        cfg = self.config
        self.embeddings = EncoderEmbeddings(cfg)
        self.layers = block_stack(EncoderBlock, cfg, remat_static_argnums=(3, 4))
        self.embedding_extensions = extensions.embedding_modules(cfg)
        self.relative_positions = relative_lib.build(cfg)
        if cfg.final_norm:
            self.final_norm = _norm(cfg, "final_norm")
        if cfg.add_pooling_layer:
            self.pooler = Pooler(cfg)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, output_hidden_states: bool = False,
                 segment_ids=None, unpad_index=None, first_token_only: bool = False,
                 query_index=None) -> EncoderOutput:
        cfg = self.config
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        b, l = input_ids.shape
        if cfg.position_embedding_type == "absolute" and l > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {l} exceeds max_position_embeddings={cfg.max_position_embeddings}")
        if attention_mask is None:
            attention_mask = jnp.ones((b, l), jnp.int32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros((b, l), jnp.int32)
        if segment_ids is not None and segment_ids.shape != (b, l):
            raise ValueError(f"segment_ids shape {segment_ids.shape} != input_ids shape {(b, l)}")
        if position_ids is None:
            position_ids = (segment_positions(segment_ids) if segment_ids is not None
                            else jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l)))
        unpadded = cfg.unpad or unpad_index is not None
        if (unpadded or segment_ids is not None) and self.embedding_extensions:
            raise ValueError("unpadded execution / packed rows (segment_ids) cannot be combined with embedding "
                             "extensions that lengthen the sequence (soft prompts)")
        if unpadded and query_index is not None:
            raise ValueError("query_index (kept tokens of the last block) refers to padded positions; it cannot be "
                             "combined with unpadded execution (config.unpad / unpad_index)")
        if unpadded:
            index = unpad_lib.identity_plan(attention_mask) if unpad_index is None else unpad_index
            if index.ndim != 2:
                raise ValueError(f"unpad_index must be [rows, row_length], got shape {index.shape}")
            ids = unpad_lib.gather(input_ids, index)  # empty slots: id 0 (always a valid row)
            types = unpad_lib.gather(token_type_ids, index)
            positions = unpad_lib.gather(position_ids, index)
            mask = segment_mask(unpad_lib.stream_segments(index, b, l, segment_ids))
        else:
            ids, types, positions = input_ids, token_type_ids, position_ids
            mask = combine_masks(padding_mask(attention_mask),
                                 None if segment_ids is None else segment_mask(segment_ids))
        x = self.embeddings(ids, types, positions, deterministic)
        # e.g. soft prompts: may lengthen x and the mask
        x, attention_mask = extensions.apply_embeddings(self.embedding_extensions, x, attention_mask, deterministic)
        if x.shape[1] != positions.shape[1]:  # prepended prompt tokens: positions 0..l'-1
            positions = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), x.shape[:2])
            mask = padding_mask(attention_mask)
        layer_types = cfg.attention_layer_types
        distance = None
        if cfg.position_embedding_type == "alibi" or "sliding" in layer_types:
            distance = pos_lib.relative_distance(positions)
        masks = {"global": mask}
        if "sliding" in layer_types:
            masks["sliding"] = combine_masks(mask, pos_lib.window_mask(distance, cfg.local_attention // 2))
        ropes = {}
        if cfg.position_embedding_type == "rope":
            for t in set(layer_types):
                ropes[t] = pos_lib.rope_angles(positions, cfg.head_dim, cfg.rope_theta_for(t))
        # Heads that read only token 0 (the pooler, [CLS] classifiers): the last block runs for it alone.
        shortcut = first_token_only and cfg.first_token_shortcut and not unpadded
        relative = last_relative = None
        if self.relative_positions is not None:
            relative = last_relative = self.relative_positions(positions, positions)
            if shortcut or query_index is not None:  # the last block's queries are the kept tokens only
                last_relative = self.relative_positions(
                    select_queries(positions, query_index, 1, shortcut), positions)
        states = [x] if output_hidden_states else None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            t = layer_types[i]
            x = layer(x, masks[t], deterministic, shortcut and i == last, query_index if i == last else None,
                      distance, ropes.get(t), last_relative if i == last else relative)
            if output_hidden_states:
                states.append(x)
        if cfg.final_norm:
            x = self.final_norm(x)
        if unpadded:
            x = unpad_lib.scatter(x, index, b, l)
            if output_hidden_states:
                states = [unpad_lib.scatter(s, index, b, l) for s in states]
        pooled = self.pooler(x) if cfg.add_pooling_layer else None
        return EncoderOutput(last_hidden_state=x, pooler_output=pooled,
                             hidden_states=tuple(states) if output_hidden_states else None)

    def word_embedding_table(self) -> jax.Array:
        """The ``[vocab, embed]`` input embedding matrix (for the tied MLM decoder); call after ``__call__``."""
        return meta.unbox(self.embeddings.variables["params"]["word_embeddings"]["embedding"])
