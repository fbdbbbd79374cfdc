"""grain pipelines for supervised text tasks: records -> fields -> tokens -> (bucketed) batches.

Training (shuffled, repeated, sharded over hosts, checkpointable)::

    labels = LabelMap("coarse_label", ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"])
    it = make_train_iterator(JsonlSource(path), tok, batch_size=32, seed=0, max_length=64,
                             label_map=labels)
    batch = next(it)                  # dict of np.int32 arrays, see below
    state = it.get_state()            # JSON-serialisable; save it with the checkpoint
    it.set_state(state)               # on a fresh iterator built with the same arguments

Evaluation (in order, every example exactly once, fixed batch shape)::

    for batch in make_eval_batches(JsonlSource(path), tok, batch_size=64, max_length=64,
                                   label_map=labels):
        ...  # batch["weights"] is 1.0 for real rows, 0.0 for padding rows

Batch format (``B`` = per-host batch = global batch / process_count, ``L`` = max_length, or
the bucket of the batch's longest row when ``buckets``/``pad_to_multiple_of`` is set):

    input_ids, attention_mask, token_type_ids : np.int32 [B, L]
    labels                                    : np.int32 [B]   (only with a label_map)
    weights                                   : np.float32 [B] (eval batches only)

Sharding: all hosts build the same globally shuffled stream; host ``p`` of ``P`` keeps records
``p, p + P, p + 2P, ...``. Global batch ``k`` is stream records ``[k*B_g, (k+1)*B_g)`` and host
``p``'s ``k``-th batch holds exactly its share of them, so the union over hosts of the ``k``-th
per-host batches is the ``k``-th global batch (rows interleaved by host, which does not matter
for a batch-mean loss).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from jaxbert.data.sources import describe_record
from jaxbert.data.tokenization import bucket_length, encode_batch

__all__ = [
    "Collate",
    "ExtractFields",
    "LabelMap",
    "PipelineIterator",
    "Tokenize",
    "make_eval_batches",
    "make_train_iterator",
]

_MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")


# --------------------------------------------------------------------------------- labels


class LabelMap:
    """Maps the values of one record field (str or int labels) to class ids ``0..n-1``.

    The order of ``labels`` defines the ids. Save ``to_dict()`` next to the checkpoint so
    predictions can be decoded and a restored model sees the same ids.
    """

    def __init__(self, field: str, labels: Sequence[str | int]):
        if not isinstance(field, str) or not field:
            raise ValueError(f"LabelMap field must be a non-empty str, got {field!r}")
        if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
            raise TypeError(f"LabelMap labels must be a list of str or int, got {type(labels).__name__}")
        labels = tuple(labels)
        if not labels:
            raise ValueError(f"LabelMap for field {field!r} needs at least one label")
        kinds = set()
        for i, lab in enumerate(labels):
            if isinstance(lab, bool) or not isinstance(lab, (str, int)):
                raise TypeError(f"LabelMap labels[{i}] must be str or int, got {type(lab).__name__}: {lab!r}")
            kinds.add(str if isinstance(lab, str) else int)
        if len(kinds) > 1:
            raise TypeError(f"LabelMap labels mix str and int: {list(labels)}")
        index: dict[str | int, int] = {}
        for i, lab in enumerate(labels):
            if lab in index:
                raise ValueError(f"LabelMap labels contain {lab!r} twice: {list(labels)}")
            index[lab] = i
        self.field = field
        self.labels = labels
        self._index = index

    # -- construction / persistence
    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any) -> LabelMap:
        """From a mapping or ``ml_collections.ConfigDict`` with keys ``field`` and ``labels``."""
        try:
            field, labels = config["field"], config["labels"]
        except (KeyError, TypeError):
            field = getattr(config, "field", None)
            labels = getattr(config, "labels", None)
            if field is None or labels is None:
                raise ValueError(f"label config needs 'field' and 'labels', got {config!r}") from None
        return cls(field, list(labels))

    from_dict = from_config

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "labels": list(self.labels)}

    @classmethod
    def infer(cls, source: Any, field: str) -> LabelMap:
        """All distinct values of ``field`` in ``source``, sorted (reads every record)."""
        values = set()
        for i in range(len(source)):
            record = source[i]
            if field not in record:
                raise ValueError(f"{describe_record(source, i)}: no field {field!r} (has {sorted(record)})")
            values.add(record[field])
        return cls(field, sorted(values))

    # -- lookup
    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def encode(self, value: Any, where: str | None = None) -> int:
        """The id of ``value``; ``ValueError`` naming ``where``, the value and the valid labels."""
        if not isinstance(value, bool):
            try:
                i = self._index.get(value)
            except TypeError:  # unhashable
                i = None
            if i is not None and type(value) is type(self.labels[i]):
                return i
        place = f"{where}: " if where else ""
        raise ValueError(
            f"{place}label {value!r} ({type(value).__name__}) in field {self.field!r} is not one of the "
            f"{len(self.labels)} valid labels {list(self.labels)}"
        )

    def decode(self, i: int) -> str | int:
        return self.labels[int(i)]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.field, self.labels))

    def __repr__(self) -> str:
        return f"LabelMap(field={self.field!r}, labels={list(self.labels)!r})"


# ----------------------------------------------------------------------------- transforms


class ExtractFields(grain.transforms.MapWithIndex):
    """Record -> ``{"text", ["pair"], ["label"]}``, with errors that name the record.

    Must be applied directly on the source (its index is the source index, mod length).
    """

    def __init__(
        self,
        source: Any,
        *,
        text_field: str = "text",
        pair_field: str | None = None,
        label_map: LabelMap | None = None,
    ):
        self.source = source
        self.text_field = text_field
        self.pair_field = pair_field
        self.label_map = label_map
        self._length = len(source)

    def _text(self, record: Mapping[str, Any], field: str, where: str) -> str:
        if field not in record:
            raise ValueError(f"{where}: no text field {field!r} (record has {sorted(record)})")
        value = record[field]
        if not isinstance(value, str):
            raise TypeError(f"{where}: field {field!r} must be str, got {type(value).__name__}: {value!r:.80}")
        return value

    def map_with_index(self, index: int, element: Mapping[str, Any]) -> dict[str, Any]:
        index = index % self._length
        where = lambda: describe_record(self.source, index)  # noqa: E731  (only built on error)
        if not isinstance(element, Mapping):
            raise TypeError(f"{where()}: expected a dict record, got {type(element).__name__}")
        try:
            out: dict[str, Any] = {"text": self._text(element, self.text_field, "")}
            if self.pair_field is not None:
                out["pair"] = self._text(element, self.pair_field, "")
        except (TypeError, ValueError) as e:
            raise type(e)(f"{where()}{e}") from None
        if self.label_map is not None:
            field = self.label_map.field
            if field not in element:
                raise ValueError(f"{where()}: no label field {field!r} (record has {sorted(element)})")
            value = element[field]
            try:
                label = self.label_map.encode(value)
            except ValueError:
                label = self.label_map.encode(value, where=where())  # raises, naming the record
            out["label"] = np.int32(label)
        return out


class Tokenize(grain.transforms.Map):
    """``{"text", ["pair"], ...}`` -> the same dict with the text replaced by token arrays.

    Produces ``input_ids``, ``attention_mask``, ``token_type_ids`` as ``np.int32 [max_length]``
    (truncated, right-padded). Other keys pass through unchanged.

    The tokenizer is copied, so settings changed by other users of the same tokenizer object
    (another pipeline with a different ``max_length``) cannot race with this one's threads.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        *,
        text_key: str = "text",
        pair_key: str | None = "pair",
    ):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        self.tokenizer = copy.deepcopy(tokenizer)
        self.max_length = max_length
        self.text_key = text_key
        self.pair_key = pair_key
        # Sets the backend truncation state once, before any worker thread encodes.
        encode_batch(self.tokenizer, ["warm up"], max_length=max_length)
        encode_batch(self.tokenizer, ["warm up"], ["pair"], max_length=max_length)

    def map(self, element: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(element)
        text = out.pop(self.text_key)
        pair = out.pop(self.pair_key) if self.pair_key is not None and self.pair_key in out else None
        enc = encode_batch(
            self.tokenizer, [text], None if pair is None else [pair], max_length=self.max_length
        )
        for k in _MODEL_KEYS:
            out[k] = enc[k][0]
        return out


class Collate:
    """grain ``batch_fn``: stack per-example dicts; optionally trim the length to a bucket.

    With ``buckets`` (or ``pad_to_multiple_of``) the ``[B, max_length]`` token arrays are cut
    to the smallest bucket holding the batch's longest row, so every batch has one uniform
    length from a small set (one jit compilation per bucket).
    """

    def __init__(
        self,
        max_length: int,
        *,
        buckets: Sequence[int] | None = None,
        pad_to_multiple_of: int | None = None,
    ):
        if buckets is not None and pad_to_multiple_of is not None:
            raise ValueError("pass either buckets or pad_to_multiple_of, not both")
        self.max_length = max_length
        self.buckets: tuple[int, ...] | None = None
        if buckets is not None:
            buckets = [int(b) for b in buckets]
            if not buckets or min(buckets) <= 0:
                raise ValueError(f"buckets must be positive ints, got {buckets}")
            too_long = [b for b in buckets if b > max_length]
            if too_long:
                raise ValueError(f"buckets {too_long} exceed max_length={max_length}")
            self.buckets = tuple(sorted(set(buckets) | {max_length}))
        if pad_to_multiple_of is not None:
            if isinstance(pad_to_multiple_of, bool) or not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of <= 0:
                raise ValueError(f"pad_to_multiple_of must be a positive int, got {pad_to_multiple_of!r}")
            m = pad_to_multiple_of
            self.buckets = tuple(sorted({min(max_length, m * k) for k in range(1, -(-max_length // m) + 1)}))

    def __call__(self, elements: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        batch = {k: np.stack([e[k] for e in elements]) for k in elements[0]}
        if self.buckets is not None:
            longest = int(batch["attention_mask"].sum(axis=1).max())
            length = bucket_length(longest, self.buckets)
            for k in _MODEL_KEYS:
                batch[k] = batch[k][:, :length]
        if "label" in batch:
            batch["labels"] = batch.pop("label").astype(np.int32)
        if "weight" in batch:
            batch["weights"] = batch.pop("weight").astype(np.float32)
        return batch


# ------------------------------------------------------------------------------- iterators


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

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._parent)

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per pass over the source (the last partial batch spills over)."""
        return self.spec["num_records"] // self.spec["global_batch_size"]

    def get_state(self) -> dict[str, Any]:
        return {"pipeline": dict(self.spec), "iterator": self._parent.get_state()}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or "pipeline" not in state or "iterator" not in state:
            raise ValueError(
                "not a jaxbert pipeline state: expected a dict with keys 'pipeline' and 'iterator', "
                f"got {type(state).__name__} {sorted(state) if isinstance(state, Mapping) else ''}"
            )
        saved = dict(state["pipeline"])
        diffs = [
            f"{k}: saved {saved.get(k)!r}, current {self.spec.get(k)!r}"
            for k in sorted(set(saved) | set(self.spec))
            if _normalise(saved.get(k)) != _normalise(self.spec.get(k))
        ]
        if diffs:
            raise ValueError(
                "iterator state was saved by a differently configured pipeline; restoring it would "
                "not continue the same data stream:\n  " + "\n  ".join(diffs)
            )
        self._parent.set_state(state["iterator"])


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def _process_defaults(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # pylint: disable=import-outside-toplevel

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not isinstance(process_count, int) or process_count <= 0:
        raise ValueError(f"process_count must be a positive int, got {process_count!r}")
    if not isinstance(process_index, int) or not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index!r}")
    return process_index, process_count


def _check_batch(batch_size: int, process_count: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if batch_size % process_count:
        raise ValueError(
            f"global batch_size={batch_size} is not divisible by process_count={process_count}; "
            "every host must load the same number of rows"
        )
    return batch_size // process_count


def _check_bucketing(buckets: Any, pad_to_multiple_of: Any, process_count: int) -> None:
    if (buckets is not None or pad_to_multiple_of is not None) and process_count > 1:
        raise ValueError(
            "length bucketing picks the length from each host's own rows, so hosts would disagree "
            f"on the batch shape (process_count={process_count}); use fixed max_length padding"
        )


def _mark_flags_parsed() -> None:
    from absl import flags  # pylint: disable=import-outside-toplevel

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _shuffle_seed(seed: int) -> int:
    # grain shuffles epoch e with seed + e, so runs with seeds s and s+1 would see the same
    # orders one epoch apart; mixing the user seed first keeps seeds independent.
    return int(np.random.SeedSequence(seed).generate_state(1, dtype=np.uint32)[0])


def make_train_iterator(
    source: Any,
    tokenizer: Any,
    *,
    batch_size: int,
    seed: int,
    max_length: int,
    label_map: LabelMap | None = None,
    text_field: str = "text",
    pair_field: str | None = None,
    num_epochs: int | None = None,
    shuffle: bool = True,
    buckets: Sequence[int] | None = None,
    pad_to_multiple_of: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    worker_count: int = 0,
    read_options: grain.ReadOptions | None = None,
) -> PipelineIterator:
    """A deterministic, host-sharded, checkpointable iterator of training batches.

    Args:
      source: random-access source of dict records (``JsonlSource``, ``ArrayRecordSource``, ...).
      tokenizer: Hugging Face tokenizer.
      batch_size: the *global* batch size; each host yields ``batch_size // process_count`` rows.
      seed: shuffle seed (any int >= 0); the same seed gives the same batches.
      max_length: truncation/padding length.
      label_map: maps ``record[label_map.field]`` to ``labels``; ``None`` for no labels.
      text_field / pair_field: record fields holding the first / optional second segment.
      num_epochs: passes over the data, ``None`` = infinite. Batches run across epoch
        boundaries (each epoch reshuffled); with a finite count the trailing partial global
        batch is dropped.
      shuffle: global shuffle (``False`` keeps source order, e.g. for debugging).
      buckets / pad_to_multiple_of: trim each batch to the smallest bucket >= its longest row
        (single-host only).
      process_index / process_count: this host and the host count (default: from jax).
      worker_count: grain worker processes (0 = in-process threads only).
      read_options: grain ``ReadOptions`` for the in-process thread pool (default 2 threads,
        16 batches of prefetch).

    Returns:
      A :class:`PipelineIterator` (``next(it)``, ``it.get_state()``, ``it.set_state(s)``).
    """
    process_index, process_count = _process_defaults(process_index, process_count)
    per_host = _check_batch(batch_size, process_count)
    _check_bucketing(buckets, pad_to_multiple_of, process_count)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if num_epochs is not None and (not isinstance(num_epochs, int) or num_epochs <= 0):
        raise ValueError(f"num_epochs must be a positive int or None (infinite), got {num_epochs!r}")
    num_records = len(source)
    if num_records == 0:
        raise ValueError(f"{source!r} has no records")
    if num_epochs is not None and num_records * num_epochs < batch_size:
        raise ValueError(
            f"{num_records} records x {num_epochs} epochs is less than one global batch of {batch_size}"
        )
    collate = Collate(max_length, buckets=buckets, pad_to_multiple_of=pad_to_multiple_of)
    tokenize = Tokenize(tokenizer, max_length)

    ds = grain.MapDataset.source(source)
    ds = ds.map_with_index(
        ExtractFields(source, text_field=text_field, pair_field=pair_field, label_map=label_map)
    )
    if shuffle:
        ds = ds.shuffle(seed=_shuffle_seed(seed))
    ds = ds.repeat(num_epochs)
    if num_epochs is not None:
        # Same number of batches on every host: cut the global stream to whole global batches.
        ds = ds[: (len(ds) // batch_size) * batch_size]
    ds = ds[process_index::process_count]
    ds = ds.map(tokenize)
    ds = ds.batch(per_host, drop_remainder=True, batch_fn=collate)

    iter_ds = ds.to_iter_dataset(read_options or grain.ReadOptions(num_threads=2, prefetch_buffer_size=16))
    if worker_count:
        if worker_count < 0:
            raise ValueError(f"worker_count must be >= 0, got {worker_count}")
        _mark_flags_parsed()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))

    spec = {
        "kind": "train",
        "num_records": num_records,
        "global_batch_size": batch_size,
        "seed": seed,
        "shuffle": bool(shuffle),
        "num_epochs": num_epochs,
        "max_length": max_length,
        "buckets": list(collate.buckets) if collate.buckets is not None else None,
        "text_field": text_field,
        "pair_field": pair_field,
        "labels": label_map.to_dict() if label_map is not None else None,
        "process_index": process_index,
        "process_count": process_count,
        "worker_count": worker_count,
    }
    return PipelineIterator(iter(iter_ds), spec)


class _PaddedEvalSource:
    """Source records followed by padding records up to ``length``, each with a weight."""

    def __init__(self, source: Any, extract: ExtractFields, length: int, pad: dict[str, Any]):
        self.source = source
        self.extract = extract
        self.num_records = len(source)
        self.length = length
        self.pad = pad

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < self.num_records:
            out = self.extract.map_with_index(index, self.source[index])
            out["weight"] = np.float32(1.0)
            return out
        return dict(self.pad)

    def __repr__(self) -> str:
        return f"_PaddedEvalSource({self.source!r}, padded_to={self.length})"


def make_eval_batches(
    source: Any,
    tokenizer: Any,
    *,
    batch_size: int,
    max_length: int,
    label_map: LabelMap | None = None,
    text_field: str = "text",
    pair_field: str | None = None,
    buckets: Sequence[int] | None = None,
    pad_to_multiple_of: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
    """Evaluation batches in source order; every example exactly once; fixed batch shape.

    The records are padded up to a whole number of global batches with rows of weight 0
    (``[CLS] [SEP]`` tokens, label 0), so all batches have ``batch_size // process_count``
    rows and every host yields the same number of batches. Weight real rows by
    ``batch["weights"]`` (1.0) when summing metrics.

    Returns:
      A ``grain.MapDataset`` of batch dicts: ``len(ds)`` batches, ``ds[i]`` random access,
      ``for batch in ds`` (or ``ds.to_iter_dataset(grain.ReadOptions(...))``) to iterate.
    """
    process_index, process_count = _process_defaults(process_index, process_count)
    per_host = _check_batch(batch_size, process_count)
    _check_bucketing(buckets, pad_to_multiple_of, process_count)
    num_records = len(source)
    if num_records == 0:
        raise ValueError(f"{source!r} has no records")
    collate = Collate(max_length, buckets=buckets, pad_to_multiple_of=pad_to_multiple_of)
    tokenize = Tokenize(tokenizer, max_length)
    extract = ExtractFields(source, text_field=text_field, pair_field=pair_field, label_map=label_map)

    pad: dict[str, Any] = {"text": ""}
    if pair_field is not None:
        pad["pair"] = ""
    if label_map is not None:
        pad["label"] = np.int32(0)
    pad["weight"] = np.float32(0.0)
    padded_len = math.ceil(num_records / batch_size) * batch_size

    ds = grain.MapDataset.source(_PaddedEvalSource(source, extract, padded_len, pad))
    ds = ds[process_index::process_count]
    ds = ds.map(tokenize)
    return ds.batch(per_host, drop_remainder=True, batch_fn=collate)
