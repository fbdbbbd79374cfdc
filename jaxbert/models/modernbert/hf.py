"""ModernBERT's Hugging Face format: ``ModernBertConfig`` <-> :class:`EncoderConfig`
(:func:`config_from_hf`, :func:`config_to_hf`), and transformers' ``ModernBertModel`` /
``ModernBertForMaskedLM`` keys (backbone under ``model.`` in task models) <->
:class:`~jaxbert.models.transformer.model.Encoder` paths.

Fused projections: ``Wqkv [3*H*D, E]`` -> ``qkv [E, 3, H, D]``; GLU ``Wi [2*I, E]`` -> ``wi [E, 2, I]``.
"""

from __future__ import annotations

from typing import Any

from jaxbert.convert.rules import OUT_KERNEL, KeyTable, Rule, Transform, linear_rules, norm_rules
from jaxbert.models.modernbert.presets import modernbert_config
from jaxbert.models.transformer.model import EncoderConfig

HF_LAYER_TYPES = {"full_attention": "global", "sliding_attention": "sliding"}
# ModernBERT's special-token ids, written to config.json where the vocabulary has them.
SPECIAL_TOKEN_IDS = (("bos_token_id", 50281), ("cls_token_id", 50281), ("eos_token_id", 50282),
                     ("sep_token_id", 50282))


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> EncoderConfig:
    """Build from a transformers ``ModernBertConfig`` dict (``model_type="modernbert"``)."""
    model_type = hf.get("model_type")
    if model_type != "modernbert":
        raise ValueError(f"config has model_type={model_type!r}; EncoderConfig reads 'modernbert' configs")
    rope = hf.get("rope_parameters") or {}
    for kind, params in rope.items():
        if params and params.get("rope_type", "default") != "default":
            raise ValueError(f"rope_parameters[{kind!r}] has rope_type={params['rope_type']!r}; "
                             "only 'default' RoPE is supported")
    global_theta = (rope.get("full_attention") or {}).get("rope_theta", hf.get("global_rope_theta", 160000.0))
    local_theta = (rope.get("sliding_attention") or {}).get("rope_theta", hf.get("local_rope_theta", 10000.0))
    n_layers = hf.get("num_hidden_layers", 22)
    every = hf.get("global_attn_every_n_layers", 3)
    layer_types = hf.get("layer_types")
    if layer_types is None:
        layer_types = ["sliding_attention" if i % every else "full_attention" for i in range(n_layers)]
    unknown = sorted(set(layer_types) - set(HF_LAYER_TYPES))
    if unknown:
        raise ValueError(f"layer_types has unknown entries {unknown}; known: {sorted(HF_LAYER_TYPES)}")
    head_act = hf.get("classifier_activation", "gelu")
    kwargs = dict(
        vocab_size=hf.get("vocab_size", 50368), hidden_size=hf.get("hidden_size", 768),
        num_hidden_layers=n_layers, num_attention_heads=hf.get("num_attention_heads", 12),
        intermediate_size=hf.get("intermediate_size", 1152),
        max_position_embeddings=hf.get("max_position_embeddings", 8192),
        pad_token_id=hf.get("pad_token_id") if hf.get("pad_token_id") is not None else 50283,
        initializer_range=hf.get("initializer_range", 0.02),
        layer_norm_eps=hf.get("norm_eps", 1e-5), norm_bias=hf.get("norm_bias", False),
        hidden_act=hf.get("hidden_activation", "gelu"),
        attention_bias=hf.get("attention_bias", False),
        mlp_in_bias=hf.get("mlp_bias", False), mlp_out_bias=hf.get("mlp_bias", False),
        rope_theta=float(global_theta), local_rope_theta=float(local_theta),
        local_attention=hf.get("local_attention", 128), global_attn_every_n_layers=every,
        layer_types=tuple(HF_LAYER_TYPES[t] for t in layer_types),
        attention_pattern="alternating",
        hidden_dropout_prob=hf.get("mlp_dropout", 0.0),
        attention_probs_dropout_prob=hf.get("attention_dropout", 0.0),
        embedding_dropout_prob=hf.get("embedding_dropout", 0.0),
        classifier_dropout=hf.get("classifier_dropout", 0.0),
        head_act=None if head_act == hf.get("hidden_activation", "gelu") else head_act,
        head_bias=hf.get("classifier_bias", False), head_norm_bias=hf.get("norm_bias", False),
        decoder_bias=hf.get("decoder_bias", True),
    )
    if not hf.get("tie_word_embeddings", True):
        raise ValueError("tie_word_embeddings=False is not supported (the MLM decoder is tied)")
    base = modernbert_config(**kwargs)
    return base.replace(**overrides) if overrides else base


