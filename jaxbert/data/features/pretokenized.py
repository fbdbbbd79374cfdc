"""grain pipelines over pre-tokenized *features*: the input side of token classification, QA,
multi-label and regression.

When one record becomes several model inputs (a long sentence split into chunks, a SQuAD
context split into overlapping windows) or carries structured targets, the tasks tokenize
everything once into a list of **features**: dicts of unpadded numpy arrays, e.g.
``{"input_ids": int32[n], "token_type_ids": int32[n], "labels": int32[n]}`` or with scalar /
vector targets (``start_positions``, ``targets``). This module batches such a list on the
batching skeleton (:mod:`jaxbert.data.batching`), the same way :mod:`jaxbert.data.features.text`
batches records:

* :func:`make_train_iterator` -- global shuffle (seeded), repeat, host sharding
  (host ``p`` of ``P`` takes stream items ``p, p+P, ...``), batches padded to ``max_length``
  or to the smallest bucket holding the batch's longest feature; a
  :class:`~jaxbert.data.batching.PipelineIterator` whose ``get_state`` /``set_state``
  checkpoint the position (and refuse a state from a differently built pipeline, including
  different features: the spec holds a digest of them).
* :func:`make_eval_batches` -- every feature exactly once, padded with weight-0 rows to whole
  global batches; each row carries ``feature_index`` (``index_offset + i``; -1 for padding)
  so predictions can be mapped back to their feature whatever the order. With ``buckets``
  features are sorted by length and each *global* batch gets one length, so every host
  agrees on the shape (works multi-host, unlike per-host bucketing).

Batch keys: every feature key, stacked; "sequence" keys (arrays as long as ``input_ids``) are
right-padded with their pad value; ``attention_mask`` is derived (1 on real tokens);
``token_type_ids`` is zeros when the features have none. Eval batches add ``weights``
(float32 ``[B]``) and ``feature_index`` (int32 ``[B]``).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from jaxbert.data import batching

__all__ = ["FeatureCollate", "OrderedFeatures", "features_digest", "make_eval_batches", "make_train_iterator"]


def features_digest(features: Sequence[Mapping[str, Any]]) -> str:
    """A short hash of every feature's arrays (keys, dtypes, values): the data identity."""
    h = hashlib.sha1()
    for f in features:
        for k in sorted(f):
            v = np.asarray(f[k])
            h.update(k.encode())
            h.update(str(v.dtype).encode())
            h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()[:16]


class FeatureCollate:
    """grain ``batch_fn``: pad the sequence keys of a list of features and stack everything.

    ``seq_pad`` maps sequence keys to their pad value (``input_ids`` must be one). The batch
    length is ``length`` if given, else the smallest bucket holding the longest feature, else
    ``max_length``. A feature longer than ``max_length`` is an error (features are built to fit).
    Output: the sequence keys ``[B, length]``, other keys stacked ``[B, ...]``,
    ``attention_mask`` int32 ``[B, length]`` (1 on real tokens), ``token_type_ids`` (zeros when
    the features have none) and ``weights`` float32 ``[B]`` (from a ``weight`` key).
    """

    def __init__(self, max_length: int, seq_pad: Mapping[str, int], buckets: Sequence[int] | None = None):
        if "input_ids" not in seq_pad:
            raise ValueError(f"seq_pad must give a pad value for 'input_ids', got {dict(seq_pad)}")
        self.max_length = int(max_length)
        self.seq_pad = dict(seq_pad)
        self.buckets = batching.bucket_set(self.max_length, buckets)

    def length_for(self, longest: int) -> int:
        """The batch length of a batch whose longest feature has ``longest`` tokens."""
        if longest > self.max_length:
            raise ValueError(f"a feature has {longest} tokens, more than max_length={self.max_length}")
        return batching.bucket_length(longest, self.buckets) if self.buckets else self.max_length

    def __call__(self, elements: Sequence[Mapping[str, Any]], length: int | None = None) -> dict[str, np.ndarray]:
        lengths = [len(e["input_ids"]) for e in elements]
        if length is None:
            length = self.length_for(max(lengths))
        batch: dict[str, np.ndarray] = {}
        for key in elements[0]:
            if key in self.seq_pad:
                arr = np.full((len(elements), length), self.seq_pad[key], np.asarray(elements[0][key]).dtype)
                for i, e in enumerate(elements):
                    arr[i, :len(e[key])] = e[key]
                batch[key] = arr
            else:
                batch[key] = np.stack([np.asarray(e[key]) for e in elements])
        mask = np.zeros((len(elements), length), np.int32)
        for i, n in enumerate(lengths):
            mask[i, :n] = 1
        batch["attention_mask"] = mask
        if "token_type_ids" not in batch:
            batch["token_type_ids"] = np.zeros((len(elements), length), np.int32)
        if "weight" in batch:
            batch["weights"] = batch.pop("weight").astype(np.float32)
        return batch


