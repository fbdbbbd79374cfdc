"""The batching skeleton (jaxbert/data/batching.py) against a plain re-implementation of its contract.

Each pipeline kind built on the skeleton (text, pre-tokenized features, pairs, MLM, indexed) is
compared batch by batch, on real data, with batches computed here directly from the records:
the global stream (epoch ``e`` = grain's shuffle permutation for seed ``shuffle_seed(seed) + e``,
or record order), the cut to whole global batches, host ``p`` of ``P`` taking stream positions
``p, p + P, ...``, the per-row features (tokenizer calls, padding, masks drawn from grain's
per-element Philox generator) and the bucket of each batch. Also: eval padding and ordering,
one length per global batch on several hosts, exact resume, and the skeleton's errors.
"""

from __future__ import annotations

import json

import grain
import numpy as np
import pytest

from jaxbert.data import batching, masking
from jaxbert.data.features import mlm as mlm_lib
from jaxbert.data.features import pairs as pairs_lib
from jaxbert.data.features import pretokenized
from jaxbert.data.features import text as text_lib
from jaxbert.data.features.tokens import build_token_features
from jaxbert.data.labels import LabelMap
from jaxbert.data.sources import JsonlSource
from jaxbert.data.tokenization import encode_batch, load_tokenizer, tokenize_with_words


@pytest.fixture(scope="module")
def tok(minilm_dir):
    return load_tokenizer(minilm_dir)


@pytest.fixture(scope="module")
def trec(data_dir):
    return JsonlSource(data_dir / "trec" / "test.jsonl")


# ------------------------------------------------------------------------ the reference


def stream_index(n: int, seed: int, shuffle: bool):
    """Record index at global stream position ``pos`` (epochs concatenated)."""
    perms: dict[int, list[int]] = {}

    def at(pos: int) -> int:
        e, i = divmod(pos, n)
        if e not in perms:
            ds = grain.MapDataset.range(n).shuffle(seed=batching.shuffle_seed(seed) + e) if shuffle else range(n)
            perms[e] = [int(ds[j]) for j in range(n)]
        return perms[e][i]
    return at


