"""Task models: a backbone (any encoder module taking ``config``) plus a head from :mod:`heads`.

Every task model keeps the backbone's parameters under ``encoder/`` and its head under a
fixed name, so optimizer masks and converters address them the same way for any architecture::

    EncoderForMaskedLM                 encoder/..., mlm_head/...
    EncoderForSequenceClassification   encoder/..., classifier/out/{kernel,bias}
    EncoderForTokenClassification      encoder/..., classifier/out/{kernel,bias}
    EncoderForQuestionAnswering        encoder/..., qa_head/out/{kernel,bias}

All return a dict of float32 arrays (``logits``; or ``start_logits``/``end_logits``) plus
``last_hidden_state``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import flax.linen as nn

from jaxbert.models.heads import ClassificationHead, MaskedLMHead, SpanHead

TASKS = ("base", "mlm", "sequence_classification", "token_classification", "question_answering")


def _classifier_dropout(cfg) -> float:
    p = getattr(cfg, "classifier_dropout", None)
    return cfg.hidden_dropout_prob if p is None else p


def _encode(model: nn.Module, input_ids, attention_mask, token_type_ids, position_ids, deterministic: bool,
            **backbone_kwargs: Any) -> Any:
    """Run ``model.backbone`` as the child ``encoder`` of a compact task model (call inside ``__call__``)."""
    return model.backbone(model.config, name="encoder")(input_ids, attention_mask, token_type_ids, position_ids,
                                                        deterministic=deterministic, **backbone_kwargs)


def _classifier(cfg: Any, num_labels: int, pre_activation: str | None = None) -> ClassificationHead:
    """The ``classifier`` head: dropout (``classifier_dropout``, else ``hidden_dropout_prob``) and
    ``num_labels`` outputs, after a dense + ``pre_activation`` layer when one is given."""
    return ClassificationHead(num_labels, _classifier_dropout(cfg), cfg.initializer_range, cfg.compute_dtype,
                              cfg.storage_dtype, pre_activation=pre_activation, name="classifier")


class EncoderForMaskedLM(nn.Module):
    """Backbone + MLM head tied to the input embeddings. ``logits [b, l, vocab]``.

    ``masked_positions [b, m]`` (optional) restricts the head to those positions (``[b, m, vocab]``),
    which saves the vocabulary projection on unmasked tokens.
    """

    config: Any
    backbone: Any

    def setup(self):
        self.encoder = self.backbone(self.config)
        cfg = self.config
        # Architectures whose head differs from BERT's (ModernBERT: no biases) say so in their config.
        options = dict(activation=cfg.hidden_act)
        options.update(cfg.mlm_head_options() if hasattr(cfg, "mlm_head_options") else {})
        self.mlm_head = MaskedLMHead(cfg.hidden_size, cfg.vocab_size, layer_norm_eps=cfg.layer_norm_eps,
                                     initializer_range=cfg.initializer_range, dtype=cfg.compute_dtype,
                                     param_dtype=cfg.storage_dtype, **options)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 masked_positions=None, deterministic: bool = True, **encoder_kwargs):
        """``encoder_kwargs`` go to the backbone (e.g. ``segment_ids``, ``unpad_index``)."""
        out = self.encoder(input_ids, attention_mask, token_type_ids, position_ids, deterministic=deterministic,
                           **encoder_kwargs)
        h = out.last_hidden_state
        if masked_positions is not None:
            h = jnp.take_along_axis(h, masked_positions[..., None], axis=1)
        logits = self.mlm_head(h, self.encoder.word_embedding_table())
        return {"logits": logits, "last_hidden_state": out.last_hidden_state}


class _LabelsModel(nn.Module):
    """Fields of the classifier task models: ``config``, ``backbone`` (a module class taking it), ``num_labels``."""

    config: Any
    backbone: Any
    num_labels: int = 2


class EncoderForSequenceClassification(_LabelsModel):
    """Backbone + pooler + classifier. ``logits [b, num_labels]`` (regression: ``num_labels=1``).

    The head reads token 0 only, so a backbone that can (``supports_first_token_only``, e.g.
    BERT) is asked to run its last block for that token alone; ``last_hidden_state`` is then
    ``[b, 1, embed]``.
    """

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True):
        kwargs = {"first_token_only": True} if getattr(self.backbone, "supports_first_token_only", False) else {}
        out = _encode(self, input_ids, attention_mask, token_type_ids, position_ids, deterministic, **kwargs)
        pooled = out.pooler_output if out.pooler_output is not None else out.last_hidden_state[:, 0]
        pre_activation = getattr(self.config, "classifier_pre_activation", None)
        logits = _classifier(self.config, self.num_labels, pre_activation)(pooled, deterministic)
        return {"logits": logits, "last_hidden_state": out.last_hidden_state}


class EncoderForTokenClassification(_LabelsModel):
    """Backbone + per-token classifier. ``logits [b, l, num_labels]``."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True):
        out = _encode(self, input_ids, attention_mask, token_type_ids, position_ids, deterministic)
        logits = _classifier(self.config, self.num_labels)(out.last_hidden_state, deterministic)
        return {"logits": logits, "last_hidden_state": out.last_hidden_state}


class EncoderForQuestionAnswering(nn.Module):
    """Backbone + span head. ``start_logits, end_logits [b, l]``."""

    config: Any
    backbone: Any

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True):
        cfg = self.config
        out = _encode(self, input_ids, attention_mask, token_type_ids, position_ids, deterministic)
        start, end = SpanHead(cfg.initializer_range, cfg.compute_dtype, cfg.storage_dtype, name="qa_head")(
            out.last_hidden_state)
        return {"start_logits": start, "end_logits": end, "last_hidden_state": out.last_hidden_state}


def build_task_model(config: Any, backbone: Any, task: str = "base", num_labels: int | None = None) -> nn.Module:
    """The Linen module for ``task`` on ``backbone``. ``base`` returns the bare backbone.

    MLM and QA backbones are built without the pooler (as transformers does).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {TASKS}")
    if task == "base":
        return backbone(config)
    if task in ("mlm", "question_answering", "token_classification") and getattr(config, "add_pooling_layer", False):
        config = config.replace(add_pooling_layer=False)
    if task == "mlm":
        return EncoderForMaskedLM(config, backbone)
    if task == "question_answering":
        return EncoderForQuestionAnswering(config, backbone)
    if num_labels is None or num_labels < 1:
        raise ValueError(f"task {task!r} needs num_labels >= 1, got {num_labels}")
    if task == "sequence_classification":
        return EncoderForSequenceClassification(config, backbone, num_labels)
    return EncoderForTokenClassification(config, backbone, num_labels)
