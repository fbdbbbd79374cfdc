"""Tests for jaxbert.data: sources, tokenization and grain pipelines, on the shared real data."""

from __future__ import annotations

import collections
import gzip
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import jaxbert.assets
from jaxbert.data import (
    ArrayRecordSource,
    JsonlSource,
    LabelMap,
    bucket_length,
    check_vocab,
    data_dir,
    encode_batch,
    load_tokenizer,
    make_eval_batches,
    make_train_iterator,
    tfds_source,
    write_array_record,
)

DATA = Path(os.environ.get("JAXBERT_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
TREC_COARSE = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]

needs_data = pytest.mark.skipif(not (DATA / "trec" / "test.jsonl").is_file(), reason=f"no shared data at {DATA}")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(jaxbert.assets.fetch("minilm"))


@pytest.fixture(scope="module")
def trec_train():
    return JsonlSource(DATA / "trec" / "train.jsonl")


@pytest.fixture(scope="module")
def trec_test():
    return JsonlSource(DATA / "trec" / "test.jsonl")


@pytest.fixture(scope="module")
def trec_labels():
    return LabelMap("coarse_label", TREC_COARSE)


def _one_host(**kw):
    return dict(process_index=0, process_count=1, **kw)


def _rows(batch):
    """Each row of a batch as a hashable tuple (tokens + label)."""
    return [
        tuple(ids.tolist()) + (int(lab),)
        for ids, lab in zip(batch["input_ids"], batch["labels"])
    ]


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ sources


def test_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXBERT_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    monkeypatch.delenv("JAXBERT_DATA")
    assert data_dir().parts[-2:] == ("shared", "data")


@needs_data
@pytest.mark.parametrize(
    "rel, count",
    [
        ("rotten_tomatoes/train.jsonl", 10_200),
        ("rotten_tomatoes/validation.jsonl", 1_276),
        ("rotten_tomatoes/test.jsonl", 1_275),
        ("trec/train.jsonl", 4_841),
        ("trec/test.jsonl", 538),
        ("movie_dialog/pairs.jsonl.gz", 52_890),
    ],
)
def test_jsonl_counts_match_readme(rel, count):
    src = JsonlSource(DATA / rel)
    assert len(src) == count
    assert isinstance(src[0], dict) and isinstance(src[-1], dict)
    with pytest.raises(IndexError):
        src[count]


@needs_data
def test_jsonl_record_content(trec_test):
    assert trec_test[0] == {
        "text": "What is the price for tuberculosis drugs ?",
        "coarse_label": "NUM",
        "fine_label": "NUM:money",
    }
    assert trec_test.line_number(0) == 1
    assert "line 1" in trec_test.describe(0)


def test_jsonl_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope" / "train.jsonl"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        JsonlSource(missing)


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok", "label": 0}\n\n{"text": "broken", "label": \n{"text": "x"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl line 3: malformed JSON"):
        JsonlSource(path)
    path.write_text('{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl line 2: expected a JSON object"):
        JsonlSource(path)


def test_jsonl_gz_and_blank_lines(tmp_path):
    path = tmp_path / "small.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('{"text": "a"}\n\n{"text": "b"}\n')
    src = JsonlSource(path)
    assert len(src) == 2 and src[1] == {"text": "b"}
    assert src.line_number(1) == 3  # physical line numbers survive blank lines


def test_array_record_round_trip(tmp_path):
    records = [{"text": f"sentence number {i}", "label": i % 3, "extra": [i, "ü"]} for i in range(25)]
    path = tmp_path / "recs.array_record"
    assert write_array_record(records, path) == 25
    src = ArrayRecordSource(path)
    assert len(src) == 25
    assert [src[i] for i in range(25)] == records
    assert src[-1] == records[-1]
    with pytest.raises(FileNotFoundError, match="missing.array_record"):
        ArrayRecordSource([path, tmp_path / "missing.array_record"])


def test_array_record_through_pipeline(tmp_path, tok):
    records = [{"text": f"sentence number {i}", "label": i % 3} for i in range(10)]
    path = tmp_path / "recs.array_record"
    write_array_record(records, path)
    batches = list(
        make_eval_batches(ArrayRecordSource(path), tok, batch_size=4, max_length=16,
                          label_map=LabelMap("label", [0, 1, 2]), **_one_host())
    )
    assert len(batches) == 3
    labels = np.concatenate([b["labels"] for b in batches])
    weights = np.concatenate([b["weights"] for b in batches])
    assert weights.tolist() == [1.0] * 10 + [0.0] * 2
    assert labels[:10].tolist() == [i % 3 for i in range(10)]


def test_tfds_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install jaxbert\[tfds\]"):
        tfds_source("imdb_reviews", "train")


def test_tfds_source_wiring(monkeypatch, tmp_path):
    calls = {}

    def data_source(name, split, **kwargs):
        calls.update(name=name, split=split, **kwargs)
        return [{"text": b"great film", "label": np.int64(1)}]

    fake = types.ModuleType("tensorflow_datasets")
    fake.data_source = data_source
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    src = tfds_source("imdb_reviews", "train", data_dir=tmp_path)
    assert calls == {"name": "imdb_reviews", "split": "train", "data_dir": str(tmp_path)}
    assert len(src) == 1 and src[0] == {"text": "great film", "label": 1}


# --------------------------------------------------------------------------- tokenization


def test_load_tokenizer_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "no_such_tokenizer")):
        load_tokenizer(tmp_path / "no_such_tokenizer")


