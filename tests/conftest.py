"""Shared pytest fixtures for jaxbert tests.

Fixtures (all session-scoped, cheap after first use):

``data_dir``       Path of the real-data pack: ``$JAXBERT_DATA`` or ``<repo>/../shared/data``.
                   Tests that need it are skipped (with the path in the reason) when it is absent.
``read_texts``     ``read_texts("rotten_tomatoes/validation.jsonl", n=16, field="text") -> list[str]``:
                   the first ``n`` values of ``field`` from a JSONL (or ``.jsonl.gz``) file under
                   ``data_dir`` (an absolute path is used as is).
``minilm_dir``     Path of the cached all-MiniLM-L6-v2 HF directory (``jaxbert.assets.fetch("minilm")``);
                   skipped when it cannot be fetched.
``minilm_tokenize`` ``minilm_tokenize(texts, max_length=128) -> dict`` of int32 numpy arrays
                   ``input_ids``, ``attention_mask``, ``token_type_ids`` (``[n, longest]``, right-padded
                   with id 0), from MiniLM's ``tokenizer.json`` via the ``tokenizers`` library.

Plain helper (import with ``from conftest import read_jsonl``): :func:`read_jsonl`.
"""

from __future__ import annotations

import gzip
import json
import os
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"


def read_jsonl(path: str | os.PathLike, n: int | None = None) -> list[dict]:
    """The first ``n`` records (all when ``None``) of a JSONL file; ``.gz`` files are decompressed."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in islice((l for l in f if l.strip()), n)]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("JAXBERT_DATA", DEFAULT_DATA_DIR)).expanduser()
    if not path.is_dir():
        pytest.skip(f"real-data pack not found at {path} (set JAXBERT_DATA)")
    return path


@pytest.fixture(scope="session")
def read_texts(data_dir):
    def read(rel_path: str | os.PathLike, n: int | None = None, field: str = "text") -> list[str]:
        path = Path(rel_path) if Path(rel_path).is_absolute() else data_dir / rel_path
        return [rec[field] for rec in read_jsonl(path, n)]
    return read


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from jaxbert.assets import AssetError, fetch
    try:
        return fetch("minilm")
    except AssetError as e:
        pytest.skip(f"MiniLM weights unavailable: {e}")


@pytest.fixture(scope="session")
def minilm_tokenize(minilm_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))

    def tokenize(texts: list[str], max_length: int = 128) -> dict[str, np.ndarray]:
        tok.enable_truncation(max_length)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")
        enc = tok.encode_batch(list(texts))
        return {"input_ids": np.array([e.ids for e in enc], np.int32),
                "attention_mask": np.array([e.attention_mask for e in enc], np.int32),
                "token_type_ids": np.array([e.type_ids for e in enc], np.int32)}
    return tokenize
