"""Llama-family decoders (Llama, Mistral-shaped Llama, Qwen2) with a per-call causal / bidirectional switch.

One set of weights serves two uses (ULLME's runtime ``is_causal`` switch, LLM2Vec's bidirectional
conversion):

* ``attention_mode="causal"``: the language model. Token ``i`` attends to non-pad tokens ``<= i``;
  logits from the (tied or untied) LM head give next-token scores and greedy generation
  (:func:`greedy_generate`).
* ``attention_mode="bidirectional"``: the encoder. Token ``i`` attends to every non-pad token
  (padding mask only), the attention of LLM2Vec / ULLME / KaLM-Embedding's embedding models.

Block (transformers' ``LlamaDecoderLayer`` / ``Qwen2DecoderLayer``)::

    x = x + o_proj(attn(rope(q_proj(rms(x))), rope(k_proj(rms(x))), v_proj(rms(x))))
    x = x + down(silu(gate(rms(x))) * up(rms(x)))
    out = rms_final(x);   logits = out @ embed.T (tied) or lm_head(out)

Grouped-query attention: ``num_key_value_heads`` k/v heads, each shared by
``num_attention_heads / num_key_value_heads`` query heads (transformers' ``repeat_kv`` order: query
head ``h`` reads k/v head ``h // groups``). RoPE in the rotate-half layout with ``rope_theta`` and
optional scaling (``linear``, ``llama3``). Qwen2 adds biases on q/k/v (``attention_bias``).

Positions: by default ``position_ids = cumsum(attention_mask) - 1`` (clipped at 0), so a
left-padded row gives exactly the outputs of the same row unpadded, and so does a right-padded
one. (transformers' forward uses ``arange`` unless ``position_ids`` are passed; its ``generate``
uses the cumsum rule, as here.)

Parameter tree (``L`` layers, ``H`` query heads, ``K`` k/v heads, ``D`` head dim), every leaf
with logical axis names (in brackets)::

    embeddings/word_embeddings/embedding   [vocab, embed]          (vocab, embed)
    layer_{i}/attention_norm/scale         [embed]                 (embed)
    layer_{i}/attention/query/kernel       [embed, H, D]           (embed, heads, kv)   [bias [H, D]]
    layer_{i}/attention/{key,value}/kernel [embed, K, D]           (embed, kv_heads, kv) [bias [K, D]]
    layer_{i}/attention/out/kernel         [H, D, embed]           (heads, kv, embed)
    layer_{i}/mlp_norm/scale               [embed]                 (embed)
    layer_{i}/mlp/{gate,up}/kernel         [embed, mlp]            (embed, mlp)
    layer_{i}/mlp/down/kernel              [mlp, embed]            (mlp, embed)
    final_norm/scale                       [embed]                 (embed)
    lm_head/kernel                         [embed, vocab]          (embed, vocab)   (untied only)

``kv_heads`` is its own logical name so that a rules table may shard k/v heads differently from
query heads (few k/v heads rarely divide a tensor axis); ``jaxbert.train.mesh.DEFAULT_RULES`` maps it like ``heads``
(mesh.py replicates a dimension that the mesh axis does not divide, and reports it).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
from flax import struct
from flax.core import meta

from jaxbert.models.layers import extensions
from jaxbert.models.layers import positions as pos_lib
from jaxbert.models.config_base import ConfigMixin, check_choice, check_execution_fields
from jaxbert.models.layers.activations import get_activation
from jaxbert.models.layers.attention import (causal_mask, combine_masks, dot_product_attention, padding_mask,
                                             prepend_kv_prefix, segment_mask)
from jaxbert.models.layers.initializers import dense_init
from jaxbert.models.layers.linear import DenseND, get_dot_general
from jaxbert.models.layers.norms import make_norm
from jaxbert.models.layers.stack import block_stack
from jaxbert.models.transformer.model import segment_positions

ATTENTION_MODES = ("causal", "bidirectional")
ROPE_TYPES = ("default", "linear", "llama3")
LLM_MODEL_TYPES = ("llama", "qwen2")


@dataclasses.dataclass(frozen=True)
class LlmConfig(ConfigMixin):
    """Hyper-parameters of a Llama-family decoder; field names follow transformers' ``LlamaConfig``.

    ``attention_mode`` is the default of :class:`LlmModel` calls (each call may override it).
    ``rope_scaling`` is ``None`` or a tuple of ``(key, value)`` pairs (hashable, so configs can key
    jit caches), e.g. ``(("rope_type", "linear"), ("factor", 2.0))``.
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: = num_attention_heads (multi-head attention)
    head_dim_override: int | None = None  # None: hidden_size // num_attention_heads
    intermediate_size: int = 11008
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    hidden_act: str = "silu"
    attention_bias: bool = False  # q/k/v biases (Qwen2: True)
    attention_out_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    attention_dropout: float = 0.0
    # -- execution
    attention_mode: str = "causal"
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_implementation: str = "xla"
    remat: bool = False
    # -- seams: the matmul of every attention projection and MLP layer (layers/linear.py DOT_GENERALS),
    # and modules at the extension sites (adapters, prefixes, soft prompts; layers/extensions.py)
    dot_general: str = "standard"
    extensions: tuple = ()
    model_type: str = "llama"

    def __post_init__(self):
        if isinstance(self.rope_scaling, dict):  # accept a dict, store a hashable tuple
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())) or None)
        check_choice("model_type", self.model_type, LLM_MODEL_TYPES)
        check_choice("attention_mode", self.attention_mode, ATTENTION_MODES)
        check_execution_fields(self)
        if self.head_dim_override is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                             f"{self.num_attention_heads} (set head_dim_override)")
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got head_dim={self.head_dim}")
        rope_type = self.rope_scaling_dict.get("rope_type", "default")
        check_choice("rope_scaling rope_type", rope_type, ROPE_TYPES)
        if rope_type in ("linear", "llama3") and "factor" not in self.rope_scaling_dict:
            raise ValueError(f"rope_scaling of type {rope_type!r} needs a 'factor'")

    # ------------------------------------------------------------------ derived

    @property
    def kv_heads(self) -> int:
        return self.num_attention_heads if self.num_key_value_heads is None else self.num_key_value_heads

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.hidden_size // self.num_attention_heads

    @property
    def rope_scaling_dict(self) -> dict[str, Any]:
        return dict(self.rope_scaling or ())

    # BERT-config names read by generic code (SentenceEncoder, engine).
    @property
    def hidden_dropout_prob(self) -> float:
        return 0.0

    @property
    def attention_probs_dropout_prob(self) -> float:
        return self.attention_dropout

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["rope_scaling"] = self.rope_scaling_dict or None
        return out

    def param_count(self) -> int:
        """Number of parameters (embedding table and untied head included)."""
        e, h, k, d, m = self.hidden_size, self.num_attention_heads, self.kv_heads, self.head_dim, self.intermediate_size
        attn = e * h * d + 2 * e * k * d + h * d * e
        attn += (h * d + 2 * k * d) * self.attention_bias + e * self.attention_out_bias
        mlp = 3 * e * m + (2 * m + e) * self.mlp_bias
        per_layer = attn + mlp + 2 * e
        head = 0 if self.tie_word_embeddings else e * self.vocab_size
        return self.num_hidden_layers * per_layer + self.vocab_size * e + e + head

    # ------------------------------------------------------------------ transformers configs

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], **overrides: Any) -> "LlmConfig":
        """Build from a transformers ``LlamaConfig`` / ``Qwen2Config`` dict (``config.json``)."""
        model_type = hf.get("model_type")
        if model_type not in LLM_MODEL_TYPES:
            raise ValueError(f"config has model_type={model_type!r}; LlmConfig reads {LLM_MODEL_TYPES}")
        # transformers 5 writes rope_parameters={"rope_type", "rope_theta", ...}; older configs
        # rope_theta + rope_scaling (with "type" or "rope_type").
        rope = dict(hf.get("rope_parameters") or {})
        legacy = dict(hf.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
        scaling = {**legacy, **rope}
        if "type" in scaling and "rope_type" not in scaling:
            scaling["rope_type"] = scaling.pop("type")
        scaling.pop("type", None)
        if scaling.get("rope_type", "default") not in ROPE_TYPES:
            raise ValueError(f"rope scaling {scaling!r} is not supported; rope_type must be one of {ROPE_TYPES}")
        if scaling.get("rope_type", "default") == "default":
            scaling = {}
        if model_type == "qwen2" and hf.get("use_sliding_window", False):
            raise ValueError("Qwen2 configs with use_sliding_window=true are not supported (the sliding window "
                             "applies to some layers only); set use_sliding_window=false")
        heads = hf.get("num_attention_heads", 32)
        hidden = hf.get("hidden_size", 4096)
        head_dim = hf.get("head_dim")
        eos = hf.get("eos_token_id", 2)
        kwargs = dict(
            vocab_size=hf.get("vocab_size", 32000), hidden_size=hidden,
            num_hidden_layers=hf.get("num_hidden_layers", 32), num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim_override=head_dim if head_dim and head_dim != hidden // heads else None,
            intermediate_size=hf.get("intermediate_size", 11008),
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_theta=float(theta),
            rope_scaling=tuple(sorted(scaling.items())) or None,
            hidden_act=hf.get("hidden_act", "silu"),
            attention_bias=bool(hf.get("attention_bias", model_type == "qwen2")),
            attention_out_bias=bool(hf.get("attention_bias", False)) if model_type == "llama" else False,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", model_type == "qwen2")),
            initializer_range=hf.get("initializer_range", 0.02),
            pad_token_id=hf.get("pad_token_id"), bos_token_id=hf.get("bos_token_id"),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            attention_dropout=float(hf.get("attention_dropout", 0.0)),
            model_type=model_type,
        )
        return cls(**{**kwargs, **overrides})

    def to_hf_dict(self) -> dict[str, Any]:
        """A ``config.json`` dict that transformers' ``LlamaConfig`` / ``Qwen2Config`` reads."""
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        rope.update(self.rope_scaling_dict)
        out = {
            "model_type": self.model_type,
            "architectures": ["LlamaForCausalLM" if self.model_type == "llama" else "Qwen2ForCausalLM"],
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers, "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.kv_heads, "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size, "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps, "rope_theta": self.rope_theta, "rope_parameters": rope,
            "hidden_act": self.hidden_act, "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range, "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
            "attention_dropout": self.attention_dropout,
        }
        if self.model_type == "llama":
            if self.attention_bias != self.attention_out_bias:
                raise ValueError("transformers' Llama has one attention_bias switch for q/k/v/o; this config "
                                 f"has attention_bias={self.attention_bias}, attention_out_bias={self.attention_out_bias}")
            out.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
        else:
            if not self.attention_bias or self.attention_out_bias or self.mlp_bias:
                raise ValueError("transformers' Qwen2 has q/k/v biases and no o_proj / MLP biases")
            out.update(use_sliding_window=False)
        return out


# ----------------------------------------------------------------------------- RoPE


def rope_inv_freq(cfg: LlmConfig) -> np.ndarray:
    """Inverse frequencies ``[head_dim / 2]`` float32 with the config's scaling applied.

    ``linear``: all frequencies divided by ``factor``. ``llama3`` (transformers
    ``_compute_llama3_parameters``): long wavelengths divided by ``factor``, short ones kept,
    a smooth interpolation in between (``low_freq_factor``, ``high_freq_factor``,
    ``original_max_position_embeddings``).
    """
    inv = pos_lib.rope_frequencies(cfg.head_dim, cfg.rope_theta).astype(np.float64)
    sc = cfg.rope_scaling_dict
    kind = sc.get("rope_type", "default")
    if kind == "linear":
        inv = inv / float(sc["factor"])
    elif kind == "llama3":
        factor = float(sc["factor"])
        low, high = float(sc.get("low_freq_factor", 1.0)), float(sc.get("high_freq_factor", 4.0))
        old = float(sc.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / high) & ~(wavelen > old / low)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def rope_cos_sin(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """``cos, sin`` float32 ``[b, l, d/2]`` of ``positions [b, l] * inv_freq``."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    return jnp.cos(freqs), jnp.sin(freqs)


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """``cumsum(mask) - 1`` clipped at 0: the position of each token among the row's real tokens."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


# ----------------------------------------------------------------------------- modules


@struct.dataclass
class LlmOutput:
    """``last_hidden_state [b, l, embed]`` (after the final norm); ``logits [b, l, vocab]`` when asked;
    ``hidden_states`` (embeddings + each layer's output, before the final norm) when asked."""

    last_hidden_state: jax.Array
    logits: jax.Array | None = None
    hidden_states: tuple[jax.Array, ...] | None = None
    pooler_output: jax.Array | None = None  # always None (EncoderOutput compatibility)


def _norm(cfg: LlmConfig, name: str) -> nn.Module:
    return make_norm("rmsnorm", cfg.rms_norm_eps, cfg.compute_dtype, cfg.storage_dtype, name)


class LlmAttention(nn.Module):
    """Grouped-query self-attention with RoPE; masks come from the caller (causal or not).

    ``kv_prefix = (k, v)`` each ``[b, p, heads, head_dim]`` (query heads: after ``repeat_kv``) is
    prepended to the keys/values and visible to every query (the ``attention_kv`` site).
    """

    config: LlmConfig

    @nn.compact
    def __call__(self, x, mask, cos, sin, deterministic: bool = True, kv_prefix=None):
        cfg = self.config
        h, k, d = cfg.num_attention_heads, cfg.kv_heads, cfg.head_dim
        dense = lambda features, kaxes, baxes, name, bias, contract=1: DenseND(
            features=features, kernel_axes=kaxes, bias_axes=baxes, contract_dims=contract, use_bias=bias,
            initializer_range=cfg.initializer_range, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
            dot_general=get_dot_general(cfg.dot_general), name=name)
        q = dense((h, d), ("embed", "heads", "kv"), ("heads", "kv"), "query", cfg.attention_bias)(x)
        kk = dense((k, d), ("embed", "kv_heads", "kv"), ("kv_heads", "kv"), "key", cfg.attention_bias)(x)
        v = dense((k, d), ("embed", "kv_heads", "kv"), ("kv_heads", "kv"), "value", cfg.attention_bias)(x)
        q, kk = pos_lib.apply_rope(q, cos, sin), pos_lib.apply_rope(kk, cos, sin)
        if k != h:  # transformers' repeat_kv: query head j reads k/v head j // (h // k)
            kk, v = jnp.repeat(kk, h // k, axis=2), jnp.repeat(v, h // k, axis=2)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
        if kv_prefix is not None:
            kk, v, mask, _ = prepend_kv_prefix(kv_prefix, kk, v, mask)
        dropout_rng = None
        if cfg.attention_dropout > 0.0 and not deterministic:
            dropout_rng = self.make_rng("dropout")
        out = dot_product_attention(q, kk, v, mask=mask, dropout_rate=cfg.attention_dropout,
                                    dropout_rng=dropout_rng, deterministic=deterministic,
                                    implementation=cfg.attention_implementation)
        return dense((x.shape[-1],), ("heads", "kv", "embed"), ("embed",), "out", cfg.attention_out_bias,
                     contract=2)(out)


class LlmMlp(nn.Module):
    """SwiGLU: ``down(act(gate(x)) * up(x))`` with separate gate / up / down kernels (LoRA-friendly)."""

    config: LlmConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dense = lambda features, kaxes, baxes, name: DenseND(
            features=(features,), kernel_axes=kaxes, bias_axes=baxes, use_bias=cfg.mlp_bias,
            initializer_range=cfg.initializer_range, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
            dot_general=get_dot_general(cfg.dot_general), name=name)
        m = cfg.intermediate_size
        g = dense(m, ("embed", "mlp"), ("mlp",), "gate")(x)
        u = dense(m, ("embed", "mlp"), ("mlp",), "up")(x)
        hid = nn.with_logical_constraint(get_activation(cfg.hidden_act)(g) * u, ("batch", "length", "mlp"))
        return dense(x.shape[-1], ("mlp", "embed"), ("embed",), "down")(hid)


class LlmBlock(nn.Module):
    """Pre-norm decoder layer: attention and SwiGLU MLP, each with an RMSNorm and a residual.

    The extension sites, as in the encoder block: ``attention_kv`` (prefix keys/values),
    ``after_attention`` and ``after_mlp`` (on each sub-layer's output before its residual add).
    """

    config: LlmConfig
    layer_index: int = 0

    @nn.compact
    def __call__(self, x, mask, cos, sin, deterministic: bool = True):
        cfg = self.config
        kv_prefix = extensions.prefix_kv(cfg, self.layer_index, x.shape[0], cfg.compute_dtype)
        h = LlmAttention(cfg, name="attention")(_norm(cfg, "attention_norm")(x), mask, cos, sin, deterministic,
                                                kv_prefix)
        x = x + extensions.apply_site(cfg, "after_attention", self.layer_index, h, deterministic)
        h = LlmMlp(cfg, name="mlp")(_norm(cfg, "mlp_norm")(x))
        x = x + extensions.apply_site(cfg, "after_mlp", self.layer_index, h, deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class LlmModel(nn.Module):
    """Decoder backbone + LM head; attention mode per call.

    ``__call__(input_ids [b, l], attention_mask=None, position_ids=None, segment_ids=None,
    attention_mode=None, deterministic=True, output_hidden_states=False, return_logits=False)``
    -> :class:`LlmOutput`. ``attention_mode`` None uses ``config.attention_mode``.
    ``segment_ids`` (packed rows, 0 = padding) restrict attention to a token's own segment and
    restart positions per segment.
    """

    config: LlmConfig

    def setup(self):
        cfg = self.config
        self.embeddings = _Embeddings(cfg)
        self.layers = block_stack(LlmBlock, cfg, remat_static_argnums=(5,))
        self.embedding_extensions = extensions.embedding_modules(cfg)
        self.final_norm = _norm(cfg, "final_norm")
        if not cfg.tie_word_embeddings:
            self.lm_head = DenseND(features=(cfg.vocab_size,), kernel_axes=("embed", "vocab"), bias_axes=("vocab",),
                                   use_bias=False, initializer_range=cfg.initializer_range,
                                   dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, segment_ids=None,
                 attention_mode: str | None = None, deterministic: bool = True,
                 output_hidden_states: bool = False, return_logits: bool = False) -> LlmOutput:
        cfg = self.config
        mode = cfg.attention_mode if attention_mode is None else attention_mode
        check_choice("attention_mode", mode, ATTENTION_MODES)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        b, l = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, l), jnp.int32) if segment_ids is None else (segment_ids > 0)
        x = self.embeddings(input_ids)
        if self.embedding_extensions:  # soft prompts: prepended tokens lengthen x and the mask
            if segment_ids is not None:
                raise ValueError("packed rows (segment_ids) cannot be combined with embedding extensions that "
                                 "lengthen the sequence (soft prompts)")
            x, attention_mask = extensions.apply_embeddings(self.embedding_extensions, x, attention_mask,
                                                            deterministic)
            if x.shape[1] != l:
                if position_ids is not None:
                    raise ValueError("explicit position_ids cannot be combined with soft prompts (they change "
                                     "the sequence length)")
                l = x.shape[1]
        if position_ids is None:
            position_ids = segment_positions(segment_ids) if segment_ids is not None else positions_from_mask(
                attention_mask)
        mask = combine_masks(padding_mask(attention_mask),
                             None if segment_ids is None else segment_mask(segment_ids),
                             causal_mask(l) if mode == "causal" else None)
        cos, sin = rope_cos_sin(position_ids, rope_inv_freq(cfg))
        states = [x] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, mask, cos, sin, deterministic)
            if output_hidden_states:
                states.append(x)
        x = self.final_norm(x)
        logits = None
        if return_logits or self.is_initializing():
            logits = self.logits(x)
        return LlmOutput(last_hidden_state=x, logits=logits,
                         hidden_states=tuple(states) if output_hidden_states else None)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """LM-head scores ``[..., vocab]`` of final-norm states (tied: ``hidden @ embedding.T``)."""
        cfg = self.config
        if cfg.tie_word_embeddings:
            return self.embeddings.attend(hidden)
        return self.lm_head(hidden)

    def word_embedding_table(self) -> jax.Array:
        return meta.unbox(self.embeddings.variables["params"]["word_embeddings"]["embedding"])


class _Embeddings(nn.Module):
    """``embeddings/word_embeddings/embedding`` (same path as the BERT-family models)."""

    config: LlmConfig

    def setup(self):
        cfg = self.config
        self.word_embeddings = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
            embedding_init=nn.with_logical_partitioning(dense_init(cfg.initializer_range), ("vocab", "embed")))

    def __call__(self, input_ids):
        x = self.word_embeddings(input_ids)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))

    def attend(self, hidden):
        return self.word_embeddings.attend(hidden.astype(self.config.compute_dtype))


