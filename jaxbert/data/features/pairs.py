"""Pairs, triplets and n-tuples of texts from JSONL, batched for sentence-embedding training.

A record holds an ``anchor`` text, usually a ``positive``, optionally hard ``negative`` (s)
(one string or a list; every record the same count), a ``score`` (CoSENT / cosine losses), a
``label`` (SBERT softmax loss), a ``domain`` (mixture-of-experts routing) and ``teacher``
logits (DSE)::

    {"anchor": "what is a thorn", "positive": "thorn: a sharp-pointed tip on a stem",
     "negative": ["rose: a shrub", "pin: a piece of wire"], "domain": "wordnet"}

Field names are configurable (:class:`PairFields`); :func:`read_pair_records` validates every
record up front and stops at the first bad one with the file and line: a missing or empty text,
a negative list whose length differs from the first record's, a domain absent from the expert
table, a label absent from the label map, a non-numeric score.

Mirror-BERT (Liu et al. 2021): ``mirror=True`` turns plain texts into identity pairs whose
second view has a random span of ``mask_span`` characters replaced by the tokenizer's mask token
(texts shorter than 30 characters are left whole, as the reference does); the two views then
differ by that span and by dropout. The span is drawn from the stream position and the seed, so
a resumed run masks the same spans.

Batches (``B`` rows per host, ``K`` texts per row = 1 + positive + negatives, ``L`` the bucket
of the longest text in the batch, or ``max_length``)::

    input_ids, attention_mask, token_type_ids : np.int32 [B, K, L]
    scores  : np.float32 [B]   (when the records have scores)
    labels  : np.int32 [B]     (labels)
    domains : np.int32 [B]     (domains)
    teacher : np.float32 [B, T] (teacher logits)

Every text of a row stays on the row's device, so the batch is split over the data axis like
any other, and the loss sees the global batch (all devices' texts as negatives).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np

from jaxbert.data import batching
from jaxbert.data.labels import LabelMap
from jaxbert.data.sources import describe_record, read_jsonl_lines
from jaxbert.data.tokenization import MODEL_KEYS, encode_batch

__all__ = ["PairFields", "PairRecords", "PairCollate", "read_pair_records", "make_pair_iterator",
           "span_mask", "retrieval_pairs", "write_jsonl"]

MIRROR_MIN_CHARS = 30  # Mirror-BERT leaves shorter texts unmasked


@dataclasses.dataclass(frozen=True)
class PairFields:
    """Record field names. ``negative`` may hold a str or a list of str."""

    anchor: str = "anchor"
    positive: str | None = "positive"
    negative: str | None = "negative"
    score: str | None = None
    label: str | None = None
    domain: str | None = None
    teacher: str | None = None


@dataclasses.dataclass
class PairRecords:
    """Validated records: ``texts[i]`` has ``num_texts`` strings; optional per-row targets."""

    texts: list[list[str]]
    num_texts: int
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None
    domains: np.ndarray | None = None
    teacher: np.ndarray | None = None
    where: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def _text(record: Mapping[str, Any], field: str, where: str) -> str:
    if field not in record:
        raise ValueError(f"{where}: no field {field!r} (record has {sorted(record)})")
    value = record[field]
    if not isinstance(value, str):
        raise TypeError(f"{where}: field {field!r} must be a str, got {type(value).__name__}: {value!r:.80}")
    if not value.strip():
        raise ValueError(f"{where}: field {field!r} is an empty text")
    return value


def read_pair_records(source: Any, fields: PairFields = PairFields(), *, mirror: bool = False,
                      label_map: LabelMap | None = None, domains: Sequence[str] | None = None,
                      require_score: bool = False, require_label: bool = False,
                      require_teacher: bool = False) -> PairRecords:
    """Validate and extract every record of ``source`` (see the module docstring for the errors).

    ``mirror``: records need only ``fields.anchor``; each becomes the pair (text, text).
    ``domains``: the expert table (domain names in expert order); ``fields.domain`` must name one.
    """
    n = len(source)
    if n == 0:
        raise ValueError(f"{source!r} has no records")
    texts, scores, labels, doms, teacher, where_list = [], [], [], [], [], []
    num_neg, first_where = None, None
    domain_index = {d: i for i, d in enumerate(domains)} if domains is not None else None
    if fields.domain is not None and domain_index is None:
        raise ValueError(f"records have a domain field {fields.domain!r} but no expert table (domains) was given")
    if require_score and fields.score is None:
        raise ValueError("this objective needs a score per record: set the score field name (data.score_field)")
    for i in range(n):
        record = source[i]
        where = describe_record(source, i)
        if not isinstance(record, Mapping):
            raise TypeError(f"{where}: expected a JSON object, got {type(record).__name__}")
        row = [_text(record, fields.anchor, where)]
        if mirror:
            row.append(row[0])
        else:
            if fields.positive is None:
                raise ValueError("PairFields.positive is None: pairs need a positive field (or mirror=True)")
            row.append(_text(record, fields.positive, where))
            if fields.negative is not None and fields.negative in record:
                neg = record[fields.negative]
                negs = [neg] if isinstance(neg, str) else neg
                if not isinstance(negs, list):
                    raise TypeError(f"{where}: field {fields.negative!r} must be a str or a list of str, "
                                    f"got {type(neg).__name__}")
                for j, t in enumerate(negs):
                    row.append(_text({f"{fields.negative}[{j}]": t}, f"{fields.negative}[{j}]", where))
                count = len(negs)
            else:
                count = 0
            if num_neg is None:
                num_neg, first_where = count, where
            elif count != num_neg:
                raise ValueError(f"{where}: {count} negatives in field {fields.negative!r}, but {first_where} has "
                                 f"{num_neg}; every record needs the same number of negatives (ragged lists "
                                 "cannot form one batch)")
        texts.append(row)
        where_list.append(where)
        if require_score:
            if fields.score is None or fields.score not in record:
                raise ValueError(f"{where}: no score field {fields.score!r} (record has {sorted(record)})")
            value = record[fields.score]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{where}: score field {fields.score!r} must be a finite number, got {value!r}")
            scores.append(float(value))
        if require_label:
            if label_map is None:
                raise ValueError("require_label needs a label_map")
            if label_map.field not in record:
                raise ValueError(f"{where}: no label field {label_map.field!r} (record has {sorted(record)})")
            labels.append(label_map.encode(record[label_map.field], where=where))
        if domain_index is not None:
            if fields.domain is None or fields.domain not in record:
                raise ValueError(f"{where}: no domain field {fields.domain!r} (record has {sorted(record)})")
            d = record[fields.domain]
            if not isinstance(d, str) or d not in domain_index:
                raise ValueError(f"{where}: domain {d!r} is not in the expert table {list(domain_index)}")
            doms.append(domain_index[d])
        if require_teacher:
            if fields.teacher is None or fields.teacher not in record:
                raise ValueError(f"{where}: no teacher field {fields.teacher!r} (record has {sorted(record)})")
            t = record[fields.teacher]
            t = [t] if isinstance(t, (int, float)) and not isinstance(t, bool) else t
            if not isinstance(t, list) or not t or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                           for x in t):
                raise ValueError(f"{where}: teacher field {fields.teacher!r} must be a number or a list of numbers")
            if teacher and len(t) != len(teacher[0]):
                raise ValueError(f"{where}: {len(t)} teacher logits, but earlier records have {len(teacher[0])}")
            teacher.append([float(x) for x in t])
    return PairRecords(
        texts=texts, num_texts=len(texts[0]),
        scores=np.asarray(scores, np.float32) if require_score else None,
        labels=np.asarray(labels, np.int32) if require_label else None,
        domains=np.asarray(doms, np.int32) if domain_index is not None else None,
        teacher=np.asarray(teacher, np.float32) if require_teacher else None,
        where=where_list)


def span_mask(text: str, rng: np.random.Generator, mask_span: int, mask_token: str = "[MASK]") -> str:
    """Mirror-BERT's augmentation: replace ``mask_span`` characters at a random position by ``mask_token``.

    Texts shorter than 30 characters (or not longer than the span) are returned unchanged.
    """
    if mask_span <= 0 or len(text) <= mask_span or len(text) < MIRROR_MIN_CHARS:
        return text
    i = int(rng.integers(len(text) - mask_span))
    return " ".join([text[:i], mask_token, text[i + mask_span:]])


class _PairItems:
    """Random access over the validated records: ``{"row": i, "texts", targets...}``."""

    def __init__(self, records: PairRecords):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.records
        out: dict[str, Any] = {"texts": list(r.texts[i])}
        if r.scores is not None:
            out["scores"] = r.scores[i]
        if r.labels is not None:
            out["labels"] = r.labels[i]
        if r.domains is not None:
            out["domains"] = r.domains[i]
        if r.teacher is not None:
            out["teacher"] = r.teacher[i]
        return out


class _Augment(grain.transforms.MapWithIndex):
    """Mirror-BERT span masking of the second view, seeded by (seed, stream position)."""

    def __init__(self, seed: int, mask_span: int, mask_token: str):
        self.seed, self.mask_span, self.mask_token = seed, mask_span, mask_token

    def map_with_index(self, index: int, element: dict) -> dict:
        rng = np.random.default_rng([self.seed, int(index)])
        out = dict(element)
        out["texts"] = [element["texts"][0], span_mask(element["texts"][1], rng, self.mask_span, self.mask_token),
                        *element["texts"][2:]]
        return out


class _TokenizeTexts(grain.transforms.Map):
    """``texts`` (K strings) -> ``input_ids``/``attention_mask``/``token_type_ids`` int32 ``[K, max_length]``."""

    def __init__(self, tokenizer: Any, max_length: int):
        self.tokenizer = copy.deepcopy(tokenizer)
        self.max_length = max_length
        # Set the backend truncation state once, before grain's threads encode.
        encode_batch(self.tokenizer, ["warm up"], max_length=max_length)

    def map(self, element: dict) -> dict:
        out = dict(element)
        enc = encode_batch(self.tokenizer, out.pop("texts"), max_length=self.max_length)
        out.update(enc)
        return out


class PairCollate:
    """Stack ``[K, L]`` rows into ``[B, K, L]``; trim ``L`` to the smallest bucket >= the longest text.

    Targets are cast: ``scores`` / ``teacher`` float32, ``labels`` / ``domains`` int32.
    """

    def __init__(self, max_length: int, buckets: Sequence[int] | None = None):
        self.max_length = max_length
        self.buckets = batching.bucket_set(max_length, buckets)

    def __call__(self, elements: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        batch = batching.stack(elements)
        if self.buckets is not None:
            batching.trim_to_bucket(batch, self.buckets, MODEL_KEYS)
        for k, dt in (("scores", np.float32), ("labels", np.int32), ("domains", np.int32), ("teacher", np.float32)):
            if k in batch:
                batch[k] = batch[k].astype(dt)
        return batch


def make_pair_iterator(records: PairRecords, tokenizer: Any, *, batch_size: int, seed: int, max_length: int,
                       buckets: Sequence[int] | None = None, mirror_span: int = 0, shuffle: bool = True,
                       process_index: int | None = None, process_count: int | None = None,
                       spec: Mapping[str, Any] | None = None) -> batching.PipelineIterator:
    """Shuffled, repeated, host-sharded, checkpointable iterator of pair batches (module docstring).

    ``mirror_span > 0`` span-masks the second text of every row (Mirror-BERT). Host ``p`` of
    ``P`` keeps stream rows ``p, p + P, ...``; all hosts must agree on ``L``, so ``buckets``
    needs a single host.
    """
    if len(records) < batch_size:
        raise ValueError(f"{len(records)} pair records are fewer than one global batch of {batch_size}")
    collate = PairCollate(max_length, buckets)
    augment = None
    if mirror_span:
        augment = _Augment(seed, int(mirror_span), getattr(tokenizer, "mask_token", None) or "[MASK]")
    full_spec = {"shuffle": bool(shuffle), "max_length": max_length, "num_texts": records.num_texts,
                 "buckets": list(collate.buckets) if collate.buckets else None, "mirror_span": int(mirror_span),
                 **dict(spec or {})}
    return batching.train_iterator(
        _PairItems(records), kind="pairs", batch_size=batch_size, seed=seed, collate=collate,
        features=_TokenizeTexts(tokenizer, max_length), augment=augment, shuffle=shuffle,
        bucketed=collate.buckets is not None, spec=full_spec, process_index=process_index,
        process_count=process_count, read_options=grain.ReadOptions(num_threads=2, prefetch_buffer_size=8))


# ----------------------------------------------------------------------------- building pair files


def retrieval_pairs(queries_path: str | os.PathLike, qrels_path: str | os.PathLike,
                    corpus_path: str | os.PathLike) -> list[dict[str, str]]:
    """``{"anchor": query text, "positive": relevant doc text}`` for every positive qrel.

    Errors name the file and line of a qrel whose query or document is missing.
    """
    queries = {r["id"]: r["text"] for _, r in read_jsonl_lines(queries_path)}
    corpus = {r["id"]: r["text"] for _, r in read_jsonl_lines(corpus_path)}
    out = []
    for lineno, r in read_jsonl_lines(qrels_path):
        if float(r.get("score", 1)) <= 0:
            continue
        if r["query_id"] not in queries:
            raise ValueError(f"{qrels_path} line {lineno}: query_id {r['query_id']!r} is not in {queries_path}")
        if r["doc_id"] not in corpus:
            raise ValueError(f"{qrels_path} line {lineno}: doc_id {r['doc_id']!r} is not in the corpus "
                             f"{corpus_path} ({len(corpus)} documents)")
        out.append({"anchor": queries[r["query_id"]], "positive": corpus[r["doc_id"]]})
    return out


def write_jsonl(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write rows atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
