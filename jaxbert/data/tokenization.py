"""Tokenizer loading and batch encoding to fixed-shape int32 numpy arrays.

    tok = load_tokenizer(jaxbert.assets.fetch("minilm"))
    check_vocab(tok, model_config.vocab_size)
    batch = encode_batch(tok, ["a sentence", "another"], max_length=128)
    batch["input_ids"].shape   # (2, 128), int32; also attention_mask, token_type_ids

Padding is always on the right and done here in numpy (not by the tokenizer), so shapes are
exactly what the caller asked for: ``max_length`` by default, the longest row
(``pad_to="longest"``) or an explicit length such as a bucket (``pad_to=batching.bucket_length(...)``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MODEL_KEYS",
    "TOKENIZER_MODELS",
    "check_texts",
    "check_vocab",
    "encode_batch",
    "load_tokenizer",
    "require_tokenizer_files",
    "tokenizer_vocab_size",
    "round_vocab_size",
    "tokenize_with_words",
    "train_tokenizer",
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
    require_tokenizer_files(path)
    from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        present = sorted(p.name for p in path.iterdir())
        shown = present[:20] + (["..."] if len(present) > 20 else [])
        raise ValueError(f"could not load a tokenizer from {path} (files: {shown}): {e}") from e


#: Files that carry a vocabulary (one of them, or a SentencePiece ``*.model``, must be present).
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                    "sentencepiece.bpe.model")
_EXPECTED = ("tokenizer.json (fast tokenizer), or vocab.txt (WordPiece), or vocab.json + merges.txt (BPE), "
             "or a SentencePiece *.model, next to tokenizer_config.json / special_tokens_map.json")


def require_tokenizer_files(path: str | os.PathLike) -> None:
    """FileNotFoundError naming the expected files when directory ``path`` holds no vocabulary.

    Without one, transformers builds a tokenizer of a handful of special tokens from
    ``config.json`` alone, and every text encodes to the same few ids.
    """
    path = Path(path)
    if any((path / name).is_file() for name in VOCABULARY_FILES) or any(path.glob("*.model")):
        return
    present = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    shown = present[:20] + (["..."] if len(present) > 20 else [])
    raise FileNotFoundError(f"{path} has no tokenizer files: expected {_EXPECTED}; found {shown}. Copy the "
                            "checkpoint's tokenizer files into it, or name the tokenizer directory "
                            "(data.tokenizer=... / tokenizer=...)")


def check_texts(texts: Any, name: str = "texts", *, single_ok: bool = False) -> tuple[bool, list[str]]:
    """The one input check of every text entry point (``encode_batch``, the sentence encoders).

    Returns ``(single, texts)``: ``single`` is True when ``texts`` was one ``str`` (allowed only
    with ``single_ok``; it comes back as a one-element list). Accepts a list, tuple or other
    iterable of ``str``. Raises TypeError for None, bytes (decode them first), a non-iterable, an
    element that is not a ``str`` (its index and type named); ValueError for no texts and for a
    string that is not valid Unicode (a lone surrogate such as ``"\\ud800"``, which the tokenizer
    could not encode; its index and character position named).
    """
    expected = f"{name} must be a str or a list of str" if single_ok else f"{name} must be a list of str"
    if isinstance(texts, str):
        if not single_ok:
            raise TypeError(f"{expected}, got a single str; wrap it in a list")
        single, items = True, [texts]
    elif isinstance(texts, (bytes, bytearray, memoryview)):
        raise TypeError(f"{expected}, got {type(texts).__name__}; decode it first (e.g. data.decode('utf-8'))")
    elif texts is None or isinstance(texts, Mapping) or not isinstance(texts, Iterable):
        raise TypeError(f"{expected}, got {type(texts).__name__}")
    else:
        single, items = False, list(texts)
    if not items:
        raise ValueError(f"{name} is empty: expected a non-empty {'str or ' if single_ok else ''}list of str")
    for i, t in enumerate(items):
        where = name if single else f"{name}[{i}]"
        if not isinstance(t, str):
            hint = "; decode bytes first" if isinstance(t, (bytes, bytearray)) else ""
            raise TypeError(f"{where} must be str, got {type(t).__name__}: {t!r:.80}{hint}")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{where} is not valid Unicode text: lone surrogate {t[e.start]!r} at character "
                             f"{e.start} (decoded with errors='surrogateescape'?); clean or re-decode it") from None
    return single, items


#: The arrays :func:`encode_batch` returns (the encoder inputs), each int32 ``[B, L]``.
MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")


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
    texts = check_texts(texts, "texts")[1]
    if text_pairs is not None:
        text_pairs = check_texts(text_pairs, "text_pairs")[1]
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


#: A pretrained model's embedding table may exceed its tokenizer by this many rows (padding to a
#: multiple of 64/128, a few reserved ids) or this fraction of the table; more means a mismatch.
VOCAB_SLACK_ROWS = 128
VOCAB_SLACK_FRACTION = 0.1


def check_vocab(tokenizer: Any, vocab_size: int, *, pretrained: bool = False, source: Any = None) -> int:
    """Raise ``ValueError`` if the tokenizer does not fit a model with ``vocab_size`` embedding rows.

    Always: ids >= ``vocab_size`` would index past the table. With ``pretrained=True`` (weights
    trained with some tokenizer, e.g. a model directory) also a tokenizer much smaller than the
    table: more than :data:`VOCAB_SLACK_ROWS` rows and :data:`VOCAB_SLACK_FRACTION` of the table
    unused means the tokenizer is not the one the weights were trained with. A table padded to a
    multiple of 64/128 passes. ``source`` (a path) is named in the message. Returns the
    tokenizer's vocabulary size.
    """
    n = tokenizer_vocab_size(tokenizer)
    where = source if source is not None else getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
    if n > vocab_size:
        raise ValueError(
            f"tokenizer has {n} tokens but the model's vocab_size is {vocab_size} ({where}): its {n} ids "
            f"do not fit vocab_size={vocab_size}, ids >= {vocab_size} would index past the embedding table. "
            "Use the tokenizer that matches the checkpoint, or resize the embeddings."
        )
    unused = vocab_size - n
    if pretrained and unused > VOCAB_SLACK_ROWS and unused > VOCAB_SLACK_FRACTION * vocab_size:
        raise ValueError(
            f"tokenizer vocabulary ({n} ids, {where}) is much smaller than the model's vocab_size={vocab_size}: "
            f"{unused} embedding rows would never be used, so this is not the tokenizer the weights were trained "
            f"with (a table padded for alignment exceeds it by at most {VOCAB_SLACK_ROWS} rows). Expected "
            f"tokenizer files: {_EXPECTED}."
        )
    return n


# ----------------------------------------------------------------------------- training

TOKENIZER_MODELS = ("wordpiece", "bpe", "unigram")
# BERT-style special tokens for every model type, so maskers and heads find them the same way.
SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                  "mask_token": "[MASK]"}


def round_vocab_size(n: int, multiple_of: int = 64) -> int:
    """``n`` rounded up to a multiple of ``multiple_of`` (MosaicBERT: 64 for tensor-core-friendly shapes)."""
    if multiple_of < 1:
        raise ValueError(f"multiple_of must be >= 1, got {multiple_of}")
    return int(-(-int(n) // multiple_of) * multiple_of)


def _texts_for_training(texts: Any) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be an iterable of str (one document each), not a single str")
    out = [t for t in texts if isinstance(t, str) and t.strip()]
    if not out:
        raise ValueError("cannot train a tokenizer on an empty corpus (no non-blank text)")
    return out


def train_tokenizer(texts: Any, out_dir: str | os.PathLike, *, model: str = "wordpiece", vocab_size: int = 8192,
                    lowercase: bool = True, min_frequency: int = 2, multiple_of: int = 64,
                    model_max_length: int = 512) -> Path:
    """Train a WordPiece, BPE (byte-level) or Unigram tokenizer and save it as an HF directory.

    ``texts``: any iterable of str (e.g. ``(r["text"] for r in JsonlSource(path))``).
    ``vocab_size`` is rounded up to a multiple of ``multiple_of``; if the corpus yields fewer
    pieces, ``[unused{i}]`` special tokens pad the vocabulary to exactly that multiple (as BERT's
    vocab does), so ``len(tokenizer) % multiple_of == 0`` always. Every model uses the BERT
    special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (ids 0-4) and the post-processor
    ``[CLS] A [SEP] (B [SEP])``; word boundaries come from the pre-tokenizer and are available as
    ``BatchEncoding.word_ids()`` (see :func:`tokenize_with_words`).

    The directory loads with ``transformers.AutoTokenizer.from_pretrained(out_dir)``.

    Raises:
      ValueError: empty corpus, unknown model, or ``vocab_size`` too small for the special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # pylint: disable=import-outside-toplevel
    from transformers import PreTrainedTokenizerFast  # pylint: disable=import-outside-toplevel

    if model not in TOKENIZER_MODELS:
        raise ValueError(f"unknown tokenizer model {model!r}; known: {list(TOKENIZER_MODELS)}")
    specials = list(SPECIAL_TOKENS.values())
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= len(specials):
        raise ValueError(f"vocab_size={vocab_size!r} is not larger than the {len(specials)} special tokens "
                         f"{specials}; a tokenizer needs room for real pieces")
    corpus = _texts_for_training(texts)
    target = round_vocab_size(vocab_size, multiple_of)

    norm = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    if model == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, lowercase=lowercase,
                                                    strip_accents=lowercase, handle_chinese_chars=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(vocab_size=target, min_frequency=min_frequency,
                                            special_tokens=specials, continuing_subword_prefix="##")
    elif model == "bpe":
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.normalizer = normalizers.Sequence(norm)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=target, min_frequency=min_frequency, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Sequence(norm)
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=target, special_tokens=specials, unk_token="[UNK]")
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    n = tok.get_vocab_size(with_added_tokens=True)
    if n % multiple_of:
        tok.add_special_tokens([f"[unused{i}]" for i in range(round_vocab_size(n, multiple_of) - n)])

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **SPECIAL_TOKENS)
    fast.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return out


def tokenize_with_words(tokenizer: Any, texts: Sequence[str], batch_size: int = 256
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tokenize without special tokens: per text ``(token_ids int32 [n], word_ids int32 [n])``.

    ``word_ids`` numbers the pre-tokenizer's words from 0 (the maskers' word boundaries).
    """
    out = []
    for i in range(0, len(texts), batch_size):
        chunk = list(texts[i:i + batch_size])
        enc = tokenizer(chunk, add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False, verbose=False)  # long documents are chunked later
        for j in range(len(chunk)):
            words = enc.word_ids(j)
            if words is None:
                raise ValueError("word boundaries need a fast (tokenizers-backed) tokenizer")
            out.append((np.asarray(enc["input_ids"][j], np.int32),
                        np.asarray([-1 if w is None else w for w in words], np.int32)))
    return out
