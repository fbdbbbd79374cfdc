"""The one batching skeleton every task's input pipeline is built on (grain).

    records --(record -> features)--> global stream --shard--> per-host features --collate--> batches

A task kind supplies only what is specific to it: a random-access source of *records* (already
turned into features, e.g. :class:`jaxbert.data.features.text.RecordFields`, or a list of
pre-tokenized feature dicts), optionally a grain transform that finishes the features per
element (tokenize, mask), and a *collate* (``list of feature dicts -> batch dict``: stack, pad,
trim to a length bucket). The skeleton does the rest, the same way for every kind:

* :func:`train_iterator` -- global shuffle (seeded through :func:`shuffle_seed`), repeat
  (``num_epochs`` or forever; a finite stream is cut to whole global batches), an optional
  ``augment`` on the global stream (index = stream position), per-host sharding (host ``p`` of
  ``P`` keeps stream items ``p, p + P, ...``), the per-host ``features`` transform, batching
  into ``batch_size // P`` rows. Returns a :class:`PipelineIterator`: ``get_state()`` /
  ``set_state()`` save and restore the exact position (stored by
  :mod:`jaxbert.train.checkpoint` under ``extra["data"]``) and refuse a state saved by a
  differently configured pipeline. A custom order (e.g. :class:`LengthGroupedStream`) replaces
  shuffle + repeat through ``stream=``.
* :func:`eval_batches` -- every record once, in order, padded with ``pad`` rows (weight 0) up to
  whole global batches so every host yields the same number of batches of the same shape;
  optionally one length per *global* batch (``batch_length``) so multi-host runs agree on it.
* :class:`IndexedBatchIterator` -- the same stream contract (per-epoch seeded permutations,
  host slices, ``{"pipeline", "iterator"}`` state) for tasks whose ``make_batch(indices, rng)``
  builds a whole batch at once (LLM embedding).

Shared checks and helpers: :func:`host_shard` (process index / count, default from jax),
:func:`per_host_batch` (a global batch the hosts can split evenly), :func:`bucket_set` /
:func:`bucket_length` (the one "smallest bucket >= n" helper), :func:`stack`,
:func:`trim_to_bucket`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

__all__ = [
    "IndexedBatchIterator",
    "LengthGroupedStream",
    "PaddedSource",
    "PipelineIterator",
    "bucket_length",
    "bucket_set",
    "check_state",
    "default_read_options",
    "eval_batches",
    "host_shard",
    "per_host_batch",
    "shuffle_seed",
    "stack",
    "train_iterator",
    "trim_to_bucket",
]

Batch = dict[str, np.ndarray]
Collate = Callable[[Sequence[Mapping[str, Any]]], Batch]


# ------------------------------------------------------------------------------ checks


def host_shard(process_index: int | None = None, process_count: int | None = None) -> tuple[int, int]:
    """``(process_index, process_count)``, each defaulting to jax's; validated."""
    if process_index is None or process_count is None:
        import jax  # pylint: disable=import-outside-toplevel

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not isinstance(process_count, int) or process_count <= 0:
        raise ValueError(f"process_count must be a positive int, got {process_count!r}")
    if not isinstance(process_index, int) or not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index!r}")
    return process_index, process_count


