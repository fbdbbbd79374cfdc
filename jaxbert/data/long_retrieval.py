"""A LoCo-style long-document retrieval set built from the shared ``bbc_news`` articles.

LoCo (Saad-Falcon et al. 2024, arXiv 2402.07440) evaluates retrieval of *long* documents with
cosine similarity and nDCG@10. Here every BBC article becomes one query and one document:

* query = the article's first line (its title);
* document = the rest of the article (the body, full length: no truncation here; the model's
  ``max_length`` decides how much it reads);
* qrels: each title's only relevant document is its own body (gain 1).

Files (BEIR layout read by :func:`jaxbert.eval.retrieval.load_retrieval_set` and the pair
format of :mod:`jaxbert.data.features.pairs`), written once to
``$JAXBERT_CACHE/derived/bbc_long-v1/`` and reused:

* ``{split}_queries.jsonl`` ``{"id", "text"}``, ``{split}_corpus.jsonl`` ``{"id", "text"}``,
  ``{split}_qrels.jsonl`` ``{"query_id", "doc_id", "score"}`` for ``split`` in train / test
  (the pack's own article split);
* ``train_pairs.jsonl`` ``{"anchor": title, "positive": body, "negative": another body}``: the
  training rows of the LoCo recipe (batch size 1: one query, its document and one in-sample
  negative, drawn with ``random.Random(0)``).

Articles whose title or body is empty are skipped (none in the current pack).

    python -m jaxbert.data.long_retrieval          # prints the folder
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from jaxbert.data.derived import cache_root, write_folder
from jaxbert.data.sources import data_dir

VERSION = "v1"
SPLITS = ("train", "test")


def split_article(text: str) -> tuple[str, str]:
    """``(title, body)``: the first non-empty line and everything after it, stripped."""
    lines = text.strip().split("\n", 1)
    title = lines[0].strip()
    body = lines[1].strip() if len(lines) > 1 else ""
    return title, body


def bbc_articles(root: Path, split: str) -> list[tuple[str, str]]:
    path = root / "bbc_news" / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (the shared data pack's bbc_news; set JAXBERT_DATA)")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "text" not in record:
                raise ValueError(f"{path} line {lineno}: no field 'text' (record has {sorted(record)})")
            title, body = split_article(record["text"])
            if title and body:
                out.append((title, body))
    return out


def build_rows(root: Path) -> dict[str, list[dict]]:
    files: dict[str, list[dict]] = {}
    for split in SPLITS:
        articles = bbc_articles(root, split)
        files[f"{split}_queries"] = [{"id": f"{split}-q{i}", "text": t} for i, (t, _) in enumerate(articles)]
        files[f"{split}_corpus"] = [{"id": f"{split}-d{i}", "text": b} for i, (_, b) in enumerate(articles)]
        files[f"{split}_qrels"] = [{"query_id": f"{split}-q{i}", "doc_id": f"{split}-d{i}", "score": 1}
                                   for i in range(len(articles))]
        if split == "train":
            rng = random.Random(0)
            pairs = []
            for i, (title, body) in enumerate(articles):
                j = rng.randrange(len(articles) - 1)
                j = j + 1 if j >= i else j  # any other article
                pairs.append({"anchor": title, "positive": body, "negative": articles[j][1]})
            files["train_pairs"] = pairs
    return files


def bbc_long_retrieval(root: str | os.PathLike | None = None, out_root: str | os.PathLike | None = None) -> Path:
    """The folder holding the files listed in the module docstring (built on first use)."""
    root = Path(root).expanduser() if root else data_dir()
    out = (Path(out_root).expanduser() if out_root else cache_root()) / f"bbc_long-{VERSION}"
    names = [f"{s}_{k}" for s in SPLITS for k in ("queries", "corpus", "qrels")] + ["train_pairs"]
    if all((out / f"{n}.jsonl").is_file() for n in names):
        return out
    return write_folder(out, build_rows(root))


if __name__ == "__main__":
    print(bbc_long_retrieval())
