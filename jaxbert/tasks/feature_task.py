"""What the downstream tasks on pre-tokenized features share: model loading, batching, predicting.

Token classification, extractive QA, multi-label classification and regression tokenize their
data once into *features* (:mod:`jaxbert.data.features.pretokenized`) and differ only in targets,
loss and metrics. :class:`FeatureTask` gives them the training-loop interface
(``train_source``, ``eval_sources``, ``train_iterator``, ``eval_batches``, ``sample_input``)
from four attributes a subclass sets in ``__init__``:

    self.train_features   list of feature dicts (``len`` = the Trainer's examples per epoch)
    self.eval_features    {split: list of feature dicts}
    self.seq_pad          {sequence key: pad value}; ``input_ids`` -> the tokenizer's pad id
    self.pad_feature      a feature used for eval padding rows (weight 0)

Eval rows carry ``feature_index`` = the split's offset + the feature's position, so
``eval_metrics`` knows which split and which feature every output row belongs to
(:meth:`FeatureTask.split_rows`) even though the Trainer passes no split name.

Model + tokenizer loading and PEFT come from :class:`jaxbert.tasks.base.Task`;
:meth:`FeatureTask.config_section` holds the data keys these tasks share.
"""

from __future__ import annotations

import random
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import ml_collections
from ml_collections import config_dict

from jaxbert.compiler_options import compiler_options
from jaxbert.data.features import pretokenized as feature_pipeline
from jaxbert.tasks.base import Task

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def subset_indices(n: int, limit: int | None, seed: int = 0) -> list[int]:
    """All of ``range(n)``, or a seeded random ``limit`` of them in their original order."""
    if limit is None or limit >= n:
        return list(range(n))
    if limit <= 0:
        raise ValueError(f"data.train_subset must be positive, got {limit}")
    return sorted(random.Random(seed).sample(range(n), limit))


def splits_of(config: Any) -> list[str]:
    """The configured eval splits that have a path (``data.<split>``)."""
    return [s for s in config.eval_splits if config.data.get(s)]


