"""Presets of the configurable block: ModernBERT (``model_type="modernbert"``, HF-convertible) and
MosaicBERT (``model_type="jaxbert-encoder"``: no HF layout in jaxbert), their config factories and
small test shapes. Presets are looked up through :func:`jaxbert.models.registry.get`."""

from __future__ import annotations

from typing import Any, Callable

from jaxbert.models.transformer.model import EncoderConfig


def mosaicbert_config(**kw: Any) -> EncoderConfig:
    """MosaicBERT (mosaicml/examples ``bert_layers.py``): post-norm, ALiBi, GeGLU (``wi`` without bias),
    fused q/k/v, no attention-probability dropout, vocabulary padded to a multiple of 8 (30528)."""
    base = dict(vocab_size=30528, position_embedding_type="alibi", mlp_type="glu", mlp_in_bias=False,
                mlp_out_bias=True, qkv_layout="fused", attention_probs_dropout_prob=0.0)
    return EncoderConfig(**{**base, **kw})


def modernbert_config(**kw: Any) -> EncoderConfig:
    """ModernBERT (Warner et al. 2024; transformers ``ModernBertModel``): pre-norm LayerNorm without bias,
    RoPE (theta 160k global / 10k local), GeGLU, no biases, embedding + final norm, layer 0 without
    attention norm, sliding window 128 with a global layer every 3rd, no dropout."""
    base = dict(vocab_size=50368, hidden_size=768, num_hidden_layers=22, num_attention_heads=12,
                intermediate_size=1152, max_position_embeddings=8192, type_vocab_size=0, pad_token_id=50283,
                norm_position="pre", norm_bias=False, layer_norm_eps=1e-5, embedding_norm=True, final_norm=True,
                first_layer_attention_norm=False, position_embedding_type="rope", rope_theta=160000.0,
                local_rope_theta=10000.0, mlp_type="glu", attention_bias=False, mlp_in_bias=False,
                mlp_out_bias=False, qkv_layout="fused", attention_pattern="alternating", local_attention=128,
                global_attn_every_n_layers=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                embedding_dropout_prob=0.0, classifier_dropout=0.0, head_bias=False, head_norm_bias=False,
                decoder_bias=True, model_type="modernbert")
    return EncoderConfig(**{**base, **kw})


MODERNBERT: dict[str, Callable[[], EncoderConfig]] = {
    "modernbert-base": lambda: modernbert_config(),
    "modernbert-large": lambda: modernbert_config(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                                                  intermediate_size=2624),
    "modernbert-tiny": lambda: modernbert_config(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                                 intermediate_size=96, max_position_embeddings=512,
                                                 local_attention=16),
}
MOSAICBERT: dict[str, Callable[[], EncoderConfig]] = {
    "mosaicbert-base": lambda: mosaicbert_config(),
    "mosaicbert-tiny": lambda: mosaicbert_config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                 intermediate_size=128),
}
