"""Packing: bins, segment ids/positions, and packed outputs equal unpacked outputs (1e-5)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbert.data.features.mlm import chunk_documents
from jaxbert.data.packing import pack_rows, packing_efficiency, plan_bins, segment_positions
from jaxbert.models.bert.model import BertConfig, BertModel, segment_positions as jax_segment_positions
from jaxbert.models.mlm_decoders import DecoderConfig, EncoderForPretraining

CFG = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                 add_pooling_layer=False)


def seqs(lengths, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        ids = np.concatenate([[2], rng.integers(5, 64, size=n - 2), [3]]).astype(np.int32)
        words = np.concatenate([[-1], np.arange(n - 2), [-1]]).astype(np.int32)
        out.append((ids, words))
    return out


def test_bins_hold_every_sequence_once_within_capacity():
    lengths = [5, 17, 3, 30, 12, 12, 8, 1, 29, 2]
    for strategy in ("ffd", "sequential"):
        bins = plan_bins(lengths, 32, strategy)
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in b) <= 32 for b in bins)
    assert len(plan_bins(lengths, 32, "ffd")) == 4  # 119 tokens -> 4 rows of 32
    with pytest.raises(ValueError, match="longer than the row length"):
        plan_bins([40], 32)


def test_pack_rows_segments_positions_and_efficiency():
    units = seqs([5, 9, 7, 20])
    rows = pack_rows(units, 24, pad_token_id=0)
    assert rows["input_ids"].shape[1] == 24
    for r in range(rows["input_ids"].shape[0]):
        seg = rows["segment_ids"][r]
        for s in np.unique(seg[seg > 0]):
            where = np.flatnonzero(seg == s)
            assert np.array_equal(rows["position_ids"][r, where], np.arange(len(where)))
            assert rows["input_ids"][r, where[0]] == 2 and rows["input_ids"][r, where[-1]] == 3
        real = rows["word_ids"][r][rows["word_ids"][r] >= 0]
        assert len(np.unique(real)) == len(real)  # word ids unique within the row
    assert packing_efficiency(rows["attention_mask"]) == pytest.approx(41 / (24 * rows["input_ids"].shape[0]))
    unpacked = pack_rows(units, 24, packing=False)
    assert unpacked["input_ids"].shape[0] == 4
    assert packing_efficiency(rows["attention_mask"]) > packing_efficiency(unpacked["attention_mask"])
    np.testing.assert_array_equal(segment_positions(rows["segment_ids"]), rows["position_ids"])
    np.testing.assert_array_equal(np.asarray(jax_segment_positions(jnp.asarray(rows["segment_ids"])))
                                  * (rows["segment_ids"] > 0), rows["position_ids"])


def test_segment_positions_skip_invisible_tokens():
    seg = np.array([[1, 1, 1, 1, 2, 2, 2, 0]])
    vis = np.array([[1, 1, 0, 1, 1, 0, 1, 0]], bool)
    assert segment_positions(seg, vis).tolist() == [[0, 1, 1, 2, 0, 0, 1, 0]]


@pytest.mark.parametrize("decoder", ["none", "blocks"])
def test_packed_outputs_equal_unpacked(decoder):
    units = seqs([5, 9, 7])
    rows = pack_rows(units, 24, pad_token_id=0)
    assert rows["input_ids"].shape[0] == 1
    model = EncoderForPretraining(CFG, BertModel, DecoderConfig(kind=decoder, num_layers=1))
    ids = jnp.asarray(rows["input_ids"])
    params = model.init(jax.random.key(0), ids, jnp.asarray(rows["attention_mask"]),
                        segment_ids=jnp.asarray(rows["segment_ids"]))["params"]
    packed = model.apply({"params": params}, ids, jnp.asarray(rows["attention_mask"]),
                         segment_ids=jnp.asarray(rows["segment_ids"]))  # positions from segment ids
    seg = rows["segment_ids"][0]
    for s, (u_ids, _) in enumerate(units, start=1):
        alone = model.apply({"params": params}, jnp.asarray(u_ids)[None])
        where = np.flatnonzero(seg == s)
        for key in ("last_hidden_state", "logits"):
            np.testing.assert_allclose(np.asarray(packed[key][0, where]), np.asarray(alone[key][0]), atol=1e-5)


def test_chunks_end_at_word_boundaries_and_short_lengths_are_errors():
    ids = np.arange(10, 40, dtype=np.int32)
    words = np.repeat(np.arange(10), 3).astype(np.int32)  # 10 words of 3 tokens
    units = chunk_documents([(ids, words)], 12, cls_id=2, sep_id=3)
    assert all(len(u[0]) <= 12 for u in units)
    assert [len(u[0]) - 2 for u in units] == [9, 9, 9, 3]  # whole words only (3 of 3 tokens fit in 10)
    np.testing.assert_array_equal(np.concatenate([u[0][1:-1] for u in units]), ids)
    with pytest.raises(ValueError, match=r"\[CLS\] and \[SEP\]"):
        chunk_documents([(ids, words)], 2, cls_id=2, sep_id=3)