def config_to_hf(cfg: EncoderConfig) -> dict[str, Any]:
    """A ``config.json`` dict that ``transformers.ModernBertConfig`` reads (ModernBERT-shaped configs only)."""
    expect = dict(norm_position="pre", norm_type="layernorm", position_embedding_type="rope", mlp_type="glu",
                  qkv_layout="fused", embedding_norm=True, final_norm=True, first_layer_attention_norm=False,
                  type_vocab_size=0, add_pooling_layer=False)
    wrong = {k: getattr(cfg, k) for k, v in expect.items() if getattr(cfg, k) != v}
    if cfg.mlp_in_bias != cfg.mlp_out_bias:
        wrong["mlp_in_bias/mlp_out_bias"] = (cfg.mlp_in_bias, cfg.mlp_out_bias)
    if cfg.head_norm_bias != cfg.norm_bias:
        wrong["head_norm_bias"] = cfg.head_norm_bias
    if wrong:
        raise ValueError(f"this config is not expressible as a transformers ModernBertConfig: {wrong} "
                         f"(ModernBERT needs {expect})")
    local = cfg.local_rope_theta if cfg.local_rope_theta is not None else cfg.rope_theta
    return {
        "model_type": "modernbert", "architectures": ["ModernBertModel"],
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
        "intermediate_size": cfg.intermediate_size, "max_position_embeddings": cfg.max_position_embeddings,
        "pad_token_id": cfg.pad_token_id, "initializer_range": cfg.initializer_range,
        "norm_eps": cfg.layer_norm_eps, "norm_bias": cfg.norm_bias, "hidden_activation": cfg.hidden_act,
        "attention_bias": cfg.attention_bias, "mlp_bias": cfg.mlp_in_bias,
        "layer_types": [{"global": "full_attention", "sliding": "sliding_attention"}[t]
                        for t in cfg.attention_layer_types],
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta},
                            "sliding_attention": {"rope_type": "default", "rope_theta": local}},
        "local_attention": cfg.local_attention,
        "global_attn_every_n_layers": cfg.global_attn_every_n_layers,
        "mlp_dropout": cfg.hidden_dropout_prob, "attention_dropout": cfg.attention_probs_dropout_prob,
        "embedding_dropout": cfg.embedding_dropout_prob if cfg.embedding_dropout_prob is not None
        else cfg.hidden_dropout_prob,
        "classifier_dropout": cfg.classifier_dropout or 0.0,
        "classifier_activation": cfg.head_act or cfg.hidden_act, "classifier_bias": cfg.head_bias,
        "decoder_bias": cfg.decoder_bias, "tie_word_embeddings": True,
        # ModernBERT's special-token ids where the vocabulary has them (transformers warns otherwise).
        **{k: (v if v < cfg.vocab_size else None) for k, v in SPECIAL_TOKEN_IDS},
    }



FUSED_QKV_KERNEL = Transform(
    lambda a, c: a.T.reshape(a.shape[1], 3, c.num_attention_heads, c.head_dim),
    lambda a, c: a.reshape(a.shape[0], -1).T)
FUSED_QKV_BIAS = Transform(lambda a, c: a.reshape(3, c.num_attention_heads, c.head_dim), lambda a, c: a.reshape(-1))
GLU_KERNEL = Transform(lambda a, c: a.T.reshape(a.shape[1], 2, -1), lambda a, c: a.reshape(a.shape[0], -1).T)
GLU_BIAS = Transform(lambda a, c: a.reshape(2, -1), lambda a, c: a.reshape(-1))

BACKBONE_RULES: list[Rule] = [
    Rule("embeddings.tok_embeddings.weight", "embeddings/word_embeddings/embedding"),
    *norm_rules("embeddings.norm", "embeddings/norm"),
    *norm_rules("layers.{layer}.attn_norm", "layer_{layer}/attention_norm"),
    Rule("layers.{layer}.attn.Wqkv.weight", "layer_{layer}/attention/qkv/kernel", FUSED_QKV_KERNEL),
    Rule("layers.{layer}.attn.Wqkv.bias", "layer_{layer}/attention/qkv/bias", FUSED_QKV_BIAS),
    Rule("layers.{layer}.attn.Wo.weight", "layer_{layer}/attention/out/kernel", OUT_KERNEL),
    Rule("layers.{layer}.attn.Wo.bias", "layer_{layer}/attention/out/bias"),
    *norm_rules("layers.{layer}.mlp_norm", "layer_{layer}/mlp_norm"),
    Rule("layers.{layer}.mlp.Wi.weight", "layer_{layer}/mlp/wi/kernel", GLU_KERNEL),
    Rule("layers.{layer}.mlp.Wi.bias", "layer_{layer}/mlp/wi/bias", GLU_BIAS),
    *linear_rules("layers.{layer}.mlp.Wo", "layer_{layer}/mlp/wo"),
    *norm_rules("final_norm", "final_norm"),
]
HEAD_RULES: dict[str, list[Rule]] = {
    "base": [],
    "mlm": [*linear_rules("head.dense", "mlm_head/transform"),
            *norm_rules("head.norm", "mlm_head/transform_norm"),
            Rule("decoder.bias", "mlm_head/bias")],
    # Fine-tuning a ModernBERT backbone (e.g. a from-scratch MLM export): the backbone loads, the
    # classifier starts fresh. jaxbert's classifier reads the [CLS] state directly; transformers'
    # ModernBertForSequenceClassification puts a dense + norm head (and mean or CLS pooling) in
    # front of it, so its trained head.* / classifier.* tensors are reported as ignored, never mapped.
    "sequence_classification": [],
    "token_classification": [],
}

KEYS = KeyTable(backbone=BACKBONE_RULES, hf_prefix="model.", heads=HEAD_RULES,
                benign=[r"decoder\.weight"], other_heads=[r"head\..*", r"decoder\..*", r"classifier\..*"])

HF_ARCHITECTURES = {"base": "ModernBertModel", "mlm": "ModernBertForMaskedLM"}