def test_tokenizer_round_trip_real_sentence(tok, trec_test):
    text = trec_test[1]["text"]  # "What is crabgrass ?"
    enc = encode_batch(tok, [text], max_length=16)
    n = int(enc["attention_mask"][0].sum())
    ids = enc["input_ids"][0, :n].tolist()
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "what", "is", "crab", "##grass", "?", "[SEP]"]
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert decoded.replace(" ", "") == text.lower().replace(" ", "")
    assert (enc["input_ids"][0, n:] == tok.pad_token_id).all()


def test_encode_batch_shapes_pairs_and_padding(tok):
    texts = ["a short one", "a considerably longer sentence that will certainly be truncated here"]
    enc = encode_batch(tok, texts, max_length=8)
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        assert enc[k].shape == (2, 8) and enc[k].dtype == np.int32
    assert enc["attention_mask"][1].sum() == 8 and enc["input_ids"][1, -1] == tok.sep_token_id
    pairs = encode_batch(tok, ["first part"], ["second part"], max_length=16, pad_to="longest")
    assert pairs["input_ids"].shape == (1, 7)
    assert pairs["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert encode_batch(tok, texts, max_length=64, pad_to=32)["input_ids"].shape == (2, 32)
    with pytest.raises(ValueError, match="shorter than the longest"):
        encode_batch(tok, texts, max_length=64, pad_to=4)


def test_encode_batch_rejects_non_str_with_index(tok):
    with pytest.raises(TypeError, match=r"texts\[2\] must be str, got int"):
        encode_batch(tok, ["fine", "also fine", 3], max_length=8)
    with pytest.raises(TypeError, match=r"text_pairs\[0\] must be str, got NoneType"):
        encode_batch(tok, ["fine"], [None], max_length=8)
    with pytest.raises(TypeError, match="single str"):
        encode_batch(tok, "not a list", max_length=8)
    with pytest.raises(ValueError, match="non-empty"):
        encode_batch(tok, [], max_length=8)


def test_check_vocab(tok):
    assert check_vocab(tok, 30522) == 30522
    assert check_vocab(tok, 30528) == 30522  # padded embedding table is fine
    with pytest.raises(ValueError, match=r"30522 ids.*vocab_size=30000"):
        check_vocab(tok, 30000)


def test_bucket_length():
    assert bucket_length(1, [128, 32, 64]) == 32
    assert bucket_length(32, [32, 64, 128]) == 32
    assert bucket_length(33, [32, 64, 128]) == 64
    with pytest.raises(ValueError, match="largest bucket 128"):
        bucket_length(129, [32, 64, 128])


# ------------------------------------------------------------------------------- labels


def test_label_map_round_trip_and_config():
    import ml_collections

    lm = LabelMap("coarse_label", TREC_COARSE)
    assert LabelMap.from_dict(json.loads(json.dumps(lm.to_dict()))) == lm
    cfg = ml_collections.ConfigDict({"field": "coarse_label", "labels": TREC_COARSE})
    assert LabelMap.from_config(cfg) == lm
    assert lm.encode("HUM") == 3 and lm.decode(3) == "HUM" and lm.num_classes == 6
    ints = LabelMap("label", [0, 1])
    assert ints.encode(1) == 1
    for bad in ("1", True, 2):
        with pytest.raises(ValueError, match="valid labels"):
            ints.encode(bad)
    with pytest.raises(ValueError, match="twice"):
        LabelMap("label", [0, 1, 0])
    with pytest.raises(TypeError, match="mix"):
        LabelMap("label", [0, "1"])


@needs_data
def test_label_map_infer(trec_test):
    assert LabelMap.infer(trec_test, "coarse_label").labels == tuple(TREC_COARSE)


def test_label_outside_set_names_line_and_value(tmp_path, tok):
    path = tmp_path / "labels.jsonl"
    path.write_text(
        '{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n{"text": "meh", "label": "neutral"}\n'
    )
    lm = LabelMap("label", ["neg", "pos"])
    with pytest.raises(ValueError, match=r"labels\.jsonl line 3.*'neutral'.*\['neg', 'pos'\]"):
        list(make_eval_batches(JsonlSource(path), tok, batch_size=2, max_length=8, label_map=lm, **_one_host()))
    it = make_train_iterator(JsonlSource(path), tok, batch_size=3, seed=0, max_length=8, label_map=lm,
                             shuffle=False, **_one_host())
    with pytest.raises(ValueError, match=r"line 3.*'neutral'"):
        next(it)


def test_missing_or_non_str_text_names_record(tok):
    kw = dict(batch_size=1, max_length=8, **_one_host())
    with pytest.raises(ValueError, match=r"record 0 .*no text field 'text' \(record has \['txt'\]\)"):
        make_eval_batches([{"txt": "a"}], tok, **kw)[0]
    with pytest.raises(TypeError, match=r"record 0 .*field 'text' must be str, got int"):
        make_eval_batches([{"text": 5}], tok, **kw)[0]


@needs_data
def test_real_label_missing_from_set(trec_test, tok):
    five = LabelMap("coarse_label", TREC_COARSE[:-1])  # no NUM: record 0 is NUM
    with pytest.raises(ValueError, match=r"test\.jsonl line 1 .*'NUM'"):
        make_eval_batches(trec_test, tok, batch_size=8, max_length=16, label_map=five, **_one_host())[0]


# ----------------------------------------------------------------------------- pipelines


@needs_data
def test_train_batch_format(trec_train, tok, trec_labels):
    it = make_train_iterator(trec_train, tok, batch_size=16, seed=0, max_length=32, label_map=trec_labels,
                             **_one_host())
    batch = next(it)
    assert sorted(batch) == ["attention_mask", "input_ids", "labels", "token_type_ids"]
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        assert batch[k].shape == (16, 32) and batch[k].dtype == np.int32
    assert batch["labels"].shape == (16,) and batch["labels"].dtype == np.int32
    assert (batch["input_ids"][:, 0] == tok.cls_token_id).all()
    assert set(batch["labels"].tolist()) <= set(range(6))
    assert it.steps_per_epoch == 4841 // 16


@needs_data
def test_determinism_same_and_different_seed(trec_train, tok, trec_labels):
    kw = dict(batch_size=16, max_length=32, label_map=trec_labels, **_one_host())
    a = make_train_iterator(trec_train, tok, seed=3, **kw)
    b = make_train_iterator(trec_train, tok, seed=3, **kw)
    c = make_train_iterator(trec_train, tok, seed=4, **kw)
    for _ in range(4):
        x, y, z = next(a), next(b), next(c)
        assert _same(x, y)
        assert not np.array_equal(x["input_ids"], z["input_ids"])


@needs_data
def test_state_save_restore_reproduces_batches(trec_train, tok, trec_labels):
    kw = dict(batch_size=16, seed=7, max_length=32, label_map=trec_labels, **_one_host())
    it = make_train_iterator(trec_train, tok, **kw)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # must survive JSON
    expected = [next(it) for _ in range(4)]

    fresh = make_train_iterator(trec_train, tok, **kw)
    fresh.set_state(state)
    for want in expected:
        assert _same(next(fresh), want)

    other = make_train_iterator(trec_train, tok, **{**kw, "seed": 8})
    with pytest.raises(ValueError, match="seed: saved 7, current 8"):
        other.set_state(state)


@needs_data
def test_state_restore_across_epoch_boundary(trec_test, tok, trec_labels):
    kw = dict(batch_size=64, seed=1, max_length=24, label_map=trec_labels, **_one_host())
    it = make_train_iterator(trec_test, tok, **kw)  # 538 records: epoch 1 starts in batch 8
    for _ in range(7):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    fresh = make_train_iterator(trec_test, tok, **kw)
    fresh.set_state(state)
    assert all(_same(next(fresh), want) for want in expected)


@needs_data
def test_two_host_sharding_matches_global_batch(trec_train, tok, trec_labels):
    kw = dict(batch_size=16, seed=11, max_length=32, label_map=trec_labels)
    glob = make_train_iterator(trec_train, tok, **kw, process_index=0, process_count=1)
    h0 = make_train_iterator(trec_train, tok, **kw, process_index=0, process_count=2)
    h1 = make_train_iterator(trec_train, tok, **kw, process_index=1, process_count=2)
    for _ in range(5):
        g, b0, b1 = next(glob), next(h0), next(h1)
        assert b0["input_ids"].shape == b1["input_ids"].shape == (8, 32)
        r0, r1 = collections.Counter(_rows(b0)), collections.Counter(_rows(b1))
        assert r0 + r1 == collections.Counter(_rows(g))
        assert not set(r0) & set(r1)
    with pytest.raises(ValueError, match="not divisible by process_count=3"):
        make_train_iterator(trec_train, tok, **kw, process_index=0, process_count=3)


def _numbered(n):
    return [{"text": f"record {i}", "label": i % 2} for i in range(n)]


def _decode_ids(tok, batch):
    out = []
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        words = tok.decode(ids[mask == 1], skip_special_tokens=True).split()
        out.append(int(words[-1]) if words else -1)  # padding rows are [CLS] [SEP]
    return out


def test_finite_epochs_cover_data_and_hosts_agree(tok):
    recs = _numbered(50)
    lm = LabelMap("label", [0, 1])
    kw = dict(batch_size=4, seed=5, max_length=8, label_map=lm, num_epochs=2)
    seen = []
    per_host = []
    for p in range(2):
        batches = list(make_train_iterator(recs, tok, **kw, process_index=p, process_count=2))
        per_host.append(len(batches))
        seen += [i for b in batches for i in _decode_ids(tok, b)]
    assert per_host == [25, 25]  # 100 records // 4 = 25 global batches, each host has each one
    counts = collections.Counter(seen)
    assert sorted(counts) == list(range(50)) and set(counts.values()) == {2}


@needs_data
def test_eval_batches_cover_every_example_once(trec_test, tok, trec_labels):
    ds = make_eval_batches(trec_test, tok, batch_size=64, max_length=32, label_map=trec_labels, **_one_host())
    batches = list(ds)
    assert len(ds) == len(batches) == 9  # ceil(538 / 64)
    for b in batches:
        assert b["input_ids"].shape == (64, 32) and b["weights"].dtype == np.float32
    weights = np.concatenate([b["weights"] for b in batches])
    assert weights.sum() == 538 and (weights[:538] == 1).all() and (weights[538:] == 0).all()
    ids = np.concatenate([b["input_ids"] for b in batches])[:538]
    labels = np.concatenate([b["labels"] for b in batches])[:538]
    texts = [trec_test[i]["text"] for i in range(538)]
    assert np.array_equal(ids, encode_batch(tok, texts, max_length=32)["input_ids"])
    assert labels.tolist() == [trec_labels.encode(trec_test[i]["coarse_label"]) for i in range(538)]


def test_eval_two_hosts_cover_every_example_once(tok):
    recs = _numbered(21)
    kw = dict(batch_size=8, max_length=8, label_map=LabelMap("label", [0, 1]))
    seen, nbatches = [], []
    for p in range(2):
        batches = list(make_eval_batches(recs, tok, **kw, process_index=p, process_count=2))
        nbatches.append(len(batches))
        for b in batches:
            assert b["input_ids"].shape == (4, 8)
            seen += [i for i, w in zip(_decode_ids(tok, b), b["weights"]) if w == 1]
    assert nbatches == [3, 3]
    assert sorted(seen) == list(range(21))


@needs_data
def test_bucketing_uniform_per_batch(trec_train, tok, trec_labels):
    it = make_train_iterator(trec_train, tok, batch_size=8, seed=0, max_length=64, buckets=[16, 32],
                             label_map=trec_labels, **_one_host())
    lengths = set()
    for _ in range(20):
        b = next(it)
        L = b["input_ids"].shape[1]
        lengths.add(L)
        assert all(b[k].shape == (8, L) for k in ("input_ids", "attention_mask", "token_type_ids"))
        assert bucket_length(int(b["attention_mask"].sum(1).max()), [16, 32, 64]) == L
    assert lengths <= {16, 32, 64} and len(lengths) > 1
    ev = make_eval_batches(trec_train, tok, batch_size=8, max_length=64, pad_to_multiple_of=8,
                           label_map=trec_labels, **_one_host())
    assert ev[0]["input_ids"].shape[1] % 8 == 0
    with pytest.raises(ValueError, match="hosts would disagree"):
        make_train_iterator(trec_train, tok, batch_size=8, seed=0, max_length=64, buckets=[16],
                            label_map=trec_labels, process_index=0, process_count=2)


@needs_data
def test_text_pairs_pipeline(tok):
    pairs = JsonlSource(DATA / "chatterbot_qa" / "pairs.jsonl")
    it = make_train_iterator(pairs, tok, batch_size=4, seed=0, max_length=48, text_field="question",
                             pair_field="answer", **_one_host())
    b = next(it)
    assert "labels" not in b
    assert (b["token_type_ids"].max(axis=1) == 1).all()  # every row has a second segment
