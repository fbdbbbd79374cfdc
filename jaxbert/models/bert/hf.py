"""BERT's Hugging Face format: ``transformers.BertModel`` / ``BertFor*`` keys <-> :class:`BertModel` paths.

::

    HF key (under "bert." in task models)                 jaxbert path                       transform
    embeddings.{word,position,token_type}_embeddings      embeddings/*/embedding             -
    embeddings.LayerNorm                                  embeddings/norm                    -
    encoder.layer.{i}.attention.self.{query,key,value}    layer_{i}/attention/{q,k,v}        [E, H, D]
    encoder.layer.{i}.attention.output.dense              layer_{i}/attention/out            [H, D, E]
    encoder.layer.{i}.attention.output.LayerNorm          layer_{i}/attention_norm           -
    encoder.layer.{i}.intermediate.dense / output.dense   layer_{i}/mlp/wi / wo              Linear
    encoder.layer.{i}.output.LayerNorm                    layer_{i}/mlp_norm                 -
    pooler.dense                                          pooler/dense                       Linear
    cls.predictions.transform.{dense,LayerNorm}, .bias    mlm_head/{transform,transform_norm,bias}
    classifier / qa_outputs                               classifier/out / qa_head/out       Linear
"""

from __future__ import annotations

from jaxbert.convert.rules import (OUT_KERNEL, QKV_BIAS, QKV_KERNEL, KeyTable, Rule, linear_rules,
                                   norm_rules)

BACKBONE_RULES: list[Rule] = [
    Rule("embeddings.word_embeddings.weight", "embeddings/word_embeddings/embedding"),
    Rule("embeddings.position_embeddings.weight", "embeddings/position_embeddings/embedding"),
    Rule("embeddings.token_type_embeddings.weight", "embeddings/token_type_embeddings/embedding"),
    *norm_rules("embeddings.LayerNorm", "embeddings/norm"),
    Rule("encoder.layer.{layer}.attention.self.{qkv}.weight", "layer_{layer}/attention/{qkv}/kernel", QKV_KERNEL),
    Rule("encoder.layer.{layer}.attention.self.{qkv}.bias", "layer_{layer}/attention/{qkv}/bias", QKV_BIAS),
    Rule("encoder.layer.{layer}.attention.output.dense.weight", "layer_{layer}/attention/out/kernel", OUT_KERNEL),
    Rule("encoder.layer.{layer}.attention.output.dense.bias", "layer_{layer}/attention/out/bias"),
    *norm_rules("encoder.layer.{layer}.attention.output.LayerNorm", "layer_{layer}/attention_norm"),
    *linear_rules("encoder.layer.{layer}.intermediate.dense", "layer_{layer}/mlp/wi"),
    *linear_rules("encoder.layer.{layer}.output.dense", "layer_{layer}/mlp/wo"),
    *norm_rules("encoder.layer.{layer}.output.LayerNorm", "layer_{layer}/mlp_norm"),
    *linear_rules("pooler.dense", "pooler/dense"),
]

# Head rules per task: HF keys (no backbone prefix) -> jaxbert paths at the task-model root.
HEAD_RULES: dict[str, list[Rule]] = {
    "base": [],
    "mlm": [*linear_rules("cls.predictions.transform.dense", "mlm_head/transform"),
            *norm_rules("cls.predictions.transform.LayerNorm", "mlm_head/transform_norm"),
            Rule("cls.predictions.bias", "mlm_head/bias")],
    "sequence_classification": linear_rules("classifier", "classifier/out"),
    "token_classification": linear_rules("classifier", "classifier/out"),
    "question_answering": linear_rules("qa_outputs", "qa_head/out"),
}

KEYS = KeyTable(
    backbone=BACKBONE_RULES, hf_prefix="bert.", heads=HEAD_RULES,
    # buffers and the decoder tied to the word embeddings
    benign=[r"embeddings\.position_ids", r"cls\.predictions\.decoder\.(weight|bias)"],
    # heads other than the one being loaded (e.g. NSP, or an MLM head loaded for classification)
    other_heads=[r"cls\..*", r"classifier\..*", r"qa_outputs\..*"],
    # MLM task models and add_pooling_layer=False build no pooler: a checkpoint's pooler is then ignored
    optional=[r"pooler/.*"])

HF_ARCHITECTURES = {
    "base": "BertModel", "mlm": "BertForMaskedLM", "sequence_classification": "BertForSequenceClassification",
    "token_classification": "BertForTokenClassification", "question_answering": "BertForQuestionAnswering",
}
