"""Classification text on the batching skeleton (:mod:`jaxbert.data.batching`): records ->
fields -> tokens -> (bucketed) batches.

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
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from jaxbert.data import batching
from jaxbert.data.labels import LabelMap
from jaxbert.data.sources import describe_record
from jaxbert.data.tokenization import MODEL_KEYS, encode_batch

__all__ = ["Collate", "RecordFields", "Tokenize", "check_records", "make_eval_batches", "make_train_iterator"]


class RecordFields:
    """Random-access view of a source: record ``i`` -> ``{"text", ["pair"], ["label"]}``.

    ``label`` is ``np.int32`` (through ``label_map``). Errors name the record (file and line).
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

    def __len__(self) -> int:
        return len(self.source)

    def __repr__(self) -> str:
        return repr(self.source)

    def _text(self, record: Mapping[str, Any], field: str) -> str:
        if field not in record:
            raise ValueError(f": no text field {field!r} (record has {sorted(record)})")
        value = record[field]
        if not isinstance(value, str):
            raise TypeError(f": field {field!r} must be str, got {type(value).__name__}: {value!r:.80}")
        return value

    def __getitem__(self, index: int) -> dict[str, Any]:
        element = self.source[index]
        where = lambda: describe_record(self.source, index)  # noqa: E731  (only built on error)
        if not isinstance(element, Mapping):
            raise TypeError(f"{where()}: expected a dict record, got {type(element).__name__}")
        try:
            out: dict[str, Any] = {"text": self._text(element, self.text_field)}
            if self.pair_field is not None:
                out["pair"] = self._text(element, self.pair_field)
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

    def check_all(self) -> None:
        """Check every record now (one pass): a dict, text (and pair) fields present and str, the label
        in ``label_map``; the first bad record raises, naming its file and line. Run before training so a
        bad record in an eval split fails at startup, not at the evaluation."""
        for i in range(len(self.source)):
            self[i]


def check_records(
    source: Any, *, text_field: str = "text", pair_field: str | None = None, label_map: LabelMap | None = None
) -> None:
    """Every record of ``source`` as the pipelines will read it (:meth:`RecordFields.check_all`)."""
    RecordFields(source, text_field=text_field, pair_field=pair_field, label_map=label_map).check_all()


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
        for k in MODEL_KEYS:
            out[k] = enc[k][0]
        return out


class Collate:
    """grain ``batch_fn``: stack per-example dicts; optionally trim the length to a bucket.

    With ``buckets`` (or ``pad_to_multiple_of``) the ``[B, max_length]`` token arrays are cut
    to the smallest bucket holding the batch's longest row, so every batch has one uniform
    length from a small set (one jit compilation per bucket). ``label`` / ``weight`` become
    ``labels`` (int32 ``[B]``) / ``weights`` (float32 ``[B]``).
    """

    def __init__(
        self,
        max_length: int,
        *,
        buckets: Sequence[int] | None = None,
        pad_to_multiple_of: int | None = None,
    ):
        self.max_length = max_length
        self.buckets = batching.bucket_set(max_length, buckets, pad_to_multiple_of)

    def __call__(self, elements: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        batch = batching.stack(elements)
        if self.buckets is not None:
            batching.trim_to_bucket(batch, self.buckets, MODEL_KEYS)
        if "label" in batch:
            batch["labels"] = batch.pop("label").astype(np.int32)
        if "weight" in batch:
            batch["weights"] = batch.pop("weight").astype(np.float32)
        return batch


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
) -> batching.PipelineIterator:
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
      A :class:`~jaxbert.data.batching.PipelineIterator` (``next(it)``, ``it.get_state()``,
      ``it.set_state(s)``) of batches in the module docstring's format.
    """
    collate = Collate(max_length, buckets=buckets, pad_to_multiple_of=pad_to_multiple_of)
    spec = {
        "shuffle": bool(shuffle),
        "num_epochs": num_epochs,
        "max_length": max_length,
        "buckets": list(collate.buckets) if collate.buckets is not None else None,
        "text_field": text_field,
        "pair_field": pair_field,
        "labels": label_map.to_dict() if label_map is not None else None,
        "worker_count": worker_count,
    }
    return batching.train_iterator(
        RecordFields(source, text_field=text_field, pair_field=pair_field, label_map=label_map),
        kind="train", batch_size=batch_size, seed=seed, collate=collate,
        features=Tokenize(tokenizer, max_length), shuffle=shuffle, num_epochs=num_epochs,
        bucketed=collate.buckets is not None, spec=spec, process_index=process_index,
        process_count=process_count, read_options=read_options, worker_count=worker_count)


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
    collate = Collate(max_length, buckets=buckets, pad_to_multiple_of=pad_to_multiple_of)
    pad: dict[str, Any] = {"text": ""}
    if pair_field is not None:
        pad["pair"] = ""
    if label_map is not None:
        pad["label"] = np.int32(0)
    pad["weight"] = np.float32(0.0)
    return batching.eval_batches(
        RecordFields(source, text_field=text_field, pair_field=pair_field, label_map=label_map),
        batch_size=batch_size, collate=collate, pad=pad, features=Tokenize(tokenizer, max_length),
        bucketed=collate.buckets is not None, process_index=process_index, process_count=process_count)
