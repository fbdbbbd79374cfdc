"""Token classification (POS tagging, NER) from JSONL word/tag records, as a task for the training loop.

Config keys read (engine defaults in ``experiments/configs/common.py``, this task's in
:meth:`TokenClassificationTask.config_section`; recipe:
``experiments/configs/finetune_token_classification.py``)::

    model.init_from / model.preset / model.overrides    as for classification
    data.train / validation / test     JSONL, one sentence per line
    data.tokens_field, data.tags_field words and their tags (default "tokens", "tags")
    data.labels                        the tag set (None: sorted distinct tags of train)
    data.label_alignment               "first" (label the first piece) | "all" (every piece)
    data.tag_scheme                    "auto" | "none" (plain tags, e.g. POS) | "bio" | "bioes"
    data.strict_spans                  seqeval strict mode for span metrics (default False)
    data.max_length, data.buckets      pieces per chunk incl. [CLS]/[SEP]; length buckets
    data.train_subset(_seed)           train on a seeded random subset of sentences

Words are split into pieces, sentences longer than ``max_length`` into chunks between words
(:mod:`jaxbert.data.features.tokens`), so every word of every sentence is predicted. Metrics
per split (word level, each word read at its first piece): ``accuracy`` (token accuracy,
seqeval's ``accuracy_score``), ``macro_f1`` over tags and, with a BIO/BIOES scheme, span
``precision``/``recall``/``f1`` (seqeval-compatible, :mod:`jaxbert.eval.seqeval`); ``loss``
is per labelled piece. :meth:`TokenClassificationTask.predict_words` returns tags per input word.
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import numpy as np

import ml_collections

from jaxbert.data.labels import LabelMap
from jaxbert.data.sources import JsonlSource, describe_record
from jaxbert.data.features.tokens import IGNORE, TokenFeatures, build_token_features, read_words
from jaxbert.eval import seqeval
from jaxbert.eval.metrics import accuracy_and_f1
from jaxbert.objectives.token_span import token_cross_entropy
from jaxbert.tasks.base import register
from jaxbert.tasks.feature_task import FeatureTask, pad_outputs, splits_of, subset_indices


def infer_tag_set(source: Any, tokens_field: str, tags_field: str) -> list[str]:
    """Sorted distinct tags of ``source`` (every record checked: equal lengths, list fields)."""
    tags = set()
    for i in range(len(source)):
        _, t = read_words(source, i, tokens_field, tags_field)
        for j, tag in enumerate(t):
            if not isinstance(tag, (str, int)) or isinstance(tag, bool):
                raise TypeError(f"{describe_record(source, i)}: {tags_field}[{j}] must be a str or int "
                                f"tag, got {type(tag).__name__}")
        tags.update(t)
    if not tags:
        raise ValueError(f"{source!r}: no tags found in field {tags_field!r}")
    return sorted(tags, key=lambda x: (isinstance(x, str), x))


@register("token_classification")
class TokenClassificationTask(FeatureTask):
    """Builds the model, word-piece features and the token-level loss/metrics."""

    hf_task = "token_classification"
    token_outputs = True

    @classmethod
    def config_section(cls) -> ml_collections.ConfigDict:
        c = super().config_section()
        c.data.tokens_field = "tokens"  # words ...
        c.data.tags_field = "tags"  # ... and one tag per word
        c.data.label_alignment = "first"  # "first" piece of each word labelled | "all" pieces
        c.data.tag_scheme = "auto"  # auto | none (plain tags, POS) | bio | bioes
        c.data.strict_spans = False  # seqeval strict mode for span P/R/F1
        return c

    def __init__(self, config: Any):
        d = config.data
        if not d.train:
            raise ValueError("data.train is required for token classification")
        self.tokens_field, self.tags_field = d.get("tokens_field", "tokens"), d.get("tags_field", "tags")
        self.alignment = d.get("label_alignment", "first")
        train = JsonlSource(os.path.expanduser(d.train), key="data.train")
        labels = list(d.labels) if d.get("labels") else infer_tag_set(train, self.tokens_field, self.tags_field)
        self.label_map = LabelMap(self.tags_field, labels)
        scheme = d.get("tag_scheme", "auto") or "auto"
        self.scheme = seqeval.detect_scheme(labels) if scheme == "auto" else scheme
        seqeval.check_scheme(labels, self.scheme)
        self.strict = bool(d.get("strict_spans", False))

        self.load_model_and_tokenizer(config, self.hf_task, self.label_map.num_classes)
        self.max_length = int(d.max_length)
        build = lambda src, idx=None: build_token_features(  # noqa: E731
            src, self.tokenizer, max_length=self.max_length, label_map=self.label_map,
            tokens_field=self.tokens_field, tags_field=self.tags_field, alignment=self.alignment, indices=idx)
        idx = subset_indices(len(train), d.get("train_subset"), d.get("train_subset_seed", 0))
        self.train_tokens = build(train, idx)
        self.train_features = self.train_tokens.features
        self.eval_tokens: dict[str, TokenFeatures] = {}
        self.eval_gold: dict[str, list[list[int]]] = {}
        for split in splits_of(config):
            src = JsonlSource(os.path.expanduser(d[split]), key=f"data.{split}")
            self.eval_tokens[split] = build(src)
            self.eval_gold[split] = [[self.label_map.encode(t) for t in read_words(src, i, self.tokens_field,
                                                                                    self.tags_field)[1]]
                                     for i in range(len(src))]
        self.eval_features = {s: tf.features for s, tf in self.eval_tokens.items()}
        pad = self.tokenizer.pad_token_id or 0
        self.seq_pad = {"input_ids": pad, "labels": IGNORE}
        self.pad_feature = {"input_ids": np.array([self.tokenizer.cls_token_id, self.tokenizer.sep_token_id],
                                                  np.int32), "labels": np.full(2, IGNORE, np.int32)}
        self._finish_init(config)

    def pipeline_spec(self) -> dict:
        return {"task": self.name, "labels": list(self.label_map.labels), "alignment": self.alignment}

    # -------------------------------------------------------------------- model
    def loss_fn(self, params, batch, rng, deterministic: bool = False):
        logits = self.apply(params, batch, rng, deterministic)["logits"]
        return token_cross_entropy(logits, batch["labels"], batch.get("weights"))

    def predict_fn(self, params, batch):
        logits = self.apply(params, batch)["logits"]
        out = {"predictions": pad_outputs(jnp.argmax(logits, -1).astype(jnp.int32), self.max_length),
               "feature_index": batch["feature_index"], "weights": batch["weights"]}
        if "labels" in batch:
            _, sums = token_cross_entropy(logits, batch["labels"], batch["weights"])
        else:
            sums = {"weight": jnp.sum(batch["weights"])}
        return out, sums

    def word_metrics(self, gold: list[list[int]], pred: list[np.ndarray]) -> dict[str, float]:
        """Token accuracy, tag macro-F1 and (BIO/BIOES) span P/R/F1 of per-word label ids."""
        flat_g = np.concatenate([np.asarray(g, np.int64) for g in gold]) if gold else np.zeros(0, np.int64)
        flat_p = np.concatenate([np.asarray(p, np.int64) for p in pred]) if pred else np.zeros(0, np.int64)
        out = accuracy_and_f1(flat_p, flat_g, self.label_map.num_classes)
        out.pop("f1", None)
        out["num_words"] = int(len(flat_g))
        out["num_sentences"] = len(gold)
        if self.scheme != "none":
            names = lambda seqs: [[self.label_map.decode(i) for i in s] for s in seqs]  # noqa: E731
            spans = seqeval.span_scores(names(gold), names(pred), strict=self.strict, scheme=self.scheme)
            out.update({k: v for k, v in spans.items()})
        return out

    def metric_names(self, split: str) -> frozenset[str]:
        spans = set()
        if self.scheme != "none":  # per-type f1/TYPE of the types in the split: score its gold against itself
            gold = [[self.label_map.decode(i) for i in s] for s in self.eval_gold[split]]
            spans = set(seqeval.span_scores(gold, gold, strict=self.strict, scheme=self.scheme))
        return frozenset({"accuracy", "macro_f1", "num_words", "num_sentences", "loss"} | spans)

    def eval_metrics(self, outputs: dict[str, np.ndarray], sums: dict[str, float]) -> dict[str, float]:
        split, rows, local = self.split_rows(outputs)
        pred = self.eval_tokens[split].word_predictions(outputs["predictions"][rows], local)
        metrics = self.word_metrics(self.eval_gold[split], pred)
        metrics["loss"] = sums["loss"] / max(sums["weight"], 1.0)
        return metrics

    def predict_words(self, params, sentences: list[list[str]], batch_size: int = 64) -> list[list[str]]:
        """The predicted tag of every word of every sentence (lists of words in, tags out)."""
        records = [{self.tokens_field: list(s)} for s in sentences]
        tf = build_token_features(records, self.tokenizer, max_length=self.max_length, label_map=None,
                                  tokens_field=self.tokens_field, tags_field=None)
        if not tf.features:
            return [[] for _ in sentences]
        out = self.predict_features(params, tf.features, batch_size)
        pred = tf.word_predictions(out["predictions"], out["feature_index"])
        return [[self.label_map.decode(i) for i in p] for p in pred]

    # -------------------------------------------------------------------- persistence
    def extra_state(self) -> dict[str, Any]:
        return {"label_map": self.label_map.to_dict(), "label_alignment": self.alignment, "tag_scheme": self.scheme}

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        saved = LabelMap.from_dict(extra["label_map"])
        if saved != self.label_map:
            raise ValueError(f"checkpoint label set {list(saved.labels)} differs from this config's "
                             f"{list(self.label_map.labels)}")