# ----------------------------------------------------------------------------- generation


def greedy_generate(model: LlmModel, params: dict, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
                    max_new_tokens: int = 20, eos_token_id: int | None = None, pad_token_id: int = 0) -> np.ndarray:
    """Greedy decoding in causal mode: ``[b, l]`` prompts (left or right padded) -> ``[b, max_new_tokens]``.

    No KV cache: one jitted forward over a fixed ``[b, l + max_new_tokens]`` buffer per step
    (a single compiled shape). New tokens go right after each row's last real token, so right
    padding works too. After ``eos_token_id`` a row emits ``pad_token_id`` (transformers does the same).
    """
    input_ids = np.asarray(input_ids, np.int32)
    b, l = input_ids.shape
    mask = np.ones((b, l), np.int32) if attention_mask is None else np.asarray(attention_mask, np.int32)
    total = l + max_new_tokens
    ids = np.full((b, total), pad_token_id, np.int32)
    full_mask = np.zeros((b, total), np.int32)
    ids[:, :l], full_mask[:, :l] = input_ids, mask
    last = l - 1 - np.argmax(mask[:, ::-1], axis=1)  # index of each row's last real token

    @jax.jit
    def step(params, ids, full_mask, last):
        out = model.apply({"params": params}, ids, full_mask, attention_mode="causal", return_logits=False)
        h = jnp.take_along_axis(out.last_hidden_state, last[:, None, None], axis=1)[:, 0]
        logits = model.apply({"params": params}, h, method=LlmModel.logits)
        return jnp.argmax(logits.astype(jnp.float32), axis=-1)

    new = np.zeros((b, max_new_tokens), np.int32)
    done = np.zeros(b, bool)
    rows = np.arange(b)
    for t in range(max_new_tokens):
        tok = np.asarray(step(params, ids, full_mask, last)).astype(np.int32)
        tok = np.where(done, pad_token_id, tok)
        new[:, t] = tok
        if eos_token_id is not None:
            done |= tok == eos_token_id
        last = last + 1
        ids[rows, last] = tok
        full_mask[rows, last] = 1
    return new
