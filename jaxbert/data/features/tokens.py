"""Token classification inputs: words -> word pieces with aligned labels, split into chunks.

Records hold a list of words and one tag per word (``{"tokens": [...], "tags": [...]}``, the
CoNLL / Brown layout). :func:`build_token_features` tokenizes every sentence once:

* each word becomes its word pieces (a word the tokenizer maps to nothing -- e.g. a lone
  control character -- becomes ``[UNK]``, so every word keeps a position and a prediction);
* **label alignment** (``alignment``): ``"first"`` puts the word's label on its first piece
  and ignores the others (label ``-1``); ``"all"`` labels every piece, continuation pieces of
  a ``B-X`` word getting ``I-X`` (when the label set has it; HF ``run_ner``'s
  ``label_all_tokens``). Predictions are always read from the first piece of each word;
* a sentence longer than ``max_length - 2`` pieces is split **between words** into several
  chunks (``[CLS] pieces [SEP]`` each), so every word is predicted; a single word longer than
  the budget keeps its first pieces;
* bad records fail before training with the file and line: tokens and tags of different
  lengths, a tag outside the label set, a non-string token.

The result, :class:`TokenFeatures`, holds the features for the batch pipelines
(``input_ids``, ``labels`` per piece) and, per feature, which sentence and words it covers
and where each word's first piece sits, to map predictions back to words
(:meth:`TokenFeatures.word_predictions`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxbert.data.labels import LabelMap
from jaxbert.data.sources import describe_record

__all__ = ["ALIGNMENTS", "IGNORE", "TokenFeatures", "build_token_features", "continuation_ids", "read_words"]

ALIGNMENTS = ("first", "all")
IGNORE = -1  # label of pieces without a training target


@dataclasses.dataclass
class TokenFeatures:
    """Features of a list of sentences plus the map from features back to words."""

    features: list[dict[str, np.ndarray]]
    sentence: np.ndarray  # [F] index of the sentence (record) a feature belongs to
    word_start: np.ndarray  # [F] index (in the sentence) of the feature's first word
    word_positions: list[np.ndarray]  # per feature: position of each word's first piece
    num_words: np.ndarray  # [S] words per sentence

    def __len__(self) -> int:
        return len(self.features)

    def word_predictions(self, piece_predictions: np.ndarray, feature_index: np.ndarray | None = None
                         ) -> list[np.ndarray]:
        """Per sentence, the prediction of each word (read at its first piece).

        ``piece_predictions [N, L]`` are per-piece values (class ids, or scores ``[N, L, C]``)
        for features ``feature_index [N]`` (default ``0..N-1``; rows with index -1 are padding
        and ignored). Every feature must be present exactly once.
        """
        if feature_index is None:
            feature_index = np.arange(len(piece_predictions))
        feature_index = np.asarray(feature_index)
        keep = feature_index >= 0
        rows = np.flatnonzero(keep)
        got = feature_index[keep]
        if len(got) != len(self.features) or len(np.unique(got)) != len(got):
            raise ValueError(f"expected one prediction row per feature ({len(self.features)}), "
                             f"got {len(got)} rows for {len(np.unique(got))} distinct features")
        sample = np.asarray(piece_predictions[0:1])
        out = [np.zeros((int(n),) + sample.shape[2:], sample.dtype) for n in self.num_words]
        for r, f in zip(rows, got):
            pos = self.word_positions[f]
            s, w0 = int(self.sentence[f]), int(self.word_start[f])
            out[s][w0:w0 + len(pos)] = np.asarray(piece_predictions[r])[pos]
        return out


def continuation_ids(label_map: LabelMap) -> np.ndarray:
    """For ``alignment="all"``: the label id a continuation piece of a word with label ``i`` gets."""
    out = np.arange(label_map.num_classes)
    index = {lab: i for i, lab in enumerate(label_map.labels)}
    for i, lab in enumerate(label_map.labels):
        if isinstance(lab, str) and lab.startswith("B-") and "I-" + lab[2:] in index:
            out[i] = index["I-" + lab[2:]]
    return out


def read_words(source: Any, index: int, tokens_field: str, tags_field: str | None
               ) -> tuple[list[str], list[Any] | None]:
    """Words (and tags) of record ``index``, checked; errors name the file and line."""
    record = source[index]
    where = describe_record(source, index)
    if tokens_field not in record:
        raise ValueError(f"{where}: no field {tokens_field!r} (record has {sorted(record)})")
    words = record[tokens_field]
    if isinstance(words, str) or not isinstance(words, Sequence):
        raise TypeError(f"{where}: field {tokens_field!r} must be a list of words, got {type(words).__name__}")
    for j, w in enumerate(words):
        if not isinstance(w, str):
            raise TypeError(f"{where}: {tokens_field}[{j}] must be str, got {type(w).__name__}: {w!r:.80}")
    if tags_field is None:
        return list(words), None
    if tags_field not in record:
        raise ValueError(f"{where}: no field {tags_field!r} (record has {sorted(record)})")
    tags = record[tags_field]
    if isinstance(tags, str) or not isinstance(tags, Sequence):
        raise TypeError(f"{where}: field {tags_field!r} must be a list of tags, got {type(tags).__name__}")
    if len(tags) != len(words):
        raise ValueError(f"{where}: {len(words)} {tokens_field} but {len(tags)} {tags_field}; every word "
                         f"needs exactly one tag (words: {list(words)[:8]}{'...' if len(words) > 8 else ''})")
    return list(words), list(tags)


def _word_pieces(tokenizer: Any, sentences: list[list[str]], batch: int = 1024) -> list[list[list[int]]]:
    """Per sentence, per word: its piece ids (``[UNK]`` for a word that yields none)."""
    unk = tokenizer.unk_token_id
    out = []
    for start in range(0, len(sentences), batch):
        chunk = sentences[start:start + batch]
        nonempty = [s if s else [""] for s in chunk]
        enc = tokenizer(nonempty, is_split_into_words=True, add_special_tokens=False,
                        return_attention_mask=False, return_token_type_ids=False)
        for i, words in enumerate(chunk):
            word_ids = enc.word_ids(i)
            if word_ids is None:
                raise ValueError("token classification needs a fast (tokenizers-backed) tokenizer for word ids")
            pieces: list[list[int]] = [[] for _ in words]
            for tid, w in zip(enc["input_ids"][i], word_ids):
                if w is not None and w < len(words):
                    pieces[w].append(int(tid))
            for p in pieces:
                if not p:
                    if unk is None:
                        raise ValueError("a word produced no word pieces and the tokenizer has no unk token")
                    p.append(int(unk))
            out.append(pieces)
    return out


def build_token_features(
    source: Any,
    tokenizer: Any,
    *,
    max_length: int,
    label_map: LabelMap | None,
    tokens_field: str = "tokens",
    tags_field: str | None = "tags",
    alignment: str = "first",
    indices: Sequence[int] | None = None,
) -> TokenFeatures:
    """Tokenize records ``indices`` (default: all) of ``source`` into chunked features.

    ``label_map`` None (or ``tags_field`` None) builds unlabelled features (prediction only).
    """
    if alignment not in ALIGNMENTS:
        raise ValueError(f"unknown label alignment {alignment!r}; known: {list(ALIGNMENTS)}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 3:
        raise ValueError(f"max_length must be an int >= 3 ([CLS] piece [SEP]), got {max_length!r}")
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        raise ValueError("token classification expects a BERT-style tokenizer with [CLS] and [SEP] tokens")
    indices = list(range(len(source))) if indices is None else [int(i) for i in indices]
    labelled = label_map is not None and tags_field is not None
    sentences, tag_ids = [], []
    for i in indices:
        words, tags = read_words(source, i, tokens_field, tags_field if labelled else None)
        sentences.append(words)
        if labelled:
            where = describe_record(source, i)
            tag_ids.append([label_map.encode(t, where=f"{where}, {tags_field}[{j}] (word {words[j]!r})")
                            for j, t in enumerate(tags)])
    pieces = _word_pieces(tokenizer, sentences)
    cont = continuation_ids(label_map) if labelled else None
    budget = max_length - 2

    features, sent_of, start_of, positions = [], [], [], []
    for s, word_pieces in enumerate(pieces):
        w = 0
        while w < len(word_pieces):
            ids, labels, pos = [cls_id], [IGNORE], []
            first = w
            while w < len(word_pieces) and (w == first or len(ids) - 1 + len(word_pieces[w]) <= budget):
                wp = word_pieces[w][:budget - (len(ids) - 1)]
                pos.append(len(ids))
                ids.extend(wp)
                if labelled:
                    lab = tag_ids[s][w]
                    rest = IGNORE if alignment == "first" else int(cont[lab])
                    labels.extend([lab] + [rest] * (len(wp) - 1))
                w += 1
            ids.append(sep_id)
            feat = {"input_ids": np.asarray(ids, np.int32)}
            if labelled:
                labels.append(IGNORE)
                feat["labels"] = np.asarray(labels, np.int32)
            features.append(feat)
            sent_of.append(s)
            start_of.append(first)
            positions.append(np.asarray(pos, np.int32))
    return TokenFeatures(features=features, sentence=np.asarray(sent_of, np.int64),
                         word_start=np.asarray(start_of, np.int64), word_positions=positions,
                         num_words=np.asarray([len(p) for p in pieces], np.int64))
