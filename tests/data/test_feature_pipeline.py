"""Feature batching (jaxbert/data/features/pretokenized.py): determinism, exact resume, length grouping,
eval coverage with per-global-batch buckets, host sharding."""

from __future__ import annotations

import numpy as np
import pytest

from jaxbert.data.features import pretokenized as fp

SEQ_PAD = {"input_ids": 0, "labels": -1}


def _features(n=103, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(3, 40))
        out.append({"input_ids": np.arange(1, length + 1, dtype=np.int32) + i,
                    "labels": np.full(length, i % 5, np.int32), "y": np.float32(i)})
    return out


def _ids(batch):
    return [int(v) for v in batch["y"]]


@pytest.mark.parametrize("group", [None, 4])
def test_train_iterator_is_deterministic_and_resumes_exactly(group):
    feats = _features()
    make = lambda: fp.make_train_iterator(feats, batch_size=8, seed=3, max_length=48, seq_pad=SEQ_PAD,  # noqa: E731
                                          buckets=(16, 32), group_by_length=group, process_index=0, process_count=1)
    a = make()
    first = [next(a) for _ in range(5)]
    state = a.get_state()
    rest = [_ids(next(a)) for _ in range(30)]  # runs across epoch boundaries
    b = make()
    b.set_state(state)
    assert [_ids(next(b)) for _ in range(30)] == rest
    assert [_ids(x) for x in first] == [_ids(next(it)) for it in [make()] for _ in range(5)]
    for batch in first:
        L = batch["input_ids"].shape[1]
        assert L in (16, 32, 48)
        real = batch["attention_mask"].sum(1)
        assert (real == [len(feats[i]["input_ids"]) for i in _ids(batch)]).all()
        assert (batch["labels"][batch["attention_mask"] == 0] == -1).all()
        assert batch["token_type_ids"].shape == batch["input_ids"].shape
    # Another seed, another stream; a state from another pipeline is refused.
    other = fp.make_train_iterator(feats, batch_size=8, seed=4, max_length=48, seq_pad=SEQ_PAD, buckets=(16, 32),
                                   group_by_length=group, process_index=0, process_count=1)
    assert [_ids(next(other)) for _ in range(3)] != [_ids(x) for x in first[:3]]
    with pytest.raises(ValueError, match="differently configured pipeline"):
        other.set_state(state)


def test_length_grouping_covers_each_feature_once_per_epoch_and_cuts_padding():
    feats = _features(160)
    pad = {}
    for group in (None, 5):
        it = fp.make_train_iterator(feats, batch_size=8, seed=0, max_length=48, seq_pad=SEQ_PAD,
                                    buckets=(8, 16, 24, 32, 40), group_by_length=group, num_epochs=1,
                                    process_index=0, process_count=1)
        batches = list(it)
        assert sorted(i for b in batches for i in _ids(b)) == list(range(160))
        pad[group] = sum(b["input_ids"].size for b in batches)
    assert pad[5] < 0.8 * pad[None]


def test_eval_batches_cover_every_feature_once_with_global_bucket_lengths():
    feats = _features(45)
    pad_feature = {"input_ids": np.array([101, 102], np.int32), "labels": np.full(2, -1, np.int32), "y": np.float32(-1)}
    hosts = [list(fp.make_eval_batches(feats, batch_size=8, max_length=48, seq_pad=SEQ_PAD, pad_feature=pad_feature,
                                       buckets=(16, 32), index_offset=100, process_index=p, process_count=2))
             for p in range(2)]
    assert len(hosts[0]) == len(hosts[1]) == 6  # ceil(45 / 8) global batches
    seen = []
    for b0, b1 in zip(*hosts):
        assert b0["input_ids"].shape == b1["input_ids"].shape == (4, b0["input_ids"].shape[1])  # hosts agree
        for b in (b0, b1):
            for idx, w, y in zip(b["feature_index"], b["weights"], b["y"]):
                if w:
                    assert idx - 100 == int(y)
                    seen.append(int(idx) - 100)
                else:
                    assert idx == -1
    assert sorted(seen) == list(range(45))
    with pytest.raises(ValueError, match="more than max_length"):
        list(fp.make_eval_batches(feats, batch_size=8, max_length=20, seq_pad=SEQ_PAD, pad_feature=pad_feature,
                                  process_index=0, process_count=1))