def per_host_batch(batch_size: int, process_count: int) -> int:
    """Rows per host of a global ``batch_size``; ``ValueError`` unless the hosts split it evenly."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if batch_size % process_count:
        raise ValueError(
            f"global batch_size={batch_size} is not divisible by process_count={process_count}; "
            "every host must load the same number of rows"
        )
    return batch_size // process_count


def shuffle_seed(seed: int) -> int:
    """The grain shuffle seed of a user seed.

    grain shuffles epoch ``e`` with ``seed + e``, so runs with seeds ``s`` and ``s + 1`` would see
    the same orders one epoch apart; mixing the user seed first keeps seeds independent.
    """
    return int(np.random.SeedSequence(seed).generate_state(1, dtype=np.uint32)[0])


def _hosts(process_index: int | None, process_count: int | None, batch_size: int,
           bucketed: bool) -> tuple[int, int, int]:
    """``(process_index, process_count, rows per host)``, checked; a per-host bucketed shape
    (``bucketed``) is refused with several hosts."""
    process_index, process_count = host_shard(process_index, process_count)
    per_host = per_host_batch(batch_size, process_count)
    if bucketed and process_count > 1:
        raise ValueError(
            "length bucketing picks the length from each host's own rows, so hosts would disagree "
            f"on the batch shape (process_count={process_count}); use fixed max_length padding"
        )
    return process_index, process_count, per_host


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


# ----------------------------------------------------------------------------- buckets


def bucket_set(max_length: int, buckets: Sequence[int] | None = None,
               pad_to_multiple_of: int | None = None) -> tuple[int, ...] | None:
    """The sorted lengths a batch may be trimmed to (always including ``max_length``), or None.

    ``buckets``: explicit lengths, each in ``[1, max_length]``. ``pad_to_multiple_of=m``: the
    multiples of ``m`` up to ``max_length`` (and ``max_length`` itself). Neither: None (every
    batch has ``max_length``).
    """
    if buckets is not None and pad_to_multiple_of is not None:
        raise ValueError("pass either buckets or pad_to_multiple_of, not both")
    if buckets is not None:
        buckets = [int(b) for b in buckets]
        if not buckets or min(buckets) <= 0:
            raise ValueError(f"buckets must be positive ints, got {buckets}")
        too_long = [b for b in buckets if b > max_length]
        if too_long:
            raise ValueError(f"buckets {too_long} exceed max_length={max_length}")
        return tuple(sorted(set(buckets) | {max_length}))
    if pad_to_multiple_of is not None:
        m = pad_to_multiple_of
        if isinstance(m, bool) or not isinstance(m, int) or m <= 0:
            raise ValueError(f"pad_to_multiple_of must be a positive int, got {m!r}")
        return tuple(sorted({min(max_length, m * k) for k in range(1, -(-max_length // m) + 1)}))
    return None


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= ``n``; ``ValueError`` naming ``n`` if it exceeds every bucket."""
    if not buckets:
        raise ValueError("buckets must be a non-empty sequence of positive ints")
    ordered = sorted(buckets)
    if ordered[0] <= 0:
        raise ValueError(f"buckets must be positive, got {list(buckets)}")
    for b in ordered:
        if b >= n:
            return int(b)
    raise ValueError(f"length {n} exceeds the largest bucket {ordered[-1]} (buckets: {ordered})")


def stack(elements: Sequence[Mapping[str, Any]]) -> Batch:
    """Stack per-element dicts key by key: ``[...]`` arrays -> ``[B, ...]`` (keys of the first element)."""
    return {k: np.stack([np.asarray(e[k]) for e in elements]) for k in elements[0]}


def trim_to_bucket(batch: Batch, buckets: Sequence[int], keys: Sequence[str]) -> Batch:
    """Cut the last axis of ``batch[k]`` (``k`` in ``keys``) to the smallest bucket holding the
    longest row of ``batch["attention_mask"]`` (``[B, L]`` or ``[B, K, L]``). In place; returns it."""
    length = bucket_length(int(batch["attention_mask"].sum(axis=-1).max()), buckets)
    for k in keys:
        batch[k] = batch[k][..., :length]
    return batch


def default_read_options() -> grain.ReadOptions:
    """In-process reading: 2 threads, 16 batches of prefetch."""
    return grain.ReadOptions(num_threads=2, prefetch_buffer_size=16)


# ------------------------------------------------------------------------------ state


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def check_state(state: Any, spec: Mapping[str, Any]) -> Any:
    """The ``"iterator"`` part of a saved pipeline state, after checking its ``"pipeline"`` spec
    equals ``spec`` (lists and tuples compare equal); ``ValueError`` listing every difference."""
    if not isinstance(state, Mapping) or "pipeline" not in state or "iterator" not in state:
        raise ValueError(
            "not a jaxbert pipeline state: expected a dict with keys 'pipeline' and 'iterator', "
            f"got {type(state).__name__} {sorted(state) if isinstance(state, Mapping) else ''}"
        )
    saved = dict(state["pipeline"])
    diffs = [
        f"{k}: saved {saved.get(k)!r}, current {spec.get(k)!r}"
        for k in sorted(set(saved) | set(spec))
        if _normalise(saved.get(k)) != _normalise(spec.get(k))
    ]
    if diffs:
        raise ValueError(
            "iterator state was saved by a differently configured pipeline; restoring it would "
            "not continue the same data stream:\n  " + "\n  ".join(diffs)
        )
    return state["iterator"]


