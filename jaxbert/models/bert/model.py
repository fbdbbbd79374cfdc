"""BERT encoder (Devlin et al. 2019) in Flax Linen, numerically matching ``transformers.BertModel``.

Parameter tree of :class:`BertModel` (``L`` layers, ``H`` heads, ``D = hidden/H``)::

    embeddings/word_embeddings/embedding        [vocab, embed]
    embeddings/position_embeddings/embedding    [max_position, embed]
    embeddings/token_type_embeddings/embedding  [type_vocab, embed]
    embeddings/norm/{scale,bias}                [embed]
    layer_{i}/attention/{query,key,value}/kernel [embed, H, D]   bias [H, D]
    layer_{i}/attention/out/kernel              [H, D, embed]    bias [embed]
    layer_{i}/attention_norm/{scale,bias}       [embed]
    layer_{i}/mlp/wi/kernel [embed, mlp]  wi/bias [mlp]  wo/kernel [mlp, embed]  wo/bias [embed]
    layer_{i}/mlp_norm/{scale,bias}             [embed]
    pooler/dense/{kernel [embed, embed], bias}  (when ``add_pooling_layer``)

Layers are unrolled (``layer_0`` ... ``layer_{L-1}``) rather than scanned so that per-layer
regexes (freezing, layer-wise learning-rate decay, PEFT targets) address them directly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn
from flax import struct
from flax.core import meta

from jaxbert.models.layers import extensions
from jaxbert.models.layers.attention import (ATTENTION_IMPLEMENTATIONS, MultiHeadAttention, combine_masks, padding_mask,
                                             segment_mask)
from jaxbert.models.layers.activations import ACTIVATIONS
from jaxbert.models.layers.dropout import Dropout
from jaxbert.models.layers.initializers import dense_init, zeros_init
from jaxbert.models.layers.mlp import Mlp
from jaxbert.models.layers.norms import layer_norm

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT encoder; field names follow ``transformers.BertConfig``.

    ``dtype`` is the compute dtype and ``param_dtype`` the storage dtype of parameters
    (both strings, so the config serialises to JSON). ``attention_implementation`` picks the
    attention kernel (see :func:`jaxbert.models.layers.attention.dot_product_attention`).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout: float | None = None
    add_pooling_layer: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_implementation: str = "xla"
    remat: bool = False
    # When the caller reads only the first token of the last layer (the [CLS] pooler of
    # sequence classification asks with ``first_token_only=True``), run the last block for that
    # token alone: the same outputs for it, about 1/num_hidden_layers less compute. False always
    # runs the full last block (an ablation switch). Not part of the HF config.
    first_token_shortcut: bool = True
    # Modules inserted at the encoder's extension sites (adapters, prefixes, soft prompts);
    # see jaxbert/models/layers/extensions.py. Not part of the HF config.
    extensions: tuple = ()

    model_type = "bert"

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; known: {sorted(ACTIVATIONS)}")
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in DTYPES:
                raise ValueError(f"{field}={getattr(self, field)!r}; expected one of {sorted(DTYPES)}")
        if self.attention_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention_implementation={self.attention_implementation!r}; "
                             f"expected one of {ATTENTION_IMPLEMENTATIONS}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def storage_dtype(self):
        return DTYPES[self.param_dtype]

    def replace(self, **changes: Any) -> "BertConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extensions"}
        out["extensions"] = [{"type": type(e).__name__, **dataclasses.asdict(e)} for e in self.extensions]
        return out

    # Fields of a HF config.json that this class reads; anything else is ignored.
    HF_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
                 "max_position_embeddings", "type_vocab_size", "initializer_range", "layer_norm_eps",
                 "pad_token_id", "classifier_dropout")

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], **overrides: Any) -> "BertConfig":
        """Build from a HF ``config.json`` dict (``model_type`` must be a BERT-compatible type)."""
        model_type = hf.get("model_type", "bert")
        if model_type not in ("bert",):
            raise ValueError(f"config has model_type={model_type!r}; BertConfig reads only 'bert' configs")
        pet = hf.get("position_embedding_type", "absolute")
        if pet != "absolute":
            raise ValueError(f"position_embedding_type={pet!r} is not supported (only 'absolute')")
        kwargs = {k: hf[k] for k in cls.HF_FIELDS if k in hf}
        if kwargs.get("pad_token_id") is None:  # some configs write null
            kwargs["pad_token_id"] = 0
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        """A ``config.json`` dict that ``transformers.BertConfig`` reads."""
        out = {k: getattr(self, k) for k in self.HF_FIELDS}
        out.update(model_type="bert", position_embedding_type="absolute", architectures=["BertModel"])
        return out


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


class BertEmbeddings(nn.Module):
    """word + position + token-type embeddings, LayerNorm, dropout."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool = True):
        cfg = self.config
        embed = lambda n, name: nn.Embed(
            n, cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
            embedding_init=nn.with_logical_partitioning(dense_init(cfg.initializer_range),
                                                        ("vocab" if name == "word_embeddings" else None, "embed")),
            name=name)
        x = embed(cfg.vocab_size, "word_embeddings")(input_ids)
        x = x + embed(cfg.max_position_embeddings, "position_embeddings")(position_ids)
        x = x + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
        x = layer_norm(cfg.layer_norm_eps, cfg.compute_dtype, cfg.storage_dtype, "norm")(x)
        x = Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class BertLayer(nn.Module):
    """One post-LN transformer block: ``x = LN(x + Attn(x)); x = LN(x + MLP(x))``."""

    config: BertConfig

    layer_index: int = 0

    @nn.compact
    def __call__(self, x, mask, deterministic: bool = True, first_token_only: bool = False):
        """``x [b, l, embed]`` -> ``[b, l, embed]``; ``[b, 1, embed]`` (the first token's output
        only) when ``first_token_only``: its query attends to all of ``x`` as usual, and the
        other positions' attention output, residuals, norms and MLP are not computed."""
        cfg = self.config
        dt, pdt = cfg.compute_dtype, cfg.storage_dtype
        kv_prefix = None
        for ext in extensions.at_site(cfg, "attention_kv"):  # at most one is meaningful; last wins
            kv_prefix = ext.build(cfg, self.layer_index, ext.name)(x.shape[0], dt)
        queries = None
        if first_token_only:
            queries = x[:, :1]
            if mask is not None and mask.shape[2] > 1:  # per-query rows (segments): keep the first
                mask = mask[:, :, :1]
        h = MultiHeadAttention(
            num_heads=cfg.num_attention_heads, head_dim=cfg.head_dim,
            dropout_rate=cfg.attention_probs_dropout_prob, initializer_range=cfg.initializer_range,
            implementation=cfg.attention_implementation, dtype=dt, param_dtype=pdt,
            name="attention")(x, mask=mask, deterministic=deterministic, kv_prefix=kv_prefix, queries=queries)
        if first_token_only:
            x = queries
        h = Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
        for ext in extensions.at_site(cfg, "after_attention"):
            h = ext.build(cfg, self.layer_index, ext.name)(h, deterministic)
        x = layer_norm(cfg.layer_norm_eps, dt, pdt, "attention_norm")(x + h)
        h = Mlp(cfg.intermediate_size, activation=cfg.hidden_act, initializer_range=cfg.initializer_range,
                dtype=dt, param_dtype=pdt, name="mlp")(x)
        h = Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
        for ext in extensions.at_site(cfg, "after_mlp"):
            h = ext.build(cfg, self.layer_index, ext.name)(h, deterministic)
        x = layer_norm(cfg.layer_norm_eps, dt, pdt, "mlp_norm")(x + h)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Pooler(nn.Module):
    """BERT pooler: ``tanh(W h[:, 0] + b)``. ``[b, l, embed] -> [b, embed]``."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden):
        cfg = self.config
        h = nn.Dense(cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
                     kernel_init=nn.with_logical_partitioning(dense_init(cfg.initializer_range), ("embed", "embed_out")),
                     bias_init=nn.with_logical_partitioning(zeros_init, ("embed_out",)),
                     name="dense")(hidden[:, 0])
        return jnp.tanh(h)


class BertModel(nn.Module):
    """The BERT backbone: embeddings, ``num_hidden_layers`` blocks, optional pooler.

    Call with ``input_ids [b, l]`` (int), optional ``attention_mask [b, l]`` (1 = real token),
    ``token_type_ids [b, l]``, ``position_ids [b, l]``. Returns :class:`EncoderOutput`.

    Packed rows (several sequences per row, :mod:`jaxbert.data.packing`): pass ``segment_ids
    [b, l]`` (1, 2, ... per sequence, 0 = padding). Attention is then restricted to the token's
    own segment (combined with ``attention_mask``) and, unless ``position_ids`` is given,
    positions restart at 0 in every segment.

    ``first_token_only=True`` says the caller reads only token 0 of the last layer (the pooler,
    a [CLS] classifier): with ``config.first_token_shortcut`` (the default) the last block then
    runs for that token alone and ``last_hidden_state`` is ``[b, 1, embed]``; token 0's values
    and the pooler output are those of the full computation.
    """

    config: BertConfig
    # EncoderForSequenceClassification passes first_token_only=True to backbones that say so.
    supports_first_token_only = True

    def setup(self):
        cfg = self.config
        self.embeddings = BertEmbeddings(cfg)
        block = nn.remat(BertLayer, static_argnums=(3, 4)) if cfg.remat else BertLayer
        self.layers = [block(cfg, i, name=f"layer_{i}") for i in range(cfg.num_hidden_layers)]
        self.embedding_extensions = [e.build(cfg, None, e.name) for e in extensions.at_site(cfg, "embeddings")]
        if cfg.add_pooling_layer:
            self.pooler = Pooler(cfg)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, output_hidden_states: bool = False,
                 segment_ids=None, first_token_only: bool = False) -> EncoderOutput:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        b, l = input_ids.shape
        if l > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {l} exceeds max_position_embeddings="
                             f"{self.config.max_position_embeddings}")
        if attention_mask is None:
            attention_mask = jnp.ones((b, l), jnp.int32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros((b, l), jnp.int32)
        if segment_ids is not None:
            if segment_ids.shape != (b, l):
                raise ValueError(f"segment_ids shape {segment_ids.shape} != input_ids shape {(b, l)}")
            if self.embedding_extensions:
                raise ValueError("packed rows (segment_ids) cannot be combined with embedding extensions "
                                 "that lengthen the sequence (soft prompts)")
            if position_ids is None:
                position_ids = segment_positions(segment_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
        x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic)
        for ext in self.embedding_extensions:  # e.g. soft prompts: may lengthen x and the mask
            x, attention_mask = ext(x, attention_mask, deterministic)
        mask = combine_masks(padding_mask(attention_mask),
                             None if segment_ids is None else segment_mask(segment_ids))
        states = [x] if output_hidden_states else None
        # Heads that read only token 0 (the pooler, [CLS] classifiers): the last block runs for it alone.
        shortcut = first_token_only and self.config.first_token_shortcut
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, deterministic, shortcut and i == len(self.layers) - 1)
            if output_hidden_states:
                states.append(x)
        pooled = self.pooler(x) if self.config.add_pooling_layer else None
        return EncoderOutput(last_hidden_state=x, pooler_output=pooled,
                             hidden_states=tuple(states) if output_hidden_states else None)

    def word_embedding_table(self) -> jax.Array:
        """The ``[vocab, embed]`` input embedding matrix (for tied output layers); call after ``__call__``."""
        return meta.unbox(self.embeddings.variables["params"]["word_embeddings"]["embedding"])
