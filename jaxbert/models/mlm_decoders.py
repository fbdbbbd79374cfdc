"""Pretraining-only MLM decoders (DrBERT / BPDec, arXiv 2401.15861) and the pretraining model.

:class:`EncoderForPretraining` = any backbone + (optional) MLM decoder + tied MLM head
(+ optional ERNIE-Gram n-gram head, + optional B-PROP representative-words scorer)::

    encoder/...          the backbone, exactly as EncoderForMaskedLM / fine-tuning models name it
    mlm_head/...         BERT MLM head (transform, transform_norm, bias), tied to the embeddings
    mlm_decoder/layer_i/...   decoder blocks (DrBERT), pretraining only
    ngram_offsets/embedding   [K+1, embed] n-gram token-offset queries (ERNIE-Gram), pretraining only
    ngram_head/...       n-gram identity classifier (ERNIE-Gram), pretraining only
    rop_head/...         representative-words-prediction scorer (B-PROP), pretraining only

Fine-tuning reads ``encoder/...`` only, so every pretraining-only part is dropped by not
loading it: the fine-tuning path does not change. Without a decoder, n-gram head or ROP head
the tree is the same as :class:`jaxbert.models.task_models.EncoderForMaskedLM`'s.

Decoder variants (``DecoderConfig.kind``):

``"blocks"``  ``num_layers`` extra post-LN transformer blocks between the encoder output and
              the MLM head (the "MLM decoder" of the paper).
``"gua"``     the same blocks with Gradual Unmasking Attention: ``[MASK]`` positions are hidden
              as attention *keys* and revealed gradually: in decoder layer ``i`` of ``N`` a
              masked key is visible iff its uniform draw ``u < (i + 1) / N`` (the draws are
              shared by the layers, so each layer reveals a superset of the previous one; with
              ``N = 2`` half of the masked positions are unmasked in the first layer and the
              rest in the second, as the paper describes).

``output_mix_prob`` (both variants): the paper's "output randomness": during training each
predicted position reads the encoder output instead of the decoder output with this
probability (our reading of the mix; evaluation always uses the decoder).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxbert.models.bert.model import BertConfig, BertLayer
from jaxbert.models.heads import MaskedLMHead
from jaxbert.models.layers.activations import ACTIVATIONS, get_activation
from jaxbert.models.layers.attention import combine_masks, padding_mask, segment_mask
from jaxbert.models.layers.initializers import dense_init, zeros_init
from jaxbert.models.layers.norms import layer_norm

DECODER_KINDS = ("none", "blocks", "gua")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    kind: str = "none"
    num_layers: int = 2
    output_mix_prob: float = 0.0

    def __post_init__(self):
        if self.kind not in DECODER_KINDS:
            raise ValueError(f"unknown MLM decoder kind {self.kind!r}; known: {list(DECODER_KINDS)}")
        if self.kind != "none" and self.num_layers < 1:
            raise ValueError(f"an MLM decoder needs num_layers >= 1, got {self.num_layers}")
        if not 0.0 <= self.output_mix_prob < 1.0:
            raise ValueError(f"output_mix_prob must be in [0, 1), got {self.output_mix_prob}")


def decoder_block_config(cfg: Any) -> BertConfig:
    """A :class:`BertConfig` for decoder blocks as wide as backbone config ``cfg`` (any architecture)."""
    hidden = cfg.hidden_size
    heads = getattr(cfg, "num_attention_heads", None) or max(1, hidden // 64)
    act = getattr(cfg, "hidden_act", "gelu")
    return BertConfig(vocab_size=1, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=heads,
                      intermediate_size=getattr(cfg, "intermediate_size", None) or 4 * hidden,
                      hidden_act=act if act in ACTIVATIONS else "gelu",
                      hidden_dropout_prob=getattr(cfg, "hidden_dropout_prob", 0.1),
                      attention_probs_dropout_prob=getattr(cfg, "attention_probs_dropout_prob", 0.1),
                      initializer_range=getattr(cfg, "initializer_range", 0.02),
                      layer_norm_eps=getattr(cfg, "layer_norm_eps", 1e-12),
                      dtype=getattr(cfg, "dtype", "float32"), param_dtype=getattr(cfg, "param_dtype", "float32"),
                      attention_implementation=getattr(cfg, "attention_implementation", "xla"))


class MLMDecoder(nn.Module):
    """DrBERT decoder blocks over the encoder output. ``[b, l, embed] -> [b, l, embed]``."""

    config: BertConfig
    spec: DecoderConfig

    @nn.compact
    def __call__(self, x, attention_mask, segment_ids, is_masked, deterministic: bool = True):
        base = combine_masks(padding_mask(attention_mask), None if segment_ids is None else segment_mask(segment_ids))
        n = self.spec.num_layers
        if self.spec.kind == "gua":
            key = self.make_rng("dropout") if not deterministic else jax.random.key(0)
            u = jax.random.uniform(key, is_masked.shape)
        for i in range(n):
            mask = base
            if self.spec.kind == "gua":
                hidden = is_masked & (u >= (i + 1) / n)  # still-hidden masked keys at layer i
                mask = combine_masks(base, (~hidden)[:, None, None, :])
            x = BertLayer(self.config, i, name=f"layer_{i}")(x, mask, deterministic)
        return x


class NgramHead(nn.Module):
    """ERNIE-Gram n-gram classifier: dense -> act -> LayerNorm -> ``[num_ngrams]`` logits (float32)."""

    num_ngrams: int
    hidden_size: int
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h):
        dense = lambda n, axes, name: nn.Dense(
            n, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(dense_init(self.initializer_range), axes),
            bias_init=nn.with_logical_partitioning(zeros_init, (axes[1],)), name=name)
        h = dense(self.hidden_size, ("embed", "embed_out"), "transform")(h)
        h = get_activation(self.activation)(h)
        h = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, "transform_norm")(h)
        return dense(self.num_ngrams, ("embed", None), "decoder")(h).astype(jnp.float32)


def _gather(h, positions):
    return jnp.take_along_axis(h, positions[..., None].astype(jnp.int32), axis=1)


class EncoderForPretraining(nn.Module):
    """Backbone + optional DrBERT decoder + MLM head (+ n-gram head, + ROP scorer).

    ``__call__(input_ids, attention_mask, token_type_ids, position_ids, segment_ids=None,
    masked_positions=None, masked_offsets=None, ngram_positions=None, deterministic=True,
    mode="mlm")`` returns ``logits [b, m, vocab]`` (all positions when ``masked_positions`` is
    None), ``ngram_logits [b, g, num_ngrams]`` when there is an n-gram head, and
    ``last_hidden_state``. ``mode="rop"`` runs only the encoder and returns ``rop_score [b]``
    from the ``[CLS]`` state.
    """

    config: Any
    backbone: Any
    decoder: DecoderConfig = DecoderConfig()
    num_ngrams: int = 0
    max_ngram_tokens: int = 0
    rop: bool = False
    mask_token_id: int = 4

    def setup(self):
        cfg = self.config
        self.encoder = self.backbone(cfg)
        act = getattr(cfg, "hidden_act", "gelu")
        act = act if act in ACTIVATIONS else "gelu"
        # The head EncoderForMaskedLM (and transformers) builds from the exported config: ModernBERT-shaped
        # configs have no head biases, so a head trained with them would lose them on reload.
        options = {"activation": act, **(cfg.mlm_head_options() if hasattr(cfg, "mlm_head_options") else {})}
        self.mlm_head = MaskedLMHead(cfg.hidden_size, cfg.vocab_size,
                                     layer_norm_eps=getattr(cfg, "layer_norm_eps", 1e-12),
                                     initializer_range=getattr(cfg, "initializer_range", 0.02),
                                     dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype, **options)
        if self.decoder.kind != "none":
            self.mlm_decoder = MLMDecoder(decoder_block_config(cfg), self.decoder)
        if self.num_ngrams:
            self.ngram_head = NgramHead(self.num_ngrams, cfg.hidden_size, act,
                                        getattr(cfg, "layer_norm_eps", 1e-12),
                                        getattr(cfg, "initializer_range", 0.02), cfg.compute_dtype, cfg.storage_dtype)
            self.ngram_offsets = nn.Embed(
                self.max_ngram_tokens + 1, cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
                embedding_init=nn.with_logical_partitioning(dense_init(getattr(cfg, "initializer_range", 0.02)),
                                                            (None, "embed")))
        if self.rop:
            self.rop_head = nn.Dense(1, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
                                     kernel_init=nn.with_logical_partitioning(
                                         dense_init(getattr(cfg, "initializer_range", 0.02)), ("embed", None)),
                                     bias_init=nn.with_logical_partitioning(zeros_init, (None,)))

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, segment_ids=None,
                 masked_positions=None, masked_offsets=None, ngram_positions=None, deterministic: bool = True,
                 mode: str = "mlm"):
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        kwargs = {} if segment_ids is None else {"segment_ids": segment_ids}
        out = self.encoder(input_ids, attention_mask, token_type_ids, position_ids, deterministic=deterministic,
                           **kwargs)
        h = out.last_hidden_state
        if mode == "rop":
            if not self.rop:
                raise ValueError("mode='rop' needs a model built with rop=True")
            return {"rop_score": self.rop_head(h[:, 0])[:, 0].astype(jnp.float32), "last_hidden_state": h}
        if mode != "mlm":
            raise ValueError(f"unknown mode {mode!r}; expected 'mlm' or 'rop'")
        hd = h
        if self.decoder.kind != "none":
            hd = self.mlm_decoder(h, attention_mask, segment_ids, input_ids == self.mask_token_id, deterministic)
        hm = hd if masked_positions is None else _gather(hd, masked_positions)
        if self.decoder.kind != "none" and self.decoder.output_mix_prob > 0 and not deterministic:
            he = h if masked_positions is None else _gather(h, masked_positions)
            pick = jax.random.bernoulli(self.make_rng("dropout"), self.decoder.output_mix_prob, hm.shape[:-1])
            hm = jnp.where(pick[..., None], he, hm)
        if self.num_ngrams and masked_offsets is not None:
            off = masked_offsets.astype(jnp.int32)
            hm = hm + self.ngram_offsets(off) * (off > 0)[..., None].astype(hm.dtype)
        logits = self.mlm_head(hm, self.encoder.word_embedding_table())
        result = {"logits": logits, "last_hidden_state": h}
        if self.num_ngrams:
            g = hd if ngram_positions is None else _gather(hd, ngram_positions)
            result["ngram_logits"] = self.ngram_head(g)
            if masked_offsets is None and self.is_initializing():
                self.ngram_offsets(jnp.zeros((1,), jnp.int32))
        if self.rop and self.is_initializing():
            self.rop_head(h[:, 0])
        return result


PRETRAINING_ONLY = ("mlm_decoder", "ngram_offsets", "ngram_head", "rop_head")


def split_pretraining_params(params: dict) -> tuple[dict, dict]:
    """``(mlm_params, pretraining_only)``: ``encoder`` + ``mlm_head`` vs the decoder / extra heads."""
    keep = {k: v for k, v in params.items() if k not in PRETRAINING_ONLY}
    extra = {k: v for k, v in params.items() if k in PRETRAINING_ONLY}
    return keep, extra
