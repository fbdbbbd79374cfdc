"""Sequence classification (single text or text pair) from JSONL, as a task for the training loop.

Config keys read (see ``experiments/configs/finetune_classification.py``)::

    model.init_from        HF directory, or "asset:minilm" (None: random init of model.preset)
    model.preset           registry name used when init_from is None
    model.overrides        dict of config fields (dtype, hidden_dropout_prob, ...)
    data.train / validation / test   JSONL paths (validation/test may be None)
    data.text_field, data.pair_field, data.label_field, data.labels (None: inferred from train)
    data.max_length, data.buckets
    eval_splits            which of validation/test to evaluate

Predictions are class ids; metrics are accuracy and macro-F1 over real (weight 1) rows.
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxbert.data.features.text import check_records, make_eval_batches, make_train_iterator
from jaxbert.data.labels import LabelMap
from jaxbert.data.sources import JsonlSource
from jaxbert.eval.metrics import accuracy_and_f1
from jaxbert.objectives.classification import softmax_cross_entropy
from jaxbert.tasks.base import Task, register

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _source(path: str | None, what: str) -> JsonlSource | None:
    if path is None:
        return None
    return JsonlSource(os.path.expanduser(path), key=f"data.{what}")


@register("classification")
class ClassificationTask(Task):
    """Builds the model, data and loss for fine-tuning a sequence classifier."""

    hf_task = "sequence_classification"

    @classmethod
    def config_section(cls) -> ml_collections.ConfigDict:
        c = ml_collections.ConfigDict()
        c.label_smoothing = 0.0
        return c

    @classmethod
    def config_rules(cls) -> tuple:
        from jaxbert.config_rules import number_in  # pylint: disable=import-outside-toplevel
        return (number_in("label_smoothing", 0, 1, "mass spread over the other classes", high_open=True),)

    def __init__(self, config: Any):
        self.config = config
        data = config.data
        self.train_source = _source(data.train, "train")
        if self.train_source is None:
            raise ValueError("data.train is required for classification")
        self.eval_sources = {s: _source(data.get(s), s) for s in config.eval_splits if data.get(s)}
        if data.labels is not None:
            self.label_map = LabelMap(data.label_field, list(data.labels))
        else:
            self.label_map = LabelMap.infer(self.train_source, data.label_field)
        self.check_records()  # fail before training on any bad record, naming the file and line

        self.load_model_and_tokenizer(config, self.hf_task, self.label_map.num_classes)
        self.max_length = int(data.max_length)
        self.sample_input = {k: np.zeros((1, self.max_length), np.int32) for k in MODEL_INPUTS}
        self.attach_peft(config)

    # -------------------------------------------------------------------- data
    def check_records(self) -> None:
        """Text, pair and label fields of every record of every split, in one pass (done once, in ``__init__``)."""
        if getattr(self, "_records_checked", False):
            return
        d = self.config.data
        for src in [self.train_source, *self.eval_sources.values()]:
            check_records(src, text_field=d.text_field, pair_field=d.pair_field, label_map=self.label_map)
        self._records_checked = True

    def train_iterator(self, batch_size: int, seed: int):
        d = self.config.data
        return make_train_iterator(self.train_source, self.tokenizer, batch_size=batch_size, seed=seed,
                                   max_length=self.max_length, label_map=self.label_map,
                                   text_field=d.text_field, pair_field=d.pair_field,
                                   buckets=d.get("buckets"))

    def eval_batches(self, split: str, batch_size: int):
        d = self.config.data
        return make_eval_batches(self.eval_sources[split], self.tokenizer, batch_size=batch_size,
                                 max_length=self.max_length, label_map=self.label_map,
                                 text_field=d.text_field, pair_field=d.pair_field)

    # -------------------------------------------------------------------- model
    def _logits(self, params, batch, rng, deterministic):
        rngs = None if deterministic else {"dropout": rng}
        return self.model.apply({"params": params}, *(batch[k] for k in MODEL_INPUTS),
                                deterministic=deterministic, rngs=rngs)["logits"]

    def loss_fn(self, params, batch, rng, deterministic: bool = False):
        """Weighted softmax cross-entropy; ``sums`` has loss/accuracy numerators and ``weight``."""
        logits = self._logits(params, batch, rng, deterministic)
        return softmax_cross_entropy(logits, batch["labels"], batch.get("weights"),
                                     self.config.get("label_smoothing", 0.0))

    def predict_fn(self, params, batch):
        logits = self._logits(params, batch, None, True)
        _, sums = softmax_cross_entropy(logits, batch["labels"], batch.get("weights"))
        return {"predictions": jnp.argmax(logits, -1).astype(jnp.int32), "labels": batch["labels"],
                "weights": batch["weights"]}, sums

    def metric_names(self, split: str) -> frozenset[str]:
        binary = {"f1"} if self.label_map.num_classes == 2 else set()
        return frozenset({"accuracy", "macro_f1", "loss", "num_examples"} | binary)

    def eval_metrics(self, outputs: dict[str, np.ndarray], sums: dict[str, float]) -> dict[str, float]:
        keep = outputs["weights"] > 0
        metrics = accuracy_and_f1(outputs["predictions"][keep], outputs["labels"][keep],
                                  num_classes=self.label_map.num_classes)
        metrics["loss"] = sums["loss"] / max(sums["weight"], 1.0)
        metrics["num_examples"] = int(keep.sum())
        return metrics

    # -------------------------------------------------------------------- persistence
    def extra_state(self) -> dict[str, Any]:
        return {"label_map": self.label_map.to_dict()}