class PipelineIterator(grain.DatasetIterator):
    """A grain ``DatasetIterator`` whose state also records the pipeline's arguments.

    ``get_state()`` is a JSON-serialisable dict ``{"pipeline": {...}, "iterator": <grain
    state>}``. ``set_state`` refuses a state saved by a pipeline built with different
    arguments (seed, batch size, host sharding, ...) instead of silently yielding other data.
    Works with ``grain.checkpoint.CheckpointHandler`` and orbax (it is a ``DatasetIterator``).
    """

    def __init__(self, parent: grain.DatasetIterator, spec: Mapping[str, Any]):
        super().__init__(parent)
        self.spec = dict(spec)

    def __next__(self) -> Batch:
        return next(self._parent)

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per pass over the source (the last partial batch spills over)."""
        return self.spec["num_records"] // self.spec["global_batch_size"]

    def get_state(self) -> dict[str, Any]:
        return {"pipeline": dict(self.spec), "iterator": self._parent.get_state()}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._parent.set_state(check_state(state, self.spec))


# ----------------------------------------------------------------------------- sources


class LengthGroupedStream:
    """Item ``i`` of a (repeated) training stream whose batches are grouped by length.

    Epoch ``e`` is a permutation drawn from ``(seed, e)``, cut into mega-batches of ``group``
    global batches, each sorted by length (longest first) and cut into global batches, whose
    order is then shuffled (Hugging Face's ``group_by_length`` sampler). Batches hold similar
    lengths, so bucketed padding wastes little; the order is a pure function of the seed and the
    position, so a restored iterator continues the same stream. Return it from the ``stream``
    factory of :func:`train_iterator`.

    Args:
      records: random-access records (``len(records) == len(lengths)``).
      lengths: int ``[N]``, the length of each record.
      global_batch: rows per global batch.
      seed: the (already mixed, :func:`shuffle_seed`) permutation seed.
      group: global batches per mega-batch.
      num_epochs: stream length in epochs (None: practically infinite, 10**9 epochs).
    """

    def __init__(self, records: Sequence[Any], lengths: np.ndarray, global_batch: int, seed: int, group: int,
                 num_epochs: int | None):
        self.records = records
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

    def __getitem__(self, i: int) -> Any:
        return self.records[int(self._order(i // self.n)[i % self.n])]


class PaddedSource:
    """``records`` followed by copies of ``pad`` up to ``length`` items.

    With ``weight_key`` every real record gets ``weight_key: float32 1.0`` (``pad`` should
    hold ``0.0`` there), so metrics can skip padding rows.
    """

    def __init__(self, records: Sequence[Any], length: int, pad: Mapping[str, Any], weight_key: str | None = None):
        self.records = records
        self.num_records = len(records)
        self.length = length
        self.pad = dict(pad)
        self.weight_key = weight_key

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < self.num_records:
            out = dict(self.records[index])
            if self.weight_key is not None:
                out[self.weight_key] = np.float32(1.0)
            return out
        return dict(self.pad)

    def __repr__(self) -> str:
        return f"PaddedSource({self.records!r}, padded_to={self.length})"


# ---------------------------------------------------------------------------- skeleton


def train_iterator(
    records: Sequence[Any],
    *,
    kind: str,
    batch_size: int,
    seed: int,
    collate: Collate,
    features: grain.transforms.Map | grain.transforms.RandomMap | None = None,
    augment: grain.transforms.MapWithIndex | None = None,
    stream: Callable[[], Sequence[Any]] | None = None,
    shuffle: bool = True,
    num_epochs: int | None = None,
    bucketed: bool = False,
    spec: Mapping[str, Any] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    read_options: grain.ReadOptions | None = None,
    worker_count: int = 0,
) -> PipelineIterator:
    """A deterministic, host-sharded, checkpointable iterator of training batches.

    Args:
      records: random-access source of records (each already the task's features, or the input
        of ``features``); ``len(records)`` is one epoch.
      kind: the pipeline kind, recorded in the state (``"train"``, ``"pairs"``, ...).
      batch_size: the *global* batch size; each host yields ``batch_size // process_count`` rows.
      seed: non-negative int; the same seed gives the same batches.
      collate: ``list of B feature dicts -> batch dict`` (grain ``batch_fn``; picklable).
      features: grain ``Map`` / ``RandomMap`` run per host after sharding (tokenize, mask); a
        ``RandomMap`` draws from ``shuffle_seed(seed + 1)`` and the element's per-host position.
      augment: grain ``MapWithIndex`` run on the global stream before sharding (index = stream
        position, the same on every host count).
      stream: builds the global stream (all epochs, e.g. a :class:`LengthGroupedStream`; called
        after the arguments are checked) instead of ``records`` shuffled with :func:`shuffle_seed`
        and repeated.
      shuffle: global shuffle (False keeps record order); ignored with ``stream``.
      num_epochs: passes over the records, None = infinite. Batches run across epoch boundaries;
        with a finite count the trailing partial global batch is dropped.
      bucketed: the collate picks the length from its own rows; refused with several hosts
        (they would disagree on the batch shape).
      spec: kind-specific entries of the iterator state (settings a resumed run must share).
      process_index / process_count: this host and the host count (default: from jax).
      read_options: grain ``ReadOptions`` (default :func:`default_read_options`).
      worker_count: grain worker processes (0 = in-process threads only).

    Returns:
      A :class:`PipelineIterator` of batch dicts (``next(it)``, ``it.get_state()``,
      ``it.set_state(s)``), its spec ``{kind, num_records, global_batch_size, seed,
      process_index, process_count, **spec}``.
    """
    process_index, process_count, per_host = _hosts(process_index, process_count, batch_size, bucketed)
    _check_seed(seed)
    if num_epochs is not None and (not isinstance(num_epochs, int) or num_epochs <= 0):
        raise ValueError(f"num_epochs must be a positive int or None (infinite), got {num_epochs!r}")
    if isinstance(worker_count, bool) or not isinstance(worker_count, int) or worker_count < 0:
        raise ValueError(f"worker_count must be an int >= 0, got {worker_count!r}")
    num_records = len(records)
    if num_records == 0:
        raise ValueError(f"{records!r} has no records: nothing to train on")
    if num_epochs is not None and num_records * num_epochs < batch_size:
        raise ValueError(
            f"{num_records} records x {num_epochs} epochs is less than one global batch of {batch_size}"
        )

    if stream is not None:
        ds = grain.MapDataset.source(stream())
    else:
        ds = grain.MapDataset.source(records)
        if shuffle:
            ds = ds.shuffle(seed=shuffle_seed(seed))
        ds = ds.repeat(num_epochs)
    if num_epochs is not None:
        # Same number of batches on every host: cut the global stream to whole global batches.
        ds = ds[: (len(ds) // batch_size) * batch_size]
    if augment is not None:
        ds = ds.map_with_index(augment)
    ds = ds[process_index::process_count]
    if isinstance(features, grain.transforms.RandomMap):
        ds = ds.random_map(features, seed=shuffle_seed(seed + 1))
    elif features is not None:
        ds = ds.map(features)
    ds = ds.batch(per_host, drop_remainder=True, batch_fn=collate)

    iter_ds = ds.to_iter_dataset(read_options or default_read_options())
    if worker_count:
        from absl import flags  # pylint: disable=import-outside-toplevel

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    full_spec = {"kind": kind, "num_records": num_records, "global_batch_size": batch_size, "seed": seed,
                 "process_index": process_index, "process_count": process_count, **dict(spec or {})}
    return PipelineIterator(iter(iter_ds), full_spec)


class _LengthBatches:
    """Per-host batch ``k``: this host's rows of global batch ``k``, collated to ``lengths[k]``."""

    def __init__(self, rows: grain.MapDataset, collate: Callable[..., Batch], lengths: Sequence[int], per_host: int):
        self.rows = rows
        self.collate = collate
        self.lengths = lengths
        self.per_host = per_host

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, k: int) -> Batch:
        rows = [self.rows[k * self.per_host + j] for j in range(self.per_host)]
        return self.collate(rows, length=self.lengths[k])


