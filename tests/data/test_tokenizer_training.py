"""Tokenizer training: WordPiece/BPE/Unigram reload through transformers, round-trip text, errors."""

from __future__ import annotations

import re

import pytest
from transformers import AutoTokenizer

from jaxbert.data.tokenization import round_vocab_size, tokenize_with_words, train_tokenizer


@pytest.fixture(scope="module")
def brown_texts(read_texts):
    return read_texts("brown/text.jsonl.gz", n=25)


def squash(s: str) -> str:
    return re.sub(r"\s+", "", s)


@pytest.mark.parametrize("model,lowercase", [("wordpiece", True), ("bpe", False), ("unigram", True)])
def test_trained_tokenizer_reloads_and_round_trips(tmp_path, brown_texts, model, lowercase):
    out = train_tokenizer(brown_texts, tmp_path / model, model=model, vocab_size=700 if model != "unigram" else 400,
                          lowercase=lowercase)
    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok) % 64 == 0
    assert [tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id] == [0, 2, 3, 4]
    sample = brown_texts[-1].split("\n\n")[0]
    enc = tok(sample)
    assert enc["input_ids"][0] == tok.cls_token_id and enc["input_ids"][-1] == tok.sep_token_id
    assert tok.unk_token_id not in enc["input_ids"] or model == "wordpiece"
    decoded = tok.decode(enc["input_ids"], skip_special_tokens=True)
    if model == "bpe":  # byte-level BPE is lossless
        assert decoded.strip() == sample
    else:  # WordPiece/Unigram lower-case and split punctuation: equal up to whitespace
        assert squash(decoded) == squash(sample.lower())
    (ids, words), = tokenize_with_words(tok, [sample])
    assert len(ids) == len(enc["input_ids"]) - 2 and (words >= 0).all()
    assert words[0] == 0 and (words[1:] >= words[:-1]).all()  # word boundaries for the maskers


def test_vocab_rounded_and_padded_to_multiple_of_64(tmp_path):
    assert round_vocab_size(8000) == 8000 and round_vocab_size(8001) == 8064 and round_vocab_size(30522) == 30528
    # a tiny corpus cannot fill the vocabulary: [unused] tokens pad it to the multiple
    out = train_tokenizer(["a b c d e f g hello world"] * 3, tmp_path / "t", vocab_size=1000, min_frequency=1)
    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok) == 64
    assert "[unused0]" in tok.get_vocab()


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="empty corpus"):
        train_tokenizer([], tmp_path / "a")
    with pytest.raises(ValueError, match="empty corpus"):
        train_tokenizer(["", "   "], tmp_path / "b")
    with pytest.raises(ValueError, match="special tokens"):
        train_tokenizer(["some text"], tmp_path / "c", vocab_size=4)
    with pytest.raises(ValueError, match="unknown tokenizer model"):
        train_tokenizer(["some text"], tmp_path / "d", model="sentencepiece")
    with pytest.raises(TypeError, match="not a single str"):
        train_tokenizer("some text", tmp_path / "e")
