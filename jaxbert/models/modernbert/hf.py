"""ModernBERT's Hugging Face format: transformers' ``ModernBertModel`` / ``ModernBertForMaskedLM`` keys
(backbone under ``model.`` in task models) <-> :class:`~jaxbert.models.transformer.model.Encoder` paths.

Fused projections: ``Wqkv [3*H*D, E]`` -> ``qkv [E, 3, H, D]``; GLU ``Wi [2*I, E]`` -> ``wi [E, 2, I]``.
"""

from __future__ import annotations

from jaxbert.convert.rules import OUT_KERNEL, KeyTable, Rule, Transform, linear_rules, norm_rules

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
