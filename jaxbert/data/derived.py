"""Small task datasets derived deterministically from the shared data pack.

The pack has no natural multi-label or sentence-regression set, so two are built from real
annotations (no labels invented here):

* ``wordnet_pos`` (multi-label): English words and the set of parts of speech WordNet 3.0
  lists them under (``noun``, ``verb``, ``adjective`` -- satellites included --, ``adverb``),
  from ``wordnet_defs/corpus.jsonl.gz`` (every synset's lemmas, matched case-insensitively).
  Words: single alphabetic lemmas seen at least 3 times in the Brown POS *train* split
  (so common, often ambiguous words: ~28 % have several labels), 11,615 words. Input
  ``text`` = the word; ``labels`` = sorted list. "Can this word be a verb?" is lexical
  knowledge the encoder either has or must learn.
* ``simlex999`` (regression): SimLex-999 word pairs (``word1``, ``word2``, ``score`` 0-10)
  from ``word_similarity/simlex999.jsonl``, as cross-encoder pairs.

Splits: a seeded shuffle (``random.Random(0)``) of the sorted items, cut 80/10/10
(wordnet_pos) or 70/15/15 (simlex999, 699/150/150: the test set must hold enough pairs for a
stable correlation). Files are written once to ``$JAXBERT_CACHE/derived/<name>-v1/``
(``train/validation/test.jsonl``) and reused; :func:`derived_dataset` returns the folder.

    python -m jaxbert.data.derived wordnet_pos     # prints the folder
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from jaxbert.data.sources import data_dir, read_jsonl_lines

__all__ = ["DERIVED", "cache_root", "derived_dataset", "write_folder"]

_POS = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
VERSION = "v1"


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"data pack file not found: {path} (set $JAXBERT_DATA)")
    return [r for _, r in read_jsonl_lines(path)]


def _split(items: list, fractions: tuple[float, ...]) -> list[list]:
    items = list(items)
    random.Random(0).shuffle(items)
    cuts, acc, out, start = [], 0.0, [], 0
    for fr in fractions:
        acc += fr
        cuts.append(round(len(items) * acc))
    for end in cuts:
        out.append(items[start:end])
        start = end
    return out


def _wordnet_pos(root: Path) -> dict[str, list[dict]]:
    pos: dict[str, set[str]] = defaultdict(set)
    for rec in _read_jsonl(root / "wordnet_defs" / "corpus.jsonl.gz"):
        kind = _POS[rec["id"].rsplit("-", 1)[1]]
        lemmas, sep, _ = rec["text"].partition(": ")
        if not sep:
            raise ValueError(f"wordnet_defs record {rec['id']}: no 'lemmas: definition' separator")
        for lemma in lemmas.split(", "):
            pos[lemma.lower()].add(kind)
    freq = Counter(t.lower() for rec in _read_jsonl(root / "brown" / "pos_train.jsonl.gz") for t in rec["tokens"])
    words = sorted(w for w in pos if re.fullmatch(r"[a-z]+", w) and freq[w] >= 3)
    rows = [{"text": w, "labels": sorted(pos[w])} for w in words]
    return dict(zip(("train", "validation", "test"), _split(rows, (0.8, 0.1, 0.1))))


def _simlex(root: Path) -> dict[str, list[dict]]:
    rows = [{"word1": r["word1"], "word2": r["word2"], "score": float(r["score"])}
            for r in _read_jsonl(root / "word_similarity" / "simlex999.jsonl")]
    rows.sort(key=lambda r: (r["word1"], r["word2"]))
    return dict(zip(("train", "validation", "test"), _split(rows, (0.7, 0.15, 0.15))))


DERIVED = {"wordnet_pos": _wordnet_pos, "simlex999": _simlex}


def cache_root() -> Path:
    """``$JAXBERT_CACHE/derived`` (default ``~/.cache/jaxbert/derived``): where derived sets are written."""
    return Path(os.environ.get("JAXBERT_CACHE", "~/.cache/jaxbert")).expanduser() / "derived"


def write_folder(out: Path, files: dict[str, list[dict]]) -> Path:
    """Write ``out/<name>.jsonl`` for every ``name: rows`` at once (a temp folder renamed into place);
    if another process built ``out`` concurrently, theirs is kept."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    for name, rows in files.items():
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                           encoding="utf-8")
    try:
        os.replace(tmp, out)
    except OSError:  # built concurrently by another process: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def derived_dataset(name: str, root: str | os.PathLike | None = None, out_root: str | os.PathLike | None = None
                    ) -> Path:
    """The folder holding ``train/validation/test.jsonl`` of derived dataset ``name`` (built on first use)."""
    if name not in DERIVED:
        raise ValueError(f"unknown derived dataset {name!r}; known: {sorted(DERIVED)}")
    root = Path(root).expanduser() if root else data_dir()
    out = (Path(out_root).expanduser() if out_root else cache_root()) / f"{name}-{VERSION}"
    if all((out / f"{s}.jsonl").is_file() for s in ("train", "validation", "test")):
        return out
    return write_folder(out, DERIVED[name](root))


if __name__ == "__main__":
    for arg in sys.argv[1:] or sorted(DERIVED):
        print(derived_dataset(arg))
