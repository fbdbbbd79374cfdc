"""The ``tiny`` and ``runlocal`` variants every fine-tuning config offers (one definition each)."""

from __future__ import annotations

import ml_collections


def tiny_bert(c: ml_collections.ConfigDict, learning_rate: float = 1e-3) -> None:
    """``tiny``: a randomly initialised 2-layer BERT (``bert-tiny``) with MiniLM's tokenizer (tests, smoke runs)."""
    c.model.init_from = None
    c.model.preset = "bert-tiny"
    c.data.tokenizer = "asset:minilm"
    c.optim.learning_rate = learning_rate


def smoke_run(c: ml_collections.ConfigDict, steps: int, batch_size: int, eval_batch_size: int | None = None,
              log_every: int = 2) -> None:
    """``runlocal``: ``steps`` steps of ``batch_size`` rows, logged every ``log_every`` steps (seconds-long run)."""
    c.num_train_steps = steps
    c.batch_size = batch_size
    if eval_batch_size is not None:
        c.eval_batch_size = eval_batch_size
    c.log_every = log_every