def _grouped_stream(features: Sequence[Mapping[str, Any]], batch_size: int, seed: int, group: int,
                    num_epochs: int | None) -> batching.LengthGroupedStream:
    lengths = np.array([len(f["input_ids"]) for f in features])
    return batching.LengthGroupedStream(features, lengths, batch_size, batching.shuffle_seed(seed), group, num_epochs)


def make_train_iterator(
    features: Sequence[Mapping[str, Any]],
    *,
    batch_size: int,
    seed: int,
    max_length: int,
    seq_pad: Mapping[str, int],
    buckets: Sequence[int] | None = None,
    group_by_length: int | None = None,
    num_epochs: int | None = None,
    shuffle: bool = True,
    spec: Mapping[str, Any] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    read_options: grain.ReadOptions | None = None,
) -> batching.PipelineIterator:
    """Shuffled, repeated, host-sharded, checkpointable batches of ``features``.

    ``batch_size`` is global; ``seed`` a non-negative int; ``spec`` extra entries for the
    iterator state (task settings a resumed run must share). ``group_by_length=G`` builds
    batches of similar length (sorted within mega-batches of ``G`` global batches, batch order
    shuffled; see :class:`~jaxbert.data.batching.LengthGroupedStream`), which with ``buckets``
    cuts the padding of long-tailed length distributions. See the module docstring.
    """
    collate = FeatureCollate(max_length, seq_pad, buckets)
    stream = None
    if group_by_length:
        if not shuffle:
            raise ValueError("group_by_length needs shuffle=True")
        stream = functools.partial(_grouped_stream, features, batch_size, seed, int(group_by_length), num_epochs)
    full_spec = {
        "features_digest": features_digest(features),
        "shuffle": bool(shuffle),
        "num_epochs": num_epochs,
        "max_length": int(max_length),
        "buckets": list(collate.buckets) if collate.buckets else None,
        "group_by_length": int(group_by_length) if group_by_length else None,
        **dict(spec or {}),
    }
    return batching.train_iterator(
        features, kind="train_features", batch_size=batch_size, seed=seed, collate=collate, stream=stream,
        shuffle=shuffle, num_epochs=num_epochs, bucketed=collate.buckets is not None, spec=full_spec,
        process_index=process_index, process_count=process_count, read_options=read_options)


class OrderedFeatures:
    """Random access over ``features`` in ``order``: item ``i`` is feature ``order[i]`` plus
    ``feature_index`` (int32 ``index_offset + order[i]``)."""

    def __init__(self, features: Sequence[Mapping[str, Any]], order: np.ndarray, index_offset: int = 0):
        self.features = features
        self.order = order
        self.index_offset = index_offset

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = int(self.order[i])
        out = dict(self.features[j])
        out["feature_index"] = np.int32(self.index_offset + j)
        return out


def make_eval_batches(
    features: Sequence[Mapping[str, Any]],
    *,
    batch_size: int,
    max_length: int,
    seq_pad: Mapping[str, int],
    pad_feature: Mapping[str, Any],
    buckets: Sequence[int] | None = None,
    index_offset: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
    """Every feature once, in whole global batches; ``weights`` 0 on padding rows.

    ``pad_feature`` is a feature with the same keys used for padding rows (e.g. the ids of
    ``[CLS] [SEP]`` and zero targets). With ``buckets`` the features are sorted by length and
    every host pads global batch ``k`` to the same bucket. Returns a ``grain.MapDataset`` of
    batch dicts (module docstring).
    """
    n = len(features)
    if n == 0:
        raise ValueError("no evaluation features (empty data?)")
    collate = FeatureCollate(max_length, seq_pad, buckets)
    lengths = np.array([len(f["input_ids"]) for f in features])
    order = np.argsort(lengths, kind="stable") if collate.buckets else np.arange(n)
    pad_len = len(pad_feature["input_ids"])

    def batch_length(rows: range) -> int:  # one length per global batch: every host agrees
        return collate.length_for(max([int(lengths[order[r]]) for r in rows] + [pad_len]))

    return batching.eval_batches(
        OrderedFeatures(features, order, index_offset), batch_size=batch_size, collate=collate,
        pad={**pad_feature, "weight": np.float32(0.0), "feature_index": np.int32(-1)},
        batch_length=batch_length, process_index=process_index, process_count=process_count)