def eval_batches(
    records: Sequence[Any],
    *,
    batch_size: int,
    collate: Callable[..., Batch],
    pad: Mapping[str, Any],
    weight_key: str | None = "weight",
    features: grain.transforms.Map | grain.transforms.RandomMap | None = None,
    seed: int | None = None,
    batch_length: Callable[[range], int] | None = None,
    bucketed: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
    """Evaluation batches: every record once, in order, in whole global batches of one shape.

    The records are padded with copies of ``pad`` up to a multiple of ``batch_size`` (real
    records get ``weight_key: 1.0``, see :class:`PaddedSource`), so every host yields the same
    number of ``batch_size // process_count``-row batches. ``features`` runs on the global padded
    stream, before sharding: a ``RandomMap`` draws from ``shuffle_seed(seed)`` and the global
    position, so the values are the same on any host count.

    ``batch_length(positions)`` (``positions``: the range of record positions in global batch
    ``k``; those ``>= len(records)`` are padding) gives batch ``k``'s length, passed to
    ``collate(rows, length=...)``, so all hosts pad batch ``k`` alike; without it ``collate(rows)``
    picks the shape (``bucketed``: from its own rows, refused with several hosts).

    Returns:
      A ``grain.MapDataset`` of batch dicts: ``len(ds)`` batches, ``ds[i]`` random access,
      ``for batch in ds`` to iterate.
    """
    process_index, process_count, per_host = _hosts(process_index, process_count, batch_size, bucketed)
    if len(records) == 0:
        raise ValueError(f"{records!r} has no records: nothing to evaluate")
    total = math.ceil(len(records) / batch_size) * batch_size
    ds = grain.MapDataset.source(PaddedSource(records, total, pad, weight_key))
    if isinstance(features, grain.transforms.RandomMap):
        _check_seed(seed)
        ds = ds.random_map(features, seed=shuffle_seed(seed))
    elif features is not None:
        ds = ds.map(features)
    ds = ds[process_index::process_count]
    if batch_length is not None:
        n = len(records)
        lengths = [batch_length(range(k, min(k + batch_size, n))) for k in range(0, total, batch_size)]
        return grain.MapDataset.source(_LengthBatches(ds, collate, lengths, per_host))
    return ds.batch(per_host, drop_remainder=True, batch_fn=collate)


class IndexedBatchIterator:
    """Infinite, seeded, checkpointable stream of batches built by ``make_batch(indices, rng)``.

    For tasks that build a whole batch at once (padding to the batch's bucket, masking with one
    generator). Global step ``s`` covers stream positions ``[s B, (s + 1) B)`` of the
    concatenated per-epoch permutations of ``range(num_records)`` (epoch ``e`` drawn from
    ``(seed, e)``); this host builds rows ``[p B / P, (p + 1) B / P)`` of them.
    ``make_batch(indices, rng)`` gets the record indices (int64 ``[B / P]``) and a ``numpy``
    generator seeded with ``(seed, s)`` (the same on every host). ``get_state()`` /
    ``set_state()`` follow :class:`PipelineIterator`: ``{"pipeline": spec, "iterator": {"step":
    s}}``; a state saved with another spec (seed, batch size, records, ...) is refused.
    """

    def __init__(self, num_records: int, batch_size: int, seed: int,
                 make_batch: Callable[[np.ndarray, np.random.Generator], Batch], *,
                 spec: Mapping[str, Any] | None = None, shuffle: bool = True,
                 process_index: int | None = None, process_count: int | None = None):
        self.process_index, self.process_count = host_shard(process_index, process_count)
        self.per_host = per_host_batch(batch_size, self.process_count)
        if num_records < batch_size:
            raise ValueError(f"{num_records} training records are fewer than one global batch of {batch_size}")
        self.num_records, self.batch_size, self.seed = int(num_records), int(batch_size), int(seed)
        self.shuffle = bool(shuffle)
        self.make_batch = make_batch
        self.step = 0
        self._orders: dict[int, np.ndarray] = {}
        self.spec = {"kind": "indexed", "num_records": self.num_records, "global_batch_size": self.batch_size,
                     "seed": self.seed, "shuffle": self.shuffle, "process_index": self.process_index,
                     "process_count": self.process_count, **dict(spec or {})}

    @property
    def steps_per_epoch(self) -> int:
        return self.num_records // self.batch_size

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) > 2:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = (np.random.default_rng([self.seed, epoch]).permutation(self.num_records)
                                   if self.shuffle else np.arange(self.num_records))
        return self._orders[epoch]

    def indices(self, step: int) -> np.ndarray:
        """Record indices (int64 ``[B / P]``) of this host's rows at global ``step``."""
        start = step * self.batch_size + self.process_index * self.per_host
        pos = np.arange(start, start + self.per_host)
        out = np.empty(self.per_host, np.int64)
        for e in np.unique(pos // self.num_records):
            sel = pos // self.num_records == e
            out[sel] = self._order(int(e))[pos[sel] % self.num_records]
        return out

    def __iter__(self) -> IndexedBatchIterator:
        return self

    def __next__(self) -> Batch:
        batch = self.make_batch(self.indices(self.step), np.random.default_rng([self.seed, 0x11A, self.step]))
        self.step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"pipeline": dict(self.spec), "iterator": {"step": int(self.step)}}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.step = int(check_state(state, self.spec)["step"])
