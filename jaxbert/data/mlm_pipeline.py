"""MLM input pipelines: documents -> tokens with word ids -> chunks -> packed rows -> masked batches.

    docs = tokenize_with_words(tok, texts)                     # [(ids, word_ids), ...]
    rows = build_rows(docs, tok, max_length=128, packing=True)  # dict of [N, L] arrays + stats
    masker = build_masker("span", MaskingSpec.from_tokenizer(tok, rate=0.3))
    it = make_mlm_train_iterator(rows, masker, batch_size=32, seed=0, num_predictions=39)
    batch = next(it)

Rows are built once (static packing); masking runs per element inside grain (``random_map``),
so every epoch sees fresh masks (RoBERTa's dynamic masking) and a restored iterator resumes
with exactly the masks it would have drawn. Evaluation batches use a fixed seed, so held-out
loss/accuracy are comparable across steps and runs.

Batch format (``B`` rows, ``L`` = max_length, ``M`` = num_predictions)::

    input_ids, attention_mask, token_type_ids, position_ids : int32 [B, L]
    segment_ids      : int32 [B, L]  (only when the rows are packed)
    masked_positions, masked_offsets, masked_labels : int32 [B, M]  (labels -100 = none)
    ngram_positions, ngram_labels                   : int32 [B, M]  (n-gram masking only)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from jaxbert.data.masking import IGNORE, to_targets
from jaxbert.data.packing import pack_rows, packing_efficiency, segment_positions
from jaxbert.data.pipeline import PipelineIterator, _check_batch, _process_defaults, _shuffle_seed

__all__ = ["MaskRow", "RowsSource", "build_rows", "chunk_documents", "make_mlm_eval_batches",
           "make_mlm_train_iterator"]


def chunk_documents(docs: Sequence[tuple[np.ndarray, np.ndarray]], max_length: int, cls_id: int, sep_id: int
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut each document into ``[CLS] piece [SEP]`` units of at most ``max_length`` tokens.

    Pieces end at word boundaries (a word is never split across units unless the word alone is
    longer than ``max_length - 2`` tokens). Special tokens get word id -1.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 3:
        raise ValueError(f"max_length={max_length!r} is too short: [CLS] and [SEP] need 2 positions and at "
                         "least one text token must fit (max_length >= 3)")
    room = max_length - 2
    units = []
    for ids, words in docs:
        ids, words = np.asarray(ids, np.int32), np.asarray(words, np.int32)
        n, at = len(ids), 0
        while at < n:
            end = min(at + room, n)
            if end < n and words[end] >= 0 and words[end] == words[end - 1]:
                # back off to the start of the word that would be cut
                cut = end - 1
                while cut > at and words[cut - 1] == words[end]:
                    cut -= 1
                if cut > at:
                    end = cut
            w = words[at:end]
            w = np.where(w >= 0, w - (w[w >= 0].min() if (w >= 0).any() else 0), -1)
            units.append((np.concatenate([[cls_id], ids[at:end], [sep_id]]).astype(np.int32),
                          np.concatenate([[-1], w, [-1]]).astype(np.int32)))
            at = end
    return units


def build_rows(docs: Sequence[tuple[np.ndarray, np.ndarray]], tokenizer: Any, max_length: int, *,
               packing: bool = True, strategy: str = "ffd") -> dict[str, Any]:
    """Tokenized documents -> ``[N, max_length]`` rows (see :func:`jaxbert.data.packing.pack_rows`).

    Returns the row arrays plus ``stats``: number of documents, units and rows, and the
    packing efficiency (non-pad fraction) with and without packing.
    """
    if not docs or not any(len(d[0]) for d in docs):
        raise ValueError("cannot build MLM rows from an empty corpus (no tokens in any document)")
    units = chunk_documents([d for d in docs if len(d[0])], max_length, tokenizer.cls_token_id,
                            tokenizer.sep_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = pack_rows(units, max_length, pad, packing=packing, strategy=strategy)
    tokens = sum(len(u[0]) for u in units)
    rows["stats"] = {"documents": len(docs), "units": len(units), "rows": int(rows["input_ids"].shape[0]),
                     "tokens": int(tokens), "packed": bool(packing),
                     "packing_efficiency": packing_efficiency(rows["attention_mask"]),
                     "unpacked_efficiency": tokens / (len(units) * max_length)}
    return rows


class RowsSource:
    """Random access over the rows of :func:`build_rows` (grain data source)."""

    KEYS = ("input_ids", "word_ids", "segment_ids")

    def __init__(self, rows: Mapping[str, Any], pad_rows_to: int | None = None):
        self.arrays = {k: np.asarray(rows[k]) for k in self.KEYS}
        self.num_rows = int(self.arrays["input_ids"].shape[0])
        self.length = max(self.num_rows, pad_rows_to or 0)
        self.pad_id = int(rows.get("pad_token_id", 0)) if isinstance(rows, dict) else 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if index < self.num_rows:
            return {k: v[index] for k, v in self.arrays.items()}
        L = self.arrays["input_ids"].shape[1]
        return {"input_ids": np.full(L, self.pad_id, np.int32), "word_ids": np.full(L, -1, np.int32),
                "segment_ids": np.zeros(L, np.int32)}

    def __repr__(self) -> str:
        return f"RowsSource(rows={self.num_rows}, length={self.arrays['input_ids'].shape[1]})"


class MaskRow(grain.transforms.RandomMap):
    """grain transform: one row -> masked model inputs and fixed-size prediction targets."""

    def __init__(self, masker: Any, num_predictions: int, *, with_segments: bool, with_ngrams: bool = False):
        self.masker = masker
        self.num_predictions = int(num_predictions)
        self.with_segments = with_segments
        self.with_ngrams = with_ngrams

    def random_map(self, element: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        inputs, labels = self.masker(element["input_ids"], element["word_ids"], rng)
        t = to_targets(inputs, labels, self.num_predictions)
        seg = element["segment_ids"]
        visible = t["visible"] & (seg > 0)
        out = {"input_ids": t["input_ids"], "attention_mask": visible.astype(np.int32),
               "token_type_ids": np.zeros_like(seg), "position_ids": segment_positions(seg, visible),
               "masked_positions": t["masked_positions"], "masked_offsets": t["masked_offsets"],
               "masked_labels": t["masked_labels"]}
        if self.with_segments:
            out["segment_ids"] = seg
        if self.with_ngrams:
            out["ngram_positions"] = t["ngram_positions"]
            out["ngram_labels"] = t["ngram_labels"]
        return out


def _collate(elements: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([e[k] for e in elements]) for k in elements[0]}


def _masker_name(masker: Any) -> str:
    return getattr(masker, "kind", type(masker).__name__)


def make_mlm_train_iterator(rows: Mapping[str, Any], masker: Any, *, batch_size: int, seed: int,
                            num_predictions: int, packed: bool = True, with_ngrams: bool = False,
                            process_index: int | None = None, process_count: int | None = None,
                            read_options: grain.ReadOptions | None = None) -> PipelineIterator:
    """Shuffled, repeated, host-sharded, checkpointable iterator of masked MLM batches."""
    process_index, process_count = _process_defaults(process_index, process_count)
    per_host = _check_batch(batch_size, process_count)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    source = RowsSource(rows)
    if len(source) == 0:
        raise ValueError("no MLM rows to train on")
    ds = grain.MapDataset.source(source).shuffle(seed=_shuffle_seed(seed)).repeat(None)
    ds = ds[process_index::process_count]
    ds = ds.random_map(MaskRow(masker, num_predictions, with_segments=packed, with_ngrams=with_ngrams),
                       seed=_shuffle_seed(seed + 1))
    ds = ds.batch(per_host, drop_remainder=True, batch_fn=_collate)
    it = ds.to_iter_dataset(read_options or grain.ReadOptions(num_threads=2, prefetch_buffer_size=16))
    spec = {"kind": "mlm_train", "num_records": len(source), "global_batch_size": batch_size, "seed": seed,
            "masker": _masker_name(masker), "num_predictions": int(num_predictions), "packed": bool(packed),
            "max_length": int(source.arrays["input_ids"].shape[1]), "process_index": process_index,
            "process_count": process_count}
    return PipelineIterator(iter(it), spec)


def make_mlm_eval_batches(rows: Mapping[str, Any], masker: Any, *, batch_size: int, seed: int,
                          num_predictions: int, packed: bool = True, with_ngrams: bool = False,
                          process_index: int | None = None, process_count: int | None = None
                          ) -> grain.MapDataset:
    """Every held-out row once, in order, masked with a fixed ``seed``; padded with empty rows."""
    process_index, process_count = _process_defaults(process_index, process_count)
    per_host = _check_batch(batch_size, process_count)
    n = int(np.asarray(rows["input_ids"]).shape[0])
    if n == 0:
        raise ValueError("no MLM rows to evaluate")
    padded = -(-n // batch_size) * batch_size
    ds = grain.MapDataset.source(RowsSource(rows, pad_rows_to=padded))
    ds = ds.random_map(MaskRow(masker, num_predictions, with_segments=packed, with_ngrams=with_ngrams),
                       seed=_shuffle_seed(seed))
    ds = ds[process_index::process_count]
    return ds.batch(per_host, drop_remainder=True, batch_fn=_collate)


def count_predictions(batch: Mapping[str, np.ndarray]) -> int:
    """Number of real token predictions in a batch."""
    return int((np.asarray(batch["masked_labels"]) != IGNORE).sum())
