"""DistilBERT's Hugging Face format: ``DistilBertConfig`` <-> :class:`EncoderConfig`, and the key table
(backbone under ``distilbert.`` in task models) <-> :class:`~jaxbert.models.transformer.model.Encoder` paths::

    HF key                                               jaxbert path                       transform
    embeddings.{word,position}_embeddings                embeddings/*/embedding             -
    embeddings.LayerNorm                                 embeddings/norm                    -
    transformer.layer.{i}.attention.{q,k,v}_lin          layer_{i}/attention/{query,key,value}  [E, H, D]
    transformer.layer.{i}.attention.out_lin              layer_{i}/attention/out            [H, D, E]
    transformer.layer.{i}.sa_layer_norm                  layer_{i}/attention_norm           -
    transformer.layer.{i}.ffn.lin1 / lin2                layer_{i}/mlp/wi / wo              Linear
    transformer.layer.{i}.output_layer_norm              layer_{i}/mlp_norm                 -
    vocab_transform, vocab_layer_norm, vocab_projector.bias   mlm_head/{transform,transform_norm,bias}
    pre_classifier, classifier                           classifier/pre, classifier/out     Linear
    qa_outputs                                           qa_head/out                        Linear

DistilBERT is post-LN with LayerNorm eps 1e-12 everywhere, learned absolute positions (a
``sinusoidal_pos_embds`` checkpoint stores its fixed table as weights: it loads as a learned table
with the same values), no token types and no pooler. Its sequence classifier is ``pre_classifier``
-> ReLU -> dropout (``seq_classif_dropout``) -> ``classifier`` (``classifier_pre_activation="relu"``).
"""

from __future__ import annotations

from typing import Any

from jaxbert.convert.rules import (OUT_KERNEL, QKV_BIAS, QKV_KERNEL, KeyTable, Rule, linear_rules,
                                   norm_rules)
from jaxbert.models.transformer.model import EncoderConfig

MODEL_TYPE = "distilbert"
EPS = 1e-12  # fixed in transformers' DistilBERT (not a config field)
# EncoderConfig fields every DistilBERT config has (checked on export).
_SHAPE = dict(type_vocab_size=0, norm_position="post", norm_type="layernorm", norm_bias=True, layer_norm_eps=EPS,
              embedding_norm=True, final_norm=False, position_embedding_type="absolute", mlp_type="mlp",
              attention_bias=True, mlp_in_bias=True, mlp_out_bias=True, qkv_layout="separate",
              attention_pattern="global", head_act=None, head_bias=True, head_norm_bias=True, decoder_bias=True,
              add_pooling_layer=False, classifier_pre_activation="relu")


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> EncoderConfig:
    """A transformers ``DistilBertConfig`` dict -> :class:`EncoderConfig` (``model_type="distilbert"``)."""
    if hf.get("model_type") != MODEL_TYPE:
        raise ValueError(f"config has model_type={hf.get('model_type')!r}; DistilBERT reads {MODEL_TYPE!r} configs")
    if not hf.get("tie_word_embeddings", True):
        raise ValueError("tie_word_embeddings=False is not supported (the MLM decoder is tied)")
    pad = hf.get("pad_token_id")
    cfg = EncoderConfig(
        vocab_size=hf.get("vocab_size", 30522), hidden_size=hf.get("dim", 768),
        num_hidden_layers=hf.get("n_layers", 6), num_attention_heads=hf.get("n_heads", 12),
        intermediate_size=hf.get("hidden_dim", 3072), max_position_embeddings=hf.get("max_position_embeddings", 512),
        pad_token_id=0 if pad is None else pad, initializer_range=hf.get("initializer_range", 0.02),
        hidden_act=hf.get("activation", "gelu"), hidden_dropout_prob=hf.get("dropout", 0.1),
        attention_probs_dropout_prob=hf.get("attention_dropout", 0.1),
        classifier_dropout=hf.get("seq_classif_dropout", 0.2), model_type=MODEL_TYPE, **_SHAPE)
    return cfg.replace(**overrides) if overrides else cfg


