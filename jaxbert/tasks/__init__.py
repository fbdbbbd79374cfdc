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
    raise ValueError(f"unknown task {name!r}; known: ['classification']")
