"""grain pipelines over pre-tokenized *features*: the input side of token classification, QA,
multi-label and regression.

When one record becomes several model inputs (a long sentence split into chunks, a SQuAD
context split into overlapping windows) or carries structured targets, the tasks tokenize
everything once into a list of **features**: dicts of unpadded numpy arrays, e.g.
``{"input_ids": int32[n], "token_type_ids": int32[n], "labels": int32[n]}`` or with scalar /
vector targets (``start_positions``, ``targets``). This module batches such a list the same
way :mod:`jaxbert.data.pipeline` batches records:

* :func:`make_train_iterator` -- global shuffle (seeded), repeat, host sharding
  (host ``p`` of ``P`` takes stream items ``p, p+P, ...``), batches padded to ``max_length``
  or to the smallest bucket holding the batch's longest feature; a
  :class:`~jaxbert.data.pipeline.PipelineIterator` whose ``get_state`` /``set_state``
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

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from jaxbert.data.pipeline import (
    PipelineIterator,
    _check_batch,
    _check_bucketing,
    _process_defaults,
    _shuffle_seed,
)
from jaxbert.data.tokenization import bucket_length

__all__ = ["FeatureCollate", "features_digest", "make_eval_batches", "make_train_iterator"]


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


def _bucket_set(max_length: int, buckets: Sequence[int] | None) -> tuple[int, ...] | None:
    if buckets is None:
        return None
    buckets = [int(b) for b in buckets]
    if not buckets or min(buckets) <= 0:
        raise ValueError(f"buckets must be positive ints, got {buckets}")
    too_long = [b for b in buckets if b > max_length]
    if too_long:
        raise ValueError(f"buckets {too_long} exceed max_length={max_length}")
    return tuple(sorted(set(buckets) | {max_length}))


class FeatureCollate:
    """grain ``batch_fn``: pad the sequence keys of a list of features and stack everything.

    ``seq_pad`` maps sequence keys to their pad value (``input_ids`` must be one). The batch
    length is ``length`` if given, else the smallest bucket holding the longest feature, else
    ``max_length``. A feature longer than ``max_length`` is an error (features are built to fit).
    """

    def __init__(self, max_length: int, seq_pad: Mapping[str, int], buckets: Sequence[int] | None = None):
        if "input_ids" not in seq_pad:
            raise ValueError(f"seq_pad must give a pad value for 'input_ids', got {dict(seq_pad)}")
        self.max_length = int(max_length)
        self.seq_pad = dict(seq_pad)
        self.buckets = _bucket_set(self.max_length, buckets)

    def length_for(self, longest: int) -> int:
        if longest > self.max_length:
            raise ValueError(f"a feature has {longest} tokens, more than max_length={self.max_length}")
        return bucket_length(longest, self.buckets) if self.buckets else self.max_length

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


class _Batcher:
    """Picklable ``batch_fn`` (grain may run it in worker threads)."""

    def __init__(self, collate: FeatureCollate):
        self.collate = collate

    def __call__(self, elements):
        return self.collate(elements)


class _LengthGroupedStream:
    """Item ``i`` of the (repeated) training stream when batches are grouped by length.

    Epoch ``e`` is a permutation drawn from ``(seed, e)``, cut into mega-batches of
    ``group`` global batches, each sorted by length (longest first) and cut into global
    batches, whose order is then shuffled (Hugging Face's ``group_by_length`` sampler). Batches
    hold similar lengths, so bucketed padding wastes little; the order is a pure function of
    the seed and the position, so a restored iterator continues the same stream.
    """

    def __init__(self, features, lengths: np.ndarray, global_batch: int, seed: int, group: int,
                 num_epochs: int | None):
        import threading
        self.features = features
        self.lengths = lengths
        self.global_batch = global_batch
        self.seed = seed
        self.group = group
        self.n = len(lengths)
        self.total = self.n * (num_epochs if num_epochs is not None else 10**9)
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.total

    def _order(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._cache:
                rng = np.random.default_rng([self.seed, epoch])
                perm = rng.permutation(self.n)
                mega = self.global_batch * self.group
                parts = [perm[i:i + mega] for i in range(0, self.n, mega)]
                order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in parts])
                nb = self.n // self.global_batch
                whole = order[:nb * self.global_batch].reshape(nb, self.global_batch)[rng.permutation(nb)]
                self._cache = {k: v for k, v in self._cache.items() if k >= epoch - 1}
                self._cache[epoch] = np.concatenate([whole.ravel(), order[nb * self.global_batch:]])
            return self._cache[epoch]

    def __getitem__(self, i: int):
        return self.features[int(self._order(i // self.n)[i % self.n])]


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
) -> PipelineIterator:
    """Shuffled, repeated, host-sharded, checkpointable batches of ``features``.

    ``batch_size`` is global; ``seed`` a non-negative int; ``spec`` extra entries for the
    iterator state (task settings a resumed run must share). ``group_by_length=G`` builds
    batches of similar length (sorted within mega-batches of ``G`` global batches, batch order
    shuffled; see :class:`_LengthGroupedStream`), which with ``buckets`` cuts the padding of
    long-tailed length distributions. See the module docstring.
    """
    process_index, process_count = _process_defaults(process_index, process_count)
    per_host = _check_batch(batch_size, process_count)
    _check_bucketing(buckets, None, process_count)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if num_epochs is not None and (not isinstance(num_epochs, int) or num_epochs <= 0):
        raise ValueError(f"num_epochs must be a positive int or None (infinite), got {num_epochs!r}")
    n = len(features)
    if n == 0:
        raise ValueError("no training features (empty data?)")
    if num_epochs is not None and n * num_epochs < batch_size:
        raise ValueError(f"{n} features x {num_epochs} epochs is less than one global batch of {batch_size}")
    collate = FeatureCollate(max_length, seq_pad, buckets)

    if group_by_length:
        if not shuffle:
            raise ValueError("group_by_length needs shuffle=True")
        lengths = np.array([len(f["input_ids"]) for f in features])
        ds = grain.MapDataset.source(_LengthGroupedStream(features, lengths, batch_size, _shuffle_seed(seed),
                                                          int(group_by_length), num_epochs))
    else:
        ds = grain.MapDataset.source(features)
        if shuffle:
            ds = ds.shuffle(seed=_shuffle_seed(seed))
        ds = ds.repeat(num_epochs)
    if num_epochs is not None:
        ds = ds[: (len(ds) // batch_size) * batch_size]
    ds = ds[process_index::process_count]
    ds = ds.batch(per_host, drop_remainder=True, batch_fn=_Batcher(collate))
    iter_ds = ds.to_iter_dataset(read_options or grain.ReadOptions(num_threads=2, prefetch_buffer_size=16))
    full_spec = {
        "kind": "train_features",
        "num_records": n,
        "features_digest": features_digest(features),
        "global_batch_size": batch_size,
        "seed": seed,
        "shuffle": bool(shuffle),
        "num_epochs": num_epochs,
        "max_length": int(max_length),
        "buckets": list(collate.buckets) if collate.buckets else None,
        "group_by_length": int(group_by_length) if group_by_length else None,
        "process_index": process_index,
        "process_count": process_count,
        **dict(spec or {}),
    }
    return PipelineIterator(iter(iter_ds), full_spec)


class _EvalItems:
    """Item ``i`` of the padded, ordered eval stream: a feature (or a pad row) + weight + index."""

    def __init__(self, features, order: np.ndarray, total: int, pad_feature: Mapping[str, Any], index_offset: int):
        self.features = features
        self.order = order
        self.total = total
        self.pad = dict(pad_feature)
        self.index_offset = index_offset

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i < len(self.order):
            j = int(self.order[i])
            out = dict(self.features[j])
            out["weight"] = np.float32(1.0)
            out["feature_index"] = np.int32(self.index_offset + j)
        else:
            out = dict(self.pad)
            out["weight"] = np.float32(0.0)
            out["feature_index"] = np.int32(-1)
        return out


class _EvalBatches:
    """Per-host batch ``k`` = this host's share of global batch ``k``, padded to that batch's length."""

    def __init__(self, items, collate: FeatureCollate, batch_lengths: list[int], per_host: int):
        self.items = items  # this host's rows, in order
        self.collate = collate
        self.batch_lengths = batch_lengths
        self.per_host = per_host

    def __len__(self) -> int:
        return len(self.batch_lengths)

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:
        rows = [self.items[k * self.per_host + j] for j in range(self.per_host)]
        return self.collate(rows, length=self.batch_lengths[k])


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
    ``[CLS] [SEP]`` and zero targets). Returns a ``grain.MapDataset`` of batch dicts.
    """
    process_index, process_count = _process_defaults(process_index, process_count)
    per_host = _check_batch(batch_size, process_count)
    n = len(features)
    if n == 0:
        raise ValueError("no evaluation features (empty data?)")
    collate = FeatureCollate(max_length, seq_pad, buckets)
    lengths = np.array([len(f["input_ids"]) for f in features])
    order = np.argsort(lengths, kind="stable") if collate.buckets else np.arange(n)
    total = math.ceil(n / batch_size) * batch_size
    pad_len = len(pad_feature["input_ids"])
    batch_lengths = []
    for k in range(total // batch_size):
        rows = order[k * batch_size:(k + 1) * batch_size]
        longest = max([int(lengths[r]) for r in rows] + [pad_len])
        batch_lengths.append(collate.length_for(longest))

    items = grain.MapDataset.source(_EvalItems(features, order, total, pad_feature, index_offset))
    return grain.MapDataset.source(_EvalBatches(items[process_index::process_count], collate, batch_lengths, per_host))