def config_to_hf(cfg: EncoderConfig) -> dict[str, Any]:
    """:class:`EncoderConfig` -> a ``config.json`` dict that ``transformers.DistilBertConfig`` reads."""
    wrong = {k: getattr(cfg, k) for k, v in _SHAPE.items() if getattr(cfg, k) != v}
    if cfg.embedding_dropout_prob not in (None, cfg.hidden_dropout_prob):
        wrong["embedding_dropout_prob"] = cfg.embedding_dropout_prob
    if wrong:
        raise ValueError(f"this config is not expressible as a transformers DistilBertConfig: {wrong} "
                         f"(DistilBERT needs {_SHAPE})")
    return {
        "model_type": MODEL_TYPE, "architectures": ["DistilBertModel"], "vocab_size": cfg.vocab_size,
        "dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "n_heads": cfg.num_attention_heads,
        "hidden_dim": cfg.intermediate_size, "max_position_embeddings": cfg.max_position_embeddings,
        "sinusoidal_pos_embds": False, "activation": cfg.hidden_act, "dropout": cfg.hidden_dropout_prob,
        "attention_dropout": cfg.attention_probs_dropout_prob,
        "seq_classif_dropout": cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout,
        "initializer_range": cfg.initializer_range, "pad_token_id": cfg.pad_token_id, "tie_word_embeddings": True,
    }


_LAYER = "transformer.layer.{layer}"
BACKBONE_RULES: list[Rule] = [
    Rule("embeddings.word_embeddings.weight", "embeddings/word_embeddings/embedding"),
    Rule("embeddings.position_embeddings.weight", "embeddings/position_embeddings/embedding"),
    *norm_rules("embeddings.LayerNorm", "embeddings/norm"),
    *[r for hf_name, jax_name in (("q_lin", "query"), ("k_lin", "key"), ("v_lin", "value")) for r in (
        Rule(f"{_LAYER}.attention.{hf_name}.weight", f"layer_{{layer}}/attention/{jax_name}/kernel", QKV_KERNEL),
        Rule(f"{_LAYER}.attention.{hf_name}.bias", f"layer_{{layer}}/attention/{jax_name}/bias", QKV_BIAS))],
    Rule(f"{_LAYER}.attention.out_lin.weight", "layer_{layer}/attention/out/kernel", OUT_KERNEL),
    Rule(f"{_LAYER}.attention.out_lin.bias", "layer_{layer}/attention/out/bias"),
    *norm_rules(f"{_LAYER}.sa_layer_norm", "layer_{layer}/attention_norm"),
    *linear_rules(f"{_LAYER}.ffn.lin1", "layer_{layer}/mlp/wi"),
    *linear_rules(f"{_LAYER}.ffn.lin2", "layer_{layer}/mlp/wo"),
    *norm_rules(f"{_LAYER}.output_layer_norm", "layer_{layer}/mlp_norm"),
]
HEAD_RULES: dict[str, list[Rule]] = {
    "base": [],
    "mlm": [*linear_rules("vocab_transform", "mlm_head/transform"),
            *norm_rules("vocab_layer_norm", "mlm_head/transform_norm"),
            Rule("vocab_projector.bias", "mlm_head/bias")],
    "sequence_classification": [*linear_rules("pre_classifier", "classifier/pre"),
                                *linear_rules("classifier", "classifier/out")],
    "token_classification": linear_rules("classifier", "classifier/out"),
    "question_answering": linear_rules("qa_outputs", "qa_head/out"),
}
KEYS = KeyTable(
    backbone=BACKBONE_RULES, hf_prefix="distilbert.", heads=HEAD_RULES,
    benign=[r"embeddings\.position_ids", r"vocab_projector\.weight"],  # a buffer; the decoder tied to the embeddings
    other_heads=[r"vocab_(transform|layer_norm|projector)\..*", r"pre_classifier\..*", r"classifier\..*",
                 r"qa_outputs\..*"])

HF_ARCHITECTURES = {
    "base": "DistilBertModel", "mlm": "DistilBertForMaskedLM",
    "sequence_classification": "DistilBertForSequenceClassification",
    "token_classification": "DistilBertForTokenClassification", "question_answering": "DistilBertForQuestionAnswering",
}
