"""Pair / triplet data: validation errors that name file and line, batch layout, Mirror-BERT
span masking, resumable iterator state, qrels joins."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxbert.data.features.pairs import (PairFields, make_pair_iterator, read_pair_records, retrieval_pairs,
                                        span_mask)
from jaxbert.data.labels import LabelMap
from jaxbert.data.sources import JsonlSource
from jaxbert.data.tokenization import load_tokenizer


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return load_tokenizer(minilm_dir)


ROWS = [{"anchor": f"query number {i} about cats", "positive": f"document {i} says cats purr",
         "negative": [f"unrelated {i}", f"other {i} text"], "score": i / 10, "domain": "a" if i % 2 else "b",
         "label": "yes" if i % 3 else "no"} for i in range(10)]


def test_records_and_batches(tmp_path, tokenizer):
    src = JsonlSource(_write(tmp_path / "p.jsonl", ROWS))
    rec = read_pair_records(src, PairFields(domain="domain", score="score"), domains=["a", "b"], require_score=True,
                            require_label=True, label_map=LabelMap("label", ["no", "yes"]))
    assert len(rec) == 10 and rec.num_texts == 4
    assert rec.domains.tolist() == [1, 0] * 5
    it = make_pair_iterator(rec, tokenizer, batch_size=4, seed=0, max_length=32, buckets=(8, 16))
    batch = next(it)
    longest = int(batch["attention_mask"].sum(-1).max())
    assert batch["input_ids"].shape == (4, 4, 8 if longest <= 8 else 16) and batch["input_ids"].dtype == np.int32
    assert batch["attention_mask"].sum(-1).min() > 0
    assert batch["scores"].dtype == np.float32 and batch["labels"].dtype == np.int32
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "scores", "labels", "domains"}
    # resume: a fresh iterator restored from the state continues the same stream
    state = it.get_state()
    expected = next(it)
    it2 = make_pair_iterator(rec, tokenizer, batch_size=4, seed=0, max_length=32, buckets=(8, 16))
    it2.set_state(state)
    got = next(it2)
    for k in expected:
        np.testing.assert_array_equal(expected[k], got[k])


def test_pairs_without_negatives(tmp_path, tokenizer):
    rows = [{"anchor": r["anchor"], "positive": r["positive"]} for r in ROWS]
    rec = read_pair_records(JsonlSource(_write(tmp_path / "p.jsonl", rows)))
    assert rec.num_texts == 2 and rec.scores is None and rec.domains is None
    batch = next(make_pair_iterator(rec, tokenizer, batch_size=5, seed=1, max_length=24))
    assert batch["input_ids"].shape == (5, 2, 24)


@pytest.mark.parametrize("bad,kwargs,message", [
    ({"anchor": "", "positive": "x"}, {}, r"line 2 \(record 1\): field 'anchor' is an empty text"),
    ({"anchor": "a", "positive": "   "}, {}, r"line 2 \(record 1\): field 'positive' is an empty text"),
    ({"anchor": "a"}, {}, r"line 2 \(record 1\): no field 'positive'"),
    ({"anchor": "a", "positive": "b", "negative": ["c"]}, {},
     r"line 2 \(record 1\): 1 negatives in field 'negative', but .* line 1 .*has 2; every record needs the same number"),
    ({"anchor": "a", "positive": "b", "negative": ["c", ""]}, {}, r"line 2 \(record 1\): field 'negative\[1\]' is an empty text"),
    ({"anchor": "a", "positive": "b", "negative": ["c", "d"], "domain": "zzz"},
     {"domains": ["a", "b"], "fields": PairFields(domain="domain")},
     r"line 2 \(record 1\): domain 'zzz' is not in the expert table \['a', 'b'\]"),
    ({"anchor": "a", "positive": "b", "negative": ["c", "d"], "score": "high"},
     {"require_score": True, "fields": PairFields(score="score")}, r"line 2 \(record 1\): score field 'score' must be a finite number"),
    ({"anchor": 3, "positive": "b"}, {}, r"line 2 \(record 1\): field 'anchor' must be a str, got int"),
])
def test_bad_records_name_file_and_line(tmp_path, bad, kwargs, message):
    first = {"anchor": "a", "positive": "b", "negative": ["c", "d"], "score": 0.5, "domain": "a"}
    path = _write(tmp_path / "bad.jsonl", [first, bad])
    kwargs = dict(kwargs)
    fields = kwargs.pop("fields", PairFields())
    with pytest.raises((ValueError, TypeError), match=message) as err:
        read_pair_records(JsonlSource(path), fields, **kwargs)
    assert str(path) in str(err.value)


def test_domain_field_without_table(tmp_path):
    path = _write(tmp_path / "p.jsonl", ROWS)
    with pytest.raises(ValueError, match="no expert table"):
        read_pair_records(JsonlSource(path), PairFields(domain="domain"))


def test_mirror_span_masking(tmp_path, tokenizer):
    text = "the quick brown fox jumps over the lazy dog by the river"
    a = span_mask(text, np.random.default_rng(0), 5)
    assert "[MASK]" in a and len(a) != len(text)
    assert span_mask("too short to mask", np.random.default_rng(0), 5) == "too short to mask"
    rows = [{"text": f"{text} number {i}"} for i in range(8)]
    rec = read_pair_records(JsonlSource(_write(tmp_path / "m.jsonl", rows)), PairFields(anchor="text"), mirror=True)
    assert rec.num_texts == 2 and rec.texts[0][0] == rec.texts[0][1]
    b1 = next(make_pair_iterator(rec, tokenizer, batch_size=4, seed=3, max_length=32, mirror_span=5))
    b2 = next(make_pair_iterator(rec, tokenizer, batch_size=4, seed=3, max_length=32, mirror_span=5))
    np.testing.assert_array_equal(b1["input_ids"], b2["input_ids"])  # deterministic
    mask_id = tokenizer.mask_token_id
    assert (b1["input_ids"][:, 1] == mask_id).any(axis=-1).all()  # every 2nd view has a [MASK]
    assert not (b1["input_ids"][:, 0] == mask_id).any()  # first views untouched


def test_retrieval_pairs_and_missing_doc(tmp_path):
    q = _write(tmp_path / "q.jsonl", [{"id": "q1", "text": "a cat"}, {"id": "q2", "text": "a dog"}])
    c = _write(tmp_path / "c.jsonl", [{"id": "d1", "text": "cat: feline"}, {"id": "d2", "text": "dog: canine"}])
    good = _write(tmp_path / "qrels.jsonl", [{"query_id": "q1", "doc_id": "d1", "score": 1},
                                             {"query_id": "q2", "doc_id": "d2", "score": 1}])
    assert retrieval_pairs(q, good, c) == [{"anchor": "a cat", "positive": "cat: feline"},
                                           {"anchor": "a dog", "positive": "dog: canine"}]
    bad = _write(tmp_path / "bad.jsonl", [{"query_id": "q1", "doc_id": "d1"}, {"query_id": "q2", "doc_id": "d9"}])
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: doc_id 'd9' is not in the corpus .*c.jsonl \(2 documents\)"):
        retrieval_pairs(q, bad, c)


def test_too_few_records_for_a_batch(tmp_path, tokenizer):
    rec = read_pair_records(JsonlSource(_write(tmp_path / "p.jsonl", ROWS[:3])))
    with pytest.raises(ValueError, match="3 pair records are fewer than one global batch of 4"):
        make_pair_iterator(rec, tokenizer, batch_size=4, seed=0, max_length=16)
