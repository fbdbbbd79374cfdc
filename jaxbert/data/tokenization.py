"""Tokenizer loading and batch encoding to fixed-shape int32 numpy arrays.

    tok = load_tokenizer(jaxbert.assets.fetch("minilm"))
    check_vocab(tok, model_config.vocab_size)
    batch = encode_batch(tok, ["a sentence", "another"], max_length=128)
    batch["input_ids"].shape   # (2, 128), int32; also attention_mask, token_type_ids

Padding is always on the right and done here in numpy (not by the tokenizer), so shapes are
exactly what the caller asked for: ``max_length`` by default, the longest row
(``pad_to="longest"``) or an explicit length such as a bucket (``pad_to=bucket_length(...)``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "bucket_length",
    "check_vocab",
    "encode_batch",
    "load_tokenizer",
    "tokenizer_vocab_size",
]


def load_tokenizer(path_or_name: str | os.PathLike) -> Any:
    """Load a Hugging Face tokenizer from a local directory.

    ``path_or_name`` is a directory holding ``tokenizer.json`` / ``vocab.txt`` (+ config), or
    the name of a jaxbert asset (e.g. ``"minilm"``, see :mod:`jaxbert.assets`), which is
    fetched into the local cache. Hub ids are not downloaded: jaxbert runs without hub access.

    Raises:
      FileNotFoundError: the directory does not exist (the message names it).
      ValueError: the directory exists but holds no loadable tokenizer.
    """
    from jaxbert import assets  # pylint: disable=import-outside-toplevel

    name = os.fspath(path_or_name)
    path = Path(name).expanduser()
    if not path.exists() and name in assets.ASSETS:
        path = Path(assets.fetch(name))
    if not path.is_dir():
        known = ", ".join(sorted(assets.ASSETS))
        raise FileNotFoundError(
            f"tokenizer directory not found: {path} (pass a local directory containing "
            f"tokenizer.json or vocab.txt, or a jaxbert asset name: {known})"
        )
    from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        present = sorted(p.name for p in path.iterdir())
        shown = present[:20] + (["..."] if len(present) > 20 else [])
        raise ValueError(f"could not load a tokenizer from {path} (files: {shown}): {e}") from e


def _check_texts(texts: Any, name: str) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{name} must be a list of str, got a single {type(texts).__name__}; wrap it in a list")
    if not isinstance(texts, Sequence):
        raise TypeError(f"{name} must be a list of str, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError(f"{name} must be a non-empty list of str")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] must be str, got {type(t).__name__}: {t!r:.80}")
    return list(texts)


def encode_batch(
    tokenizer: Any,
    texts: Sequence[str],
    text_pairs: Sequence[str] | None = None,
    *,
    max_length: int,
    pad_to: int | str | None = None,
) -> dict[str, np.ndarray]:
    """Tokenize ``texts`` (optionally with ``text_pairs``), truncate, pad; int32 [B, L] arrays.

    Args:
      tokenizer: a Hugging Face tokenizer (``load_tokenizer``).
      texts: non-empty list of str.
      text_pairs: optional second segments, same length as ``texts`` (``token_type_ids`` 1).
      max_length: truncation length including special tokens ("longest_first" for pairs).
      pad_to: ``None`` pads every row to ``max_length``; ``"longest"`` to the longest row;
        an int pads to exactly that length (it must be >= the longest row after truncation).

    Returns:
      ``{"input_ids", "attention_mask", "token_type_ids"}``, each ``np.int32 [B, L]``.

    Raises:
      TypeError: ``texts`` is not a list of str; the message names the bad index and type.
      ValueError: empty input, mismatched pair count, bad ``max_length``/``pad_to``.
    """
    texts = _check_texts(texts, "texts")
    if text_pairs is not None:
        text_pairs = _check_texts(text_pairs, "text_pairs")
        if len(text_pairs) != len(texts):
            raise ValueError(f"text_pairs has {len(text_pairs)} entries but texts has {len(texts)}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")

    enc = tokenizer(
        texts,
        text_pairs,
        truncation=True,
        max_length=max_length,
        padding=False,
        return_attention_mask=True,
        return_token_type_ids=True,
    )
    ids = enc["input_ids"]
    types = enc.get("token_type_ids")
    longest = max(len(row) for row in ids)

    if pad_to is None:
        length = max_length
    elif pad_to == "longest":
        length = longest
    elif isinstance(pad_to, int) and not isinstance(pad_to, bool):
        if pad_to < longest:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest encoded row ({longest} tokens)")
        length = pad_to
    else:
        raise ValueError(f"pad_to must be None, 'longest' or an int, got {pad_to!r}")

    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = 0  # masked out by attention_mask; tokenizers without a pad token (GPT-style)
    batch = len(ids)
    input_ids = np.full((batch, length), pad_id, dtype=np.int32)
    attention_mask = np.zeros((batch, length), dtype=np.int32)
    token_type_ids = np.zeros((batch, length), dtype=np.int32)
    for i, row in enumerate(ids):
        n = len(row)
        input_ids[i, :n] = row
        attention_mask[i, :n] = 1
        if types is not None:
            token_type_ids[i, :n] = types[i]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def tokenizer_vocab_size(tokenizer: Any) -> int:
    """Number of embedding rows the tokenizer needs: 1 + the largest id it can produce."""
    n = len(tokenizer)  # base vocabulary + added tokens
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):
        vocab = {}
    if vocab:
        n = max(n, max(vocab.values()) + 1)
    return n


def check_vocab(tokenizer: Any, vocab_size: int) -> int:
    """Raise ``ValueError`` if the tokenizer can produce ids >= the model's ``vocab_size``.

    A smaller tokenizer than the embedding table is allowed (embedding tables are often padded
    to a multiple of 64/128). Returns the tokenizer's vocabulary size.
    """
    n = tokenizer_vocab_size(tokenizer)
    if n > vocab_size:
        raise ValueError(
            f"tokenizer vocabulary ({n} ids, {getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)}) "
            f"does not fit the model's vocab_size={vocab_size}: ids >= {vocab_size} would index past "
            "the embedding table. Use the tokenizer that matches the checkpoint, or resize the embeddings."
        )
    return n


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= ``n``; ``ValueError`` if ``n`` exceeds every bucket."""
    if not buckets:
        raise ValueError("buckets must be a non-empty sequence of positive ints")
    ordered = sorted(buckets)
    if ordered[0] <= 0:
        raise ValueError(f"buckets must be positive, got {list(buckets)}")
    for b in ordered:
        if b >= n:
            return int(b)
    raise ValueError(f"length {n} exceeds the largest bucket {ordered[-1]} (buckets: {ordered})")