class FeatureTask(Task):
    """Base class: training-loop plumbing over pre-tokenized features (see the module docstring)."""

    model: Any
    tokenizer: Any
    max_length: int
    train_features: list
    eval_features: dict
    seq_pad: dict
    pad_feature: dict

    @classmethod
    def config_section(cls) -> ml_collections.ConfigDict:
        """``data.train_subset`` / ``train_subset_seed`` / ``group_by_length`` (every feature task)."""
        c = ml_collections.ConfigDict()
        c.data = ml_collections.ConfigDict()
        c.data.train_subset = config_dict.placeholder(int)  # train on a seeded random subset of N records
        c.data.train_subset_seed = 0
        c.data.group_by_length = config_dict.placeholder(int)  # batches of similar length (G batches sorted together)
        return c

    @classmethod
    def config_rules(cls) -> tuple:
        """Ranges of the keys above (subclasses add theirs to these)."""
        from jaxbert.config_rules import int_at_least  # pylint: disable=import-outside-toplevel
        return (int_at_least("data.train_subset", 1, "records trained on", none_ok=True),
                int_at_least("data.group_by_length", 1, "batches sorted together by length", none_ok=True))

    def _finish_init(self, config: Any) -> None:
        """Call at the end of a subclass ``__init__``: offsets of eval splits, sample input, PEFT."""
        self.config = config
        self.eval_offsets, offset = {}, 0
        for split, feats in self.eval_features.items():
            self.eval_offsets[split] = offset
            offset += len(feats)
        self.sample_input = {k: np.zeros((1, self.max_length), np.int32) for k in MODEL_INPUTS}
        self._jit_predict = None
        self.attach_peft(config)

    # -------------------------------------------------------------------- data
    @property
    def train_source(self):
        return self.train_features

    @property
    def eval_sources(self) -> dict:
        return self.eval_features

    def pipeline_spec(self) -> dict:
        """Task settings recorded in the train iterator state (a resume must match them)."""
        return {"task": self.name}

    def train_iterator(self, batch_size: int, seed: int):
        return feature_pipeline.make_train_iterator(
            self.train_features, batch_size=batch_size, seed=seed, max_length=self.max_length,
            seq_pad=self.seq_pad, buckets=self.config.data.get("buckets"),
            group_by_length=self.config.data.get("group_by_length"), spec=self.pipeline_spec())

    def eval_batches(self, split: str, batch_size: int):
        return self._batches(self.eval_features[split], batch_size, self.eval_offsets[split])

    def _batches(self, features, batch_size, offset=0, single_host=False):
        kw = {"process_index": 0, "process_count": 1} if single_host else {}
        return feature_pipeline.make_eval_batches(
            features, batch_size=batch_size, max_length=self.max_length, seq_pad=self.seq_pad,
            pad_feature=self.pad_feature, buckets=self.config.data.get("buckets"), index_offset=offset, **kw)

    def split_rows(self, outputs: dict[str, np.ndarray]) -> tuple[str, np.ndarray, np.ndarray]:
        """``(split, rows, local_feature_index)`` of the real rows of one split's eval outputs."""
        idx = np.asarray(outputs["feature_index"])
        rows = np.flatnonzero(idx >= 0)
        if len(rows) == 0:
            raise ValueError("evaluation outputs hold no real rows")
        first = int(idx[rows[0]])
        for split, off in self.eval_offsets.items():
            if off <= first < off + len(self.eval_features[split]):
                local = idx[rows] - off
                if local.min() < 0 or local.max() >= len(self.eval_features[split]):
                    raise ValueError("evaluation outputs mix rows of several splits")
                return split, rows, local
        raise ValueError(f"feature index {first} belongs to no eval split")

    # -------------------------------------------------------------------- model
    def apply(self, params, batch, rng=None, deterministic: bool = True) -> dict:
        rngs = None if deterministic else {"dropout": rng}
        return self.model.apply({"params": params}, *(batch[k] for k in MODEL_INPUTS),
                                deterministic=deterministic, rngs=rngs)

    def predict_features(self, params, features: list, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Run ``predict_fn`` over ``features`` on this host; outputs in feature order."""
        if self._jit_predict is None:
            self._jit_predict = jax.jit(self.predict_fn, compiler_options=compiler_options())
        outs = []
        for batch in self._batches(features, batch_size, single_host=True):
            out, _ = self._jit_predict(params, batch)
            outs.append(jax.device_get(out))
        merged = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
        keep = merged["feature_index"] >= 0
        order = np.argsort(merged["feature_index"][keep], kind="stable")
        return {k: v[keep][order] for k, v in merged.items()}


def pad_outputs(x, length: int, value=0):
    """Pad axis 1 of ``x`` to ``length`` (eval batches may be bucketed shorter)."""
    pad = length - x.shape[1]
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def text_features(source: Any, tokenizer: Any, *, max_length: int, text_field: str, pair_field: str | None = None,
                  indices: list[int] | None = None, batch: int = 1024) -> list[dict[str, np.ndarray]]:
    """Records -> ``{"input_ids", "token_type_ids"}`` (truncated to ``max_length``, unpadded).

    A missing or non-string text field is an error naming the record (file and line).
    """
    from jaxbert.data.sources import describe_record  # pylint: disable=import-outside-toplevel
    indices = list(range(len(source))) if indices is None else list(indices)
    texts, pairs = [], []
    for i in indices:
        record = source[i]
        for field, dest in ((text_field, texts), (pair_field, pairs)):
            if field is None:
                continue
            value = record.get(field) if isinstance(record, dict) else None
            if not isinstance(value, str):
                got = "missing" if not isinstance(record, dict) or field not in record else type(value).__name__
                raise ValueError(f"{describe_record(source, i)}: text field {field!r} must be a str ({got})")
            dest.append(value)
    out = []
    for b0 in range(0, len(texts), batch):
        enc = tokenizer(texts[b0:b0 + batch], pairs[b0:b0 + batch] if pair_field else None, truncation=True,
                        max_length=max_length, return_attention_mask=False, return_token_type_ids=True)
        for ids, types in zip(enc["input_ids"], enc["token_type_ids"]):
            out.append({"input_ids": np.asarray(ids, np.int32), "token_type_ids": np.asarray(types, np.int32)})
    return out
