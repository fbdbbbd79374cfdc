"""Sequence regression (one real-valued score per text or text pair), as a task for the training loop.

Config keys read (recipe: ``experiments/configs/finetune_regression.py``)::

    model.*                                 as for classification
    data.train / validation / test          JSONL; data.text_field (+ data.pair_field)
    data.label_field                        the numeric target
    data.max_length, data.buckets, data.train_subset

The model regresses the *standardised* target ``(y - mean) / std`` (train-split statistics,
saved in the checkpoint), so the head starts at the right scale whatever the target's units;
predictions, metrics and the HF export are in the original units (the export folds
``std`` and ``mean`` into the head's kernel and bias, so ``BertForSequenceClassification``
with ``problem_type="regression"`` predicts raw scores). Metrics: ``mse``, ``rmse``,
``pearson``, ``spearman`` (original units) and ``loss`` (MSE of standardised targets).
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import numpy as np

from jaxbert.data.sources import JsonlSource, describe_record
from jaxbert.eval.regression import regression_scores
from jaxbert.objectives.classification import mean_squared_error
from jaxbert.tasks.base import register
from jaxbert.tasks.feature_task import FeatureTask, splits_of, subset_indices, text_features


def read_targets(source: Any, field: str, indices: list[int] | None = None) -> np.ndarray:
    """float64 targets; a missing, non-numeric or non-finite value is an error naming the line."""
    indices = list(range(len(source))) if indices is None else indices
    out = np.zeros(len(indices), np.float64)
    for r, i in enumerate(indices):
        record = source[i]
        if field not in record:
            raise ValueError(f"{describe_record(source, i)}: no target field {field!r} (record has {sorted(record)})")
        v = record[field]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{describe_record(source, i)}: target {field!r} must be a finite number, got {v!r}")
        out[r] = float(v)
    return out


@register("regression")
class RegressionTask(FeatureTask):
    """A one-output head trained with MSE on standardised targets."""

    hf_task = "sequence_classification"

    def __init__(self, config: Any):
        d = config.data
        if not d.train:
            raise ValueError("data.train is required for regression")
        train = JsonlSource(os.path.expanduser(d.train), key="data.train")
        self.load_model_and_tokenizer(config, self.hf_task, 1)
        self.max_length = int(d.max_length)
        enc = lambda src, idx=None: text_features(src, self.tokenizer, max_length=self.max_length,  # noqa: E731
                                                  text_field=d.text_field, pair_field=d.pair_field, indices=idx)
        idx = subset_indices(len(train), d.get("train_subset"), d.get("train_subset_seed", 0))
        y = read_targets(train, d.label_field, idx)
        self.mean, self.std = float(y.mean()), float(y.std()) or 1.0
        self.train_features = self._with_targets(enc(train, idx), y)
        self.eval_features = {}
        for split in splits_of(config):
            src = JsonlSource(os.path.expanduser(d[split]), key=f"data.{split}")
            self.eval_features[split] = self._with_targets(enc(src), read_targets(src, d.label_field))
        self.seq_pad = {"input_ids": self.tokenizer.pad_token_id or 0, "token_type_ids": 0}
        self.pad_feature = {"input_ids": np.array([self.tokenizer.cls_token_id, self.tokenizer.sep_token_id], np.int32),
                            "token_type_ids": np.zeros(2, np.int32), "targets": np.float32(0.0)}
        self._finish_init(config)

    def _with_targets(self, features: list[dict], y: np.ndarray) -> list[dict]:
        z = ((y - self.mean) / self.std).astype(np.float32)
        return [dict(f, targets=t) for f, t in zip(features, z)]

    def pipeline_spec(self) -> dict:
        return {"task": self.name, "target_mean": self.mean, "target_std": self.std}

    # -------------------------------------------------------------------- model
    def loss_fn(self, params, batch, rng, deterministic: bool = False):
        pred = self.apply(params, batch, rng, deterministic)["logits"]
        return mean_squared_error(pred, batch["targets"], batch.get("weights"))

    def predict_fn(self, params, batch):
        pred = self.apply(params, batch)["logits"]
        _, sums = mean_squared_error(pred, batch["targets"], batch["weights"])
        return {"predictions": pred[:, 0], "targets": batch["targets"], "feature_index": batch["feature_index"],
                "weights": batch["weights"]}, sums

    def to_units(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z, np.float64) * self.std + self.mean

    def metric_names(self, split: str) -> frozenset[str]:
        return frozenset({"mse", "rmse", "pearson", "spearman", "loss", "num_examples"})

    def eval_metrics(self, outputs: dict[str, np.ndarray], sums: dict[str, float]) -> dict[str, float]:
        _, rows, _ = self.split_rows(outputs)
        metrics = regression_scores(self.to_units(outputs["predictions"][rows]),
                                    self.to_units(outputs["targets"][rows]))
        metrics["loss"] = sums["loss"] / max(sums["weight"], 1.0)
        metrics["num_examples"] = int(len(rows))
        return metrics

    def predict(self, params, texts: list[str], pairs: list[str] | None = None, batch_size: int = 64) -> np.ndarray:
        """Predicted scores (original units) for texts (and optional second segments)."""
        d = self.config.data
        records = [{d.text_field: t, **({d.pair_field: p} if pairs else {})}
                   for t, p in zip(texts, pairs or [None] * len(texts))]
        feats = text_features(records, self.tokenizer, max_length=self.max_length, text_field=d.text_field,
                              pair_field=d.pair_field if pairs else None)
        feats = [dict(f, targets=np.float32(0.0)) for f in feats]
        return self.to_units(self.predict_features(params, feats, batch_size)["predictions"])

    # -------------------------------------------------------------------- persistence
    def extra_state(self) -> dict[str, Any]:
        return {"target_mean": self.mean, "target_std": self.std}

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        self.mean, self.std = float(extra["target_mean"]), float(extra["target_std"])

    def prepare_export_params(self, params) -> dict:
        """Params whose head outputs original units: ``kernel * std``, ``bias * std + mean``."""
        params = jax.device_get(params)
        head = params["classifier"]["out"]
        new_head = {"kernel": np.asarray(head["kernel"]) * self.std,
                    "bias": np.asarray(head["bias"]) * self.std + self.mean}
        return {**params, "classifier": {**params["classifier"], "out": new_head}}

    def export_id2label(self) -> dict[int, str]:
        return {0: "score"}

    def export_extra_config(self) -> dict[str, Any]:
        """HF ``BertForSequenceClassification`` (num_labels 1, problem_type regression)."""
        return {"problem_type": "regression"}
