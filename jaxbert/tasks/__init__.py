"""Tasks the training loop can run: each builds its model, data, loss, metrics and export.

A task class takes the run config and provides ``model``, ``sample_input``,
``pretrained_params``, ``train_iterator(batch_size, seed)``, ``eval_batches(split, batch_size)``,
``loss_fn(params, batch, rng, deterministic)``, ``predict_fn(params, batch)``,
``eval_metrics(outputs, sums)``, ``extra_state()`` and ``export(params, path)``.
"""

from __future__ import annotations

from typing import Any


def get_task(name: str) -> Any:
    """The task class registered as ``name``."""
    if name == "classification":
        from jaxbert.tasks.classification import ClassificationTask
        return ClassificationTask
    if name == "mlm":
        from jaxbert.tasks.mlm import MaskedLMTask
        return MaskedLMTask
    if name in _FEATURE_TASKS:  # downstream tasks on pre-tokenized features (issue #10)
        import importlib
        module, cls = _FEATURE_TASKS[name]
        return getattr(importlib.import_module(module), cls)
    raise ValueError(f"unknown task {name!r}; known: {['classification', 'mlm', *_FEATURE_TASKS]}")


_FEATURE_TASKS = {
    "token_classification": ("jaxbert.tasks.token_classification", "TokenClassificationTask"),
    "question_answering": ("jaxbert.tasks.question_answering", "QuestionAnsweringTask"),
    "multilabel": ("jaxbert.tasks.multilabel", "MultiLabelTask"),
    "regression": ("jaxbert.tasks.regression", "RegressionTask"),
    "contrastive": ("jaxbert.tasks.contrastive", "ContrastiveTask"),  # sentence embeddings (issue #7)
    "llm_embedding": ("jaxbert.tasks.llm_embedding", "LlmEmbeddingTask"),  # LLM embedders (issue #6)
}
