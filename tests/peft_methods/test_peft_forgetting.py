"""The forgetting probes: Spearman, and bucketed/sorted encoding equal to one-by-one encoding."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxbert.peft.forgetting import encode, lee_spearman, load_data


def test_lee_spearman_is_rank_correlation():
    emb = np.array([[1, 0], [0.8, 0.6], [0, 1]], np.float32)
    pairs = np.array([[0, 1], [0, 2], [1, 2]])
    assert lee_spearman(emb, pairs, np.array([0.9, 0.1, 0.5])) == pytest.approx(1.0)
    assert lee_spearman(emb, pairs, np.array([0.1, 0.9, 0.5])) == pytest.approx(-1.0)


def test_encode_matches_one_by_one(minilm_dir):
    from jaxbert.data.tokenization import load_tokenizer
    from jaxbert.models.bert.model import BertModel
    from jaxbert.models import registry
    from jaxbert.models.pooling import l2_normalize, pool

    tok = load_tokenizer(minilm_dir)
    cfg, _ = registry.get("bert-tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertModel(cfg)
    params = nn.unbox(model.init(jax.random.key(0), np.ones((1, 4), np.int32))["params"])
    texts = ["a dog", "the quick brown fox jumps over the lazy dog again and again", "cat", "two words here"]
    got = encode(params, cfg, tok, texts, max_length=32, batch_size=3)
    for i, t in enumerate(texts):
        ids = np.array([tok(t)["input_ids"]], np.int32)
        h = model.apply({"params": params}, ids, np.ones_like(ids)).last_hidden_state
        np.testing.assert_allclose(got[i], np.asarray(l2_normalize(pool(h, np.ones_like(ids))))[0], atol=1e-5)


def test_load_data_shapes(data_dir):
    d = load_data(data_dir, corpus_limit=10, query_limit=20)
    assert len(d.queries) == 20 and len(d.docs) >= 10 and len(d.lee_docs) == 50
    assert d.lee_pairs.shape == (1225, 2) and all(d.qrels[q] <= set(d.doc_ids) for q in d.query_ids)
