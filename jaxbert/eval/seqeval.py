"""Sequence-labelling metrics: BIO/BIOES span decoding, span P/R/F1 and token accuracy.

The numbers match ``seqeval`` (the library HF's ``run_ner`` reports with):

* **default mode** (``strict=False``, seqeval's default and the CoNLL ``conlleval`` rules):
  a chunk starts at ``B-``/``S-``, at an ``I-``/``E-`` that follows ``O``/``E-``/``S-``, or
  wherever the type changes; it ends before ``B-``/``S-``/``O``, after ``E-``/``S-``, or where
  the type changes. So a stray ``I-PER`` with no ``B-PER`` before it *is* an entity, and
  ``B-PER I-LOC`` is two entities.
* **strict mode** (``strict=True``, seqeval's ``mode='strict'`` with ``IOB2`` or ``IOBES``):
  only well-formed chunks count. BIO: ``B-X`` followed by the longest run of ``I-X``; a
  stray ``I-X`` belongs to no entity. BIOES: ``S-X`` or ``B-X (I-X)* E-X``; anything else
  (``B-X I-X O``, an ``E-X`` without ``B-X``) is dropped.

Entities are ``(sentence, type, start, end)`` with ``end`` exclusive; precision / recall /
F1 are micro-averaged over all sentences (seqeval's ``average='micro'``), with 0 where a
denominator is 0. Token accuracy counts every token (``O`` included), like
``seqeval.metrics.accuracy_score``.

    spans(["B-PER", "I-PER", "O", "I-LOC"])                     # [('PER', 0, 2), ('LOC', 3, 4)]
    span_scores([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])   # precision 0, recall 0, f1 0
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

__all__ = ["SCHEMES", "check_scheme", "detect_scheme", "span_scores", "spans", "token_accuracy"]

#: ``none``: labels are plain classes (POS tags), no spans. ``bio`` = IOB2, ``bioes`` = IOBES.
SCHEMES = ("none", "bio", "bioes")
_PREFIXES = {"bio": ("B", "I"), "bioes": ("B", "I", "E", "S")}


def _split(label: str) -> tuple[str, str]:
    """``'B-PER' -> ('B', 'PER')``; ``'O' -> ('O', '')`` (seqeval: a bare ``B`` has type ``'_'``)."""
    if label == "O":
        return "O", ""
    prefix, _, type_ = label.partition("-")
    return prefix, (type_ or "_")


def detect_scheme(labels: Sequence[str]) -> str:
    """``'bioes'`` if every label is ``O`` or ``B-/I-/E-/S-X`` with some ``E-``/``S-``, ``'bio'`` if
    every label is ``O`` or ``B-/I-X``, else ``'none'`` (plain tags)."""
    prefixes = set()
    for label in labels:
        if not isinstance(label, str):
            return "none"
        if label == "O":
            continue
        prefix, sep, type_ = label.partition("-")
        if not sep or not type_ or prefix not in ("B", "I", "E", "S"):
            return "none"
        prefixes.add(prefix)
    if not prefixes:
        return "none"
    return "bioes" if prefixes & {"E", "S"} else "bio"


def check_scheme(labels: Sequence[str], scheme: str) -> None:
    """``ValueError`` naming the labels that do not fit ``scheme`` (``none`` accepts anything)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown tag scheme {scheme!r}; known: {list(SCHEMES)}")
    if scheme == "none":
        return
    allowed = _PREFIXES[scheme]
    bad = [lab for lab in labels if lab != "O" and not (
        isinstance(lab, str) and "-" in lab and lab.partition("-")[0] in allowed and lab.partition("-")[2])]
    if bad:
        raise ValueError(f"labels {bad} do not fit the {scheme!r} scheme (expected 'O' or "
                         f"{'/'.join(p + '-TYPE' for p in allowed)}); set data.tag_scheme='none' for plain tags")


def _spans_default(labels: Sequence[str]) -> list[tuple[str, int, int]]:
    out = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, label in enumerate(list(labels) + ["O"]):
        tag, type_ = _split(label)
        if tag not in ("O", "B", "I", "E", "S"):
            raise ValueError(f"position {i}: {label!r} is not a BIO/BIOES label")
        ended = (prev_tag in ("E", "S")
                 or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
                 or (prev_tag != "O" and prev_type != type_))
        started = (tag in ("B", "S")
                   or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
                   or (tag != "O" and prev_type != type_))
        if ended:
            out.append((prev_type, begin, i))
        if started:
            begin = i
        prev_tag, prev_type = tag, type_
    return out


def _spans_strict(labels: Sequence[str], scheme: str) -> list[tuple[str, int, int]]:
    parsed = [_split(lab) for lab in labels]
    allowed = set(_PREFIXES[scheme]) | {"O"}
    for i, (tag, _) in enumerate(parsed):
        if tag not in allowed:
            raise ValueError(f"position {i}: {labels[i]!r} is not a {scheme.upper()} label")
    out, i, n = [], 0, len(parsed)
    while i < n:
        tag, type_ = parsed[i]
        if scheme == "bioes" and tag == "S":
            out.append((type_, i, i + 1))
            i += 1
            continue
        if tag != "B":
            i += 1
            continue
        j = i + 1
        inside = ("I",) if scheme == "bio" else ("I", "E")
        while j < n and parsed[j][1] == type_ and parsed[j][0] in inside and parsed[j - 1][0] in ("B", "I"):
            j += 1
        if scheme == "bio" or parsed[j - 1][0] == "E":
            out.append((type_, i, j))
        i = j
    return out


def spans(labels: Sequence[str], strict: bool = False, scheme: str = "bio") -> list[tuple[str, int, int]]:
    """Entities ``(type, start, end)`` (``end`` exclusive) of one sentence's label sequence.

    ``scheme`` matters only with ``strict=True`` (the default mode reads BIO and BIOES alike).
    """
    if strict:
        if scheme not in _PREFIXES:
            raise ValueError(f"strict span decoding needs scheme 'bio' or 'bioes', got {scheme!r}")
        return _spans_strict(labels, scheme)
    return _spans_default(labels)


def _check_pairs(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted ones")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold labels but {len(p)} predicted")


def span_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], strict: bool = False,
                scheme: str = "bio") -> dict[str, float]:
    """Micro precision / recall / F1 over entities, plus counts and per-type F1 (``f1/TYPE``)."""
    _check_pairs(gold, pred)
    true_set, pred_set = set(), set()
    for s, (g, p) in enumerate(zip(gold, pred)):
        true_set.update((s,) + e for e in spans(g, strict, scheme))
        pred_set.update((s,) + e for e in spans(p, strict, scheme))
    correct = true_set & pred_set
    out = _prf(len(correct), len(pred_set), len(true_set))
    out.update(num_gold_spans=len(true_set), num_pred_spans=len(pred_set), num_correct_spans=len(correct))
    n_true, n_pred, n_ok = (Counter(e[1] for e in x) for x in (true_set, pred_set, correct))
    for type_ in sorted(n_true):
        out[f"f1/{type_}"] = _prf(n_ok[type_], n_pred[type_], n_true[type_])["f1"]
    return out


def _prf(correct: int, predicted: int, true: int) -> dict[str, float]:
    p = correct / predicted if predicted else 0.0
    r = correct / true if true else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def token_accuracy(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> float:
    """Fraction of tokens (over all sentences, ``O`` included) whose label is right."""
    _check_pairs(gold, pred)
    total = sum(len(g) for g in gold)
    right = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
    return right / total if total else 0.0
