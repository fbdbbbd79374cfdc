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

from jaxbert.data.masking import to_targets
from jaxbert.data.packing import pack_rows, packing_efficiency, segment_positions
from jaxbert.data import batching

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
    """Random access over the rows of :func:`build_rows` (grain data source): item ``i`` is
    ``{"input_ids", "word_ids", "segment_ids"}``, each int32 ``[L]``."""

    KEYS = ("input_ids", "word_ids", "segment_ids")

    def __init__(self, rows: Mapping[str, Any]):
        self.arrays = {k: np.asarray(rows[k]) for k in self.KEYS}
        self.num_rows = int(self.arrays["input_ids"].shape[0])
        self.pad_id = int(rows.get("pad_token_id", 0)) if isinstance(rows, dict) else 0

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        return {k: v[index] for k, v in self.arrays.items()}

    def pad_row(self) -> dict[str, np.ndarray]:
        """An empty row (pad tokens, no words, segment 0): the padding of evaluation batches."""
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


def _masker_name(masker: Any) -> str:
    return getattr(masker, "kind", type(masker).__name__)


def make_mlm_train_iterator(rows: Mapping[str, Any], masker: Any, *, batch_size: int, seed: int,
                            num_predictions: int, packed: bool = True, with_ngrams: bool = False,
                            process_index: int | None = None, process_count: int | None = None,
                            read_options: grain.ReadOptions | None = None) -> batching.PipelineIterator:
    """Shuffled, repeated, host-sharded, checkpointable iterator of masked MLM batches.

    Masks are drawn per host after sharding (seeded by ``seed`` and the row's position), so
    every epoch sees fresh masks and a restored iterator resumes with the same ones.
    """
    source = RowsSource(rows)
    spec = {"masker": _masker_name(masker), "num_predictions": int(num_predictions), "packed": bool(packed),
            "max_length": int(source.arrays["input_ids"].shape[1])}
    return batching.train_iterator(
        source, kind="mlm_train", batch_size=batch_size, seed=seed, collate=batching.stack,
        features=MaskRow(masker, num_predictions, with_segments=packed, with_ngrams=with_ngrams),
        spec=spec, process_index=process_index, process_count=process_count, read_options=read_options)


def make_mlm_eval_batches(rows: Mapping[str, Any], masker: Any, *, batch_size: int, seed: int,
                          num_predictions: int, packed: bool = True, with_ngrams: bool = False,
                          process_index: int | None = None, process_count: int | None = None
                          ) -> grain.MapDataset:
    """Every held-out row once, in order, masked with a fixed ``seed``; padded with empty rows."""
    source = RowsSource(rows)
    return batching.eval_batches(
        source, batch_size=batch_size, collate=batching.stack, pad=source.pad_row(), weight_key=None,
        features=MaskRow(masker, num_predictions, with_segments=packed, with_ngrams=with_ngrams),
        seed=seed, process_index=process_index, process_count=process_count)
