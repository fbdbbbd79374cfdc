"""Multi-label sequence classification (sigmoid per label) from JSONL, as a task for the training loop.

Config keys read (recipe: ``experiments/configs/finetune_multilabel.py``)::

    model.*                                 as for classification
    data.train / validation / test          JSONL; data.text_field (+ data.pair_field)
    data.label_field                        a list of labels per record (may be empty)
    data.labels                             the label set (None: sorted union over train)
    data.max_length, data.buckets, data.train_subset
    multilabel.tune_thresholds              tune per-label thresholds on the validation split
    multilabel.default_threshold            threshold before tuning / without validation (0.5)

Loss: sigmoid binary cross-entropy averaged over labels and examples. Evaluation turns
probabilities into label sets with per-label thresholds; when the validation split is
evaluated (always first, before test) the thresholds are re-tuned on it to maximise each
label's F1 (:func:`jaxbert.eval.multilabel.tune_thresholds`) and then used for test and
:meth:`MultiLabelTask.predict`; they are saved in the checkpoint (``extra_state``) and in the
HF export's ``config.json`` (``jaxbert_thresholds``). Metrics: ``micro_f1``, ``macro_f1``,
micro ``precision``/``recall``, ``subset_accuracy``, ``f1/<label>``, the same micro/macro F1
at the fixed 0.5 threshold (``micro_f1@0.5``, ``macro_f1@0.5``), and ``loss``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

import ml_collections

from jaxbert.data.labels import LabelMap
from jaxbert.data.sources import JsonlSource, describe_record
from jaxbert.eval.multilabel import apply_thresholds, multilabel_scores, tune_thresholds
from jaxbert.objectives.classification import sigmoid_cross_entropy
from jaxbert.tasks.base import register
from jaxbert.tasks.feature_task import FeatureTask, splits_of, subset_indices, text_features


def _label_list(source: Any, i: int, field: str) -> list:
    record = source[i]
    if field not in record:
        raise ValueError(f"{describe_record(source, i)}: no label field {field!r} (record has {sorted(record)})")
    value = record[field]
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{describe_record(source, i)}: multi-label field {field!r} must be a list of labels, "
                        f"got {type(value).__name__}: {value!r:.80}")
    return list(value)


def multi_hot(source: Any, label_map: LabelMap, indices: list[int] | None = None) -> np.ndarray:
    """``[n, num_labels]`` int32 targets; a label outside the set is an error naming the line."""
    indices = list(range(len(source))) if indices is None else indices
    out = np.zeros((len(indices), label_map.num_classes), np.int32)
    for r, i in enumerate(indices):
        for lab in _label_list(source, i, label_map.field):
            out[r, label_map.encode(lab, where=describe_record(source, i))] = 1
    return out


@register("multilabel")
class MultiLabelTask(FeatureTask):
    """Sigmoid multi-label classifier with per-label thresholds tuned on validation."""

    hf_task = "sequence_classification"

    @classmethod
    def config_section(cls) -> ml_collections.ConfigDict:
        c = super().config_section()
        c.multilabel = ml_collections.ConfigDict()
        c.multilabel.tune_thresholds = True  # per-label thresholds tuned on the validation split
        c.multilabel.default_threshold = 0.5
        return c

    def __init__(self, config: Any):
        d = config.data
        if not d.train:
            raise ValueError("data.train is required for multi-label classification")
        train = JsonlSource(os.path.expanduser(d.train), key="data.train")
        if d.get("labels"):
            labels = list(d.labels)
        else:
            labels = sorted({lab for i in range(len(train)) for lab in _label_list(train, i, d.label_field)})
            if not labels:
                raise ValueError(f"{train!r}: no labels found in field {d.label_field!r}")
        self.label_map = LabelMap(d.label_field, labels)
        ml = config.get("multilabel") or {}
        self.tune = bool(ml.get("tune_thresholds", True))
        self.thresholds = np.full(len(labels), float(ml.get("default_threshold", 0.5)))
        self.thresholds_tuned = False

        self.load_model_and_tokenizer(config, self.hf_task, len(labels))
        self.max_length = int(d.max_length)
        enc = lambda src, idx=None: text_features(src, self.tokenizer, max_length=self.max_length,  # noqa: E731
                                                  text_field=d.text_field, pair_field=d.pair_field, indices=idx)
        idx = subset_indices(len(train), d.get("train_subset"), d.get("train_subset_seed", 0))
        self.train_features = self._with_targets(enc(train, idx), multi_hot(train, self.label_map, idx))
        self.eval_features = {}
        for split in splits_of(config):
            src = JsonlSource(os.path.expanduser(d[split]), key=f"data.{split}")
            self.eval_features[split] = self._with_targets(enc(src), multi_hot(src, self.label_map))
        self.seq_pad = {"input_ids": self.tokenizer.pad_token_id or 0, "token_type_ids": 0}
        self.pad_feature = {"input_ids": np.array([self.tokenizer.cls_token_id, self.tokenizer.sep_token_id], np.int32),
                            "token_type_ids": np.zeros(2, np.int32), "targets": np.zeros(len(labels), np.int32)}
        self._finish_init(config)

    @staticmethod
    def _with_targets(features: list[dict], targets: np.ndarray) -> list[dict]:
        return [dict(f, targets=t) for f, t in zip(features, targets)]

    def pipeline_spec(self) -> dict:
        return {"task": self.name, "labels": list(self.label_map.labels)}

    # -------------------------------------------------------------------- model
    def loss_fn(self, params, batch, rng, deterministic: bool = False):
        logits = self.apply(params, batch, rng, deterministic)["logits"]
        return sigmoid_cross_entropy(logits, batch["targets"], batch.get("weights"))

    def predict_fn(self, params, batch):
        logits = self.apply(params, batch)["logits"]
        _, sums = sigmoid_cross_entropy(logits, batch["targets"], batch["weights"])
        return {"probs": jax.nn.sigmoid(logits), "targets": batch["targets"],
                "feature_index": batch["feature_index"], "weights": batch["weights"]}, sums

    @classmethod
    def config_rules(cls) -> tuple:
        from jaxbert.config_rules import number_in  # pylint: disable=import-outside-toplevel
        return super().config_rules() + (
            number_in("multilabel.default_threshold", 0, 1, "probability above which a label is on"),)

    def metric_names(self, split: str) -> frozenset[str]:
        per_label = {f"f1/{lab}" for lab in self.label_map.labels}
        return frozenset({"micro_f1", "macro_f1", "precision", "recall", "subset_accuracy", "micro_f1@0.5",
                          "macro_f1@0.5", "loss", "num_examples"} | per_label)

    def eval_metrics(self, outputs: dict[str, np.ndarray], sums: dict[str, float]) -> dict[str, float]:
        split, rows, _ = self.split_rows(outputs)
        probs, gold = outputs["probs"][rows], outputs["targets"][rows]
        if split == "validation" and self.tune:
            self.thresholds = tune_thresholds(probs, gold, default=0.5)
            self.thresholds_tuned = True
        scores = multilabel_scores(gold, apply_thresholds(probs, self.thresholds))
        fixed = multilabel_scores(gold, apply_thresholds(probs, 0.5))
        per_label = scores.pop("per_label_f1")
        metrics = dict(scores)
        metrics.update({f"f1/{lab}": f for lab, f in zip(self.label_map.labels, per_label)})
        metrics["micro_f1@0.5"], metrics["macro_f1@0.5"] = fixed["micro_f1"], fixed["macro_f1"]
        metrics["loss"] = sums["loss"] / max(sums["weight"], 1.0)
        metrics["num_examples"] = int(len(rows))
        return metrics

    def predict(self, params, texts: list[str], pairs: list[str] | None = None, batch_size: int = 64
                ) -> list[list[str]]:
        """The predicted label set of each text (current thresholds)."""
        d = self.config.data
        records = [{d.text_field: t, **({d.pair_field: p} if pairs else {})}
                   for t, p in zip(texts, pairs or [None] * len(texts))]
        feats = text_features(records, self.tokenizer, max_length=self.max_length, text_field=d.text_field,
                              pair_field=d.pair_field if pairs else None)
        feats = self._with_targets(feats, np.zeros((len(feats), self.label_map.num_classes), np.int32))
        probs = self.predict_features(params, feats, batch_size)["probs"]
        hot = apply_thresholds(probs, self.thresholds)
        return [[lab for lab, h in zip(self.label_map.labels, row) if h] for row in hot]

    # -------------------------------------------------------------------- persistence
    def extra_state(self) -> dict[str, Any]:
        return {"label_map": self.label_map.to_dict(), "thresholds": [float(t) for t in self.thresholds],
                "thresholds_tuned": self.thresholds_tuned}

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        if LabelMap.from_dict(extra["label_map"]) != self.label_map:
            raise ValueError(f"checkpoint label set {extra['label_map']['labels']} differs from this config's "
                             f"{list(self.label_map.labels)}")
        self.thresholds = np.asarray(extra["thresholds"], np.float64)
        self.thresholds_tuned = bool(extra.get("thresholds_tuned", False))

    def export_extra_config(self) -> dict[str, Any]:
        """HF ``BertForSequenceClassification`` with problem_type multi_label_classification + thresholds."""
        return {"problem_type": "multi_label_classification",
                "jaxbert_thresholds": [float(t) for t in self.thresholds]}