def host_positions(k: int, batch_size: int, p: int, num_hosts: int) -> list[int]:
    """Global stream positions of host ``p``'s ``k``-th batch."""
    return [k * batch_size + p + num_hosts * j for j in range(batch_size // num_hosts)]


def grain_rng(seed: int, index: int) -> np.random.Generator:
    """The generator grain's ``random_map`` hands element ``index`` (Philox, counter = index)."""
    rng = np.random.Generator(np.random.Philox(seed))
    state = rng.bit_generator.state
    state["state"]["counter"] = np.array([0, 0, 0, index], np.uint64)
    state["buffer"] = np.zeros(4, np.uint64)
    state["buffer_pos"], state["has_uint32"], state["uinteger"] = 4, 0, 0
    rng.bit_generator.state = state
    return rng


def trim(batch: dict, buckets, keys=("input_ids", "attention_mask", "token_type_ids")) -> dict:
    """Cut the token arrays to the smallest of ``buckets`` holding the longest row."""
    longest = int(batch["attention_mask"].sum(axis=-1).max())
    length = min(b for b in buckets if b >= longest)
    return {k: (v[..., :length] if k in keys else v) for k, v in batch.items()}


def assert_batches_equal(got: dict, want: dict, where: str) -> None:
    assert sorted(got) == sorted(want), where
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, (where, k, got[k].shape)
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{where} {k}")


# ------------------------------------------------------------------------------ text


@pytest.mark.parametrize("num_hosts,buckets,num_epochs,shuffle", [
    (1, None, None, True), (2, None, 2, True), (1, (16, 24), None, True), (2, None, None, False)])
def test_text_train_batches_match_reference(tok, trec, num_hosts, buckets, num_epochs, shuffle):
    labels = LabelMap.infer(trec, "coarse_label")
    n, B, seed, L = len(trec), 64, 3, 32
    at = stream_index(n, seed, shuffle)
    num_batches = 10 if num_epochs is None else (n * num_epochs // B)  # crosses an epoch boundary
    for p in range(num_hosts):
        it = text_lib.make_train_iterator(trec, tok, batch_size=B, seed=seed, max_length=L, label_map=labels,
                                          pair_field="fine_label", buckets=buckets, num_epochs=num_epochs,
                                          shuffle=shuffle, process_index=p, process_count=num_hosts)
        for k in range(num_batches):
            rows = [trec[at(pos)] for pos in host_positions(k, B, p, num_hosts)]
            want = encode_batch(tok, [r["text"] for r in rows], [r["fine_label"] for r in rows], max_length=L)
            want["labels"] = np.asarray([labels.encode(r["coarse_label"]) for r in rows], np.int32)
            assert_batches_equal(next(it), trim(want, (*buckets, L)) if buckets else want, f"host {p} batch {k}")
        if num_epochs is not None:
            with pytest.raises(StopIteration):
                next(it)


def test_text_eval_batches_match_reference(tok, trec):
    labels = LabelMap.infer(trec, "coarse_label")
    B, L = 100, 32  # 538 records: 6 global batches, the last with 62 padding rows
    for p in range(2):
        ds = text_lib.make_eval_batches(trec, tok, batch_size=B, max_length=L, label_map=labels,
                                        process_index=p, process_count=2)
        assert len(ds) == 6
        for k, got in enumerate(ds):
            pos = host_positions(k, B, p, 2)
            texts = [trec[i]["text"] if i < len(trec) else "" for i in pos]
            want = encode_batch(tok, texts, max_length=L)
            want["labels"] = np.asarray([labels.encode(trec[i]["coarse_label"]) if i < len(trec) else 0
                                         for i in pos], np.int32)
            want["weights"] = np.asarray([i < len(trec) for i in pos], np.float32)
            assert_batches_equal(got, want, f"host {p} eval batch {k}")


# ----------------------------------------------------------------------- pre-tokenized


@pytest.fixture(scope="module")
def pos_features(data_dir, tok):
    source = JsonlSource(data_dir / "brown" / "pos_validation.jsonl")
    tags = LabelMap("tags", sorted({t for i in range(600) for t in source[i]["tags"]} | {"X"}))
    return build_token_features(source, tok, max_length=40, label_map=tags, indices=range(600)).features


def pad_features(rows: list[dict], length: int) -> dict:
    out = {"input_ids": np.zeros((len(rows), length), np.int32), "labels": np.full((len(rows), length), -1, np.int32),
           "attention_mask": np.zeros((len(rows), length), np.int32),
           "token_type_ids": np.zeros((len(rows), length), np.int32)}
    for i, r in enumerate(rows):
        m = len(r["input_ids"])
        out["input_ids"][i, :m], out["labels"][i, :m], out["attention_mask"][i, :m] = r["input_ids"], r["labels"], 1
    return out


@pytest.mark.parametrize("num_hosts,buckets", [(1, None), (2, None), (1, (12, 24))])
def test_feature_train_batches_match_reference(pos_features, num_hosts, buckets):
    n, B, seed, L = len(pos_features), 32, 1, 40
    at = stream_index(n, seed, True)
    for p in range(num_hosts):
        it = pretokenized.make_train_iterator(pos_features, batch_size=B, seed=seed, max_length=L,
                                              seq_pad={"input_ids": 0, "labels": -1}, buckets=buckets,
                                              process_index=p, process_count=num_hosts)
        for k in range(25):
            rows = [pos_features[at(pos)] for pos in host_positions(k, B, p, num_hosts)]
            length = L if not buckets else min(b for b in (*buckets, L) if b >= max(len(r["input_ids"]) for r in rows))
            assert_batches_equal(next(it), pad_features(rows, length), f"host {p} batch {k}")


def test_length_grouped_batches_match_reference(pos_features):
    """Hugging Face's group_by_length sampler, written out: mega-batches sorted longest first."""
    n, B, G, seed = len(pos_features), 16, 4, 2
    lengths = np.array([len(f["input_ids"]) for f in pos_features])
    it = pretokenized.make_train_iterator(pos_features, batch_size=B, seed=seed, max_length=40,
                                          seq_pad={"input_ids": 0, "labels": -1}, buckets=(12, 24),
                                          group_by_length=G, process_index=0, process_count=1)
    stream = []
    for e in range(2):
        rng = np.random.default_rng([batching.shuffle_seed(seed), e])
        perm = rng.permutation(n)
        order = []
        for c in range(0, n, B * G):
            chunk = list(perm[c:c + B * G])
            order += sorted(chunk, key=lambda i: -lengths[i])  # stable: ties keep permutation order
        nb = n // B
        batches = [order[b * B:(b + 1) * B] for b in rng.permutation(nb)]
        stream += [i for b in batches for i in b] + order[nb * B:]
    for k in range(2 * n // B):
        rows = [pos_features[i] for i in stream[k * B:(k + 1) * B]]
        longest = max(len(r["input_ids"]) for r in rows)
        assert_batches_equal(next(it), pad_features(rows, min(b for b in (12, 24, 40) if b >= longest)), f"batch {k}")


def test_feature_eval_one_length_per_global_batch(pos_features):
    """Sorted by length; every host pads global batch k to the bucket of its longest feature."""
    B, L = 64, 40
    order = np.argsort([len(f["input_ids"]) for f in pos_features], kind="stable")
    pad = {"input_ids": np.asarray([101, 102], np.int32), "labels": np.asarray([-1, -1], np.int32)}
    for p in range(2):
        ds = pretokenized.make_eval_batches(pos_features, batch_size=B, max_length=L,
                                            seq_pad={"input_ids": 0, "labels": -1}, pad_feature=pad,
                                            buckets=(12, 24), index_offset=5, process_index=p, process_count=2)
        assert len(ds) == -(-len(pos_features) // B)
        for k, got in enumerate(ds):
            glob = [pos_features[order[i]] for i in range(k * B, min((k + 1) * B, len(order)))]
            length = min(b for b in (12, 24, 40) if b >= max(len(f["input_ids"]) for f in glob))
            pos = host_positions(k, B, p, 2)
            rows = [pos_features[order[i]] if i < len(order) else pad for i in pos]
            want = pad_features(rows, length)
            want["feature_index"] = np.asarray([5 + order[i] if i < len(order) else -1 for i in pos], np.int32)
            want["weights"] = np.asarray([i < len(order) for i in pos], np.float32)
            assert_batches_equal(got, want, f"host {p} eval batch {k}")


# ------------------------------------------------------------------------------- pairs


def test_pair_batches_match_reference(data_dir, tok):
    source = JsonlSource(data_dir / "rotten_tomatoes" / "validation.jsonl")
    records = pairs_lib.read_pair_records(source, pairs_lib.PairFields(anchor="text"), mirror=True)
    n, B, seed, L, span = len(records), 16, 4, 48, 5
    at = stream_index(n, seed, True)
    for p in range(2):
        it = pairs_lib.make_pair_iterator(records, tok, batch_size=B, seed=seed, max_length=L, mirror_span=span,
                                          process_index=p, process_count=2)
        for k in range(8):
            pos = host_positions(k, B, p, 2)
            texts = []
            for q in pos:  # the second view is span-masked with a generator of (seed, stream position)
                t = records.texts[at(q)]
                texts += [t[0], pairs_lib.span_mask(t[1], np.random.default_rng([seed, q]), span, tok.mask_token)]
            enc = encode_batch(tok, texts, max_length=L)
            want = {key: v.reshape(len(pos), 2, L) for key, v in enc.items()}
            assert_batches_equal(next(it), want, f"host {p} batch {k}")


# --------------------------------------------------------------------------------- MLM


@pytest.fixture(scope="module")
def mlm_rows(data_dir, tok):
    source = JsonlSource(data_dir / "brown" / "pos_test.jsonl")
    docs = tokenize_with_words(tok, [" ".join(source[i]["tokens"]) for i in range(120)])
    return mlm_lib.build_rows(docs, tok, max_length=48, packing=True)


def mask_rows(rows: dict, indices: list[int], masker, rngs: list[np.random.Generator], m: int) -> dict:
    """:class:`MaskRow` written out: masked inputs, visible-token mask, per-segment positions, targets."""
    out = []
    for i, rng in zip(indices, rngs):
        ids, words, seg = rows["input_ids"][i], rows["word_ids"][i], rows["segment_ids"][i]
        inputs, labels = masker(ids, words, rng)
        t = masking.to_targets(inputs, labels, m)
        visible = t["visible"] & (seg > 0)
        pos = np.zeros_like(seg)
        for s in np.unique(seg[seg > 0]):
            at = np.flatnonzero(seg == s)
            pos[at] = np.maximum(np.cumsum(visible[at]) - 1, 0)
        out.append({"input_ids": t["input_ids"], "attention_mask": visible.astype(np.int32),
                    "token_type_ids": np.zeros_like(seg), "position_ids": pos,
                    "masked_positions": t["masked_positions"], "masked_offsets": t["masked_offsets"],
                    "masked_labels": t["masked_labels"], "segment_ids": seg})
    return {k: np.stack([o[k] for o in out]) for k in out[0]}


def test_mlm_train_and_eval_batches_match_reference(tok, mlm_rows):
    spec = masking.MaskingSpec.from_tokenizer(tok, rate=0.15)
    masker = masking.build_masker("whole_word", spec)
    n, B, seed, m = int(mlm_rows["input_ids"].shape[0]), 8, 0, 8
    at = stream_index(n, seed, True)
    for p in range(2):  # train: masks drawn per host, from the row's position in the host's stream
        it = mlm_lib.make_mlm_train_iterator(mlm_rows, masker, batch_size=B, seed=seed, num_predictions=m,
                                             process_index=p, process_count=2)
        for k in range(6):
            pos = host_positions(k, B, p, 2)
            rngs = [grain_rng(batching.shuffle_seed(seed + 1), k * B // 2 + j) for j in range(B // 2)]
            assert_batches_equal(next(it), mask_rows(mlm_rows, [at(q) for q in pos], masker, rngs, m), f"{p} {k}")
    for p in range(2):  # eval: in order, masks from the global position, empty padding rows
        ds = mlm_lib.make_mlm_eval_batches(mlm_rows, masker, batch_size=B, seed=9, num_predictions=m,
                                           process_index=p, process_count=2)
        padded = {k: np.concatenate([mlm_rows[k], np.full((len(ds) * B - n, 48), fill, np.int32)])
                  for k, fill in (("input_ids", 0), ("word_ids", -1), ("segment_ids", 0))}
        for k, got in enumerate(ds):
            pos = host_positions(k, B, p, 2)
            rngs = [grain_rng(batching.shuffle_seed(9), q) for q in pos]
            assert_batches_equal(got, mask_rows(padded, pos, masker, rngs, m), f"eval {p} {k}")


# ----------------------------------------------------------------------------- indexed


def test_indexed_iterator_matches_reference_and_resumes():
    n, B, seed = 37, 8, 3

    def make_batch(idx, rng):
        return {"idx": idx, "draw": rng.integers(0, 1000, size=2)}

    for p in range(2):
        it = batching.IndexedBatchIterator(n, B, seed, make_batch, process_index=p, process_count=2)
        for step in range(12):  # rows [p B/P, (p+1) B/P) of the global batch, epochs concatenated
            perm = np.concatenate([np.random.default_rng([seed, e]).permutation(n) for e in range(4)])
            want = perm[step * B + p * B // 2: step * B + (p + 1) * B // 2]
            got = next(it)
            np.testing.assert_array_equal(got["idx"], want)
            np.testing.assert_array_equal(got["draw"], np.random.default_rng([seed, 0x11A, step]).integers(0, 1000, 2))
        state = json.loads(json.dumps(it.get_state()))
        fresh = batching.IndexedBatchIterator(n, B, seed, make_batch, process_index=p, process_count=2)
        fresh.set_state(state)
        np.testing.assert_array_equal(next(fresh)["idx"], next(it)["idx"])
    with pytest.raises(ValueError, match="seed: saved 3, current 4"):
        batching.IndexedBatchIterator(n, B, 4, make_batch, process_index=0, process_count=1).set_state(
            batching.IndexedBatchIterator(n, B, 3, make_batch, process_index=0, process_count=1).get_state())


# ----------------------------------------------------------------------- the skeleton


def test_skeleton_resumes_exactly_through_json_state(tok, trec):
    def build():
        return text_lib.make_train_iterator(trec, tok, batch_size=32, seed=0, max_length=24, process_index=0,
                                            process_count=1)
    it = build()
    for _ in range(20):  # past the end of epoch 0 (538 // 32 = 16 batches)
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    assert state["pipeline"]["kind"] == "train" and state["pipeline"]["global_batch_size"] == 32
    fresh = build()
    fresh.set_state(state)
    for k in range(5):
        assert_batches_equal(next(fresh), next(it), f"resumed batch {k}")


def test_skeleton_errors_name_the_problem():
    records = [{"x": np.int32(i)} for i in range(10)]
    kw = dict(kind="t", seed=0, collate=batching.stack, process_index=0, process_count=1)
    with pytest.raises(ValueError, match=r"\[\] has no records: nothing to train on"):
        batching.train_iterator([], batch_size=2, **kw)
    with pytest.raises(ValueError, match="10 records x 1 epochs is less than one global batch of 16"):
        batching.train_iterator(records, batch_size=16, num_epochs=1, **kw)
    with pytest.raises(ValueError, match="batch_size=6 is not divisible by process_count=4"):
        batching.train_iterator(records, kind="t", seed=0, collate=batching.stack, batch_size=6, process_index=0,
                                process_count=4)
    with pytest.raises(ValueError, match="seed must be a non-negative int, got -1"):
        batching.train_iterator(records, kind="t", seed=-1, collate=batching.stack, batch_size=2, process_index=0,
                                process_count=1)
    with pytest.raises(ValueError, match="hosts would disagree"):
        batching.eval_batches(records, batch_size=2, collate=batching.stack, pad={"x": np.int32(0)},
                              bucketed=True, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="has no records: nothing to evaluate"):
        batching.eval_batches([], batch_size=2, collate=batching.stack, pad={}, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="length 70 exceeds the largest bucket 64"):
        batching.bucket_length(70, [16, 64])
    with pytest.raises(ValueError, match=r"buckets \[80\] exceed max_length=64"):
        batching.bucket_set(64, [16, 80])
    with pytest.raises(ValueError, match="either buckets or pad_to_multiple_of"):
        batching.bucket_set(64, [16], pad_to_multiple_of=8)
    assert batching.bucket_set(20, pad_to_multiple_of=8) == (8, 16, 20)
    assert batching.bucket_set(64, [32, 16]) == (16, 32, 64) and batching.bucket_set(64) is None
    assert batching.bucket_length(17, (64, 16, 32)) == 32


def test_eval_padding_keeps_every_record_once_with_weights():
    records = [{"x": np.int32(i)} for i in range(10)]
    got = [batching.eval_batches(records, batch_size=4, collate=batching.stack, pad={"x": np.int32(-1),
                                 "weight": np.float32(0)}, process_index=p, process_count=2) for p in range(2)]
    xs = [np.stack([got[0][k]["x"], got[1][k]["x"]], 1).ravel() for k in range(3)]  # hosts interleave
    np.testing.assert_array_equal(np.concatenate(xs), list(range(10)) + [-1, -1])
    np.testing.assert_array_equal(got[1][2]["weight"], [1.0, 0.0])
