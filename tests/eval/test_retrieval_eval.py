"""Retrieval / similarity metrics on hand-computed cases, qrels validation, Lee / word-similarity
loading from the real data pack, linear probe and reranking."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from jaxbert.eval import retrieval as R


def test_ndcg_mrr_recall_by_hand():
    rel = {"d1": 1.0, "d3": 2.0}
    ranked = ["d2", "d3", "d1", "d4"]
    # DCG = 2/log2(3) + 1/log2(4); IDCG = 2/log2(2) + 1/log2(3)
    dcg = 2 / math.log2(3) + 1 / math.log2(4)
    idcg = 2 / 1 + 1 / math.log2(3)
    assert R.ndcg_at_k(ranked, rel, 10) == pytest.approx(dcg / idcg)
    assert R.ndcg_at_k(ranked, rel, 1) == 0.0
    assert R.ndcg_at_k(["d3"], rel, 1) == pytest.approx(1.0)
    assert R.mrr_at_k(ranked, rel, 10) == pytest.approx(0.5)
    assert R.mrr_at_k(ranked, rel, 1) == 0.0
    assert R.recall_at_k(ranked, rel, 2) == pytest.approx(0.5)
    assert R.recall_at_k(ranked, rel, 3) == pytest.approx(1.0)
    assert R.ndcg_at_k(ranked, {}, 10) == 0.0


def test_retrieval_scores_exact_search():
    docs = np.eye(4, dtype=np.float32)
    queries = np.array([[0.1, 0.9, 0.3, 0], [1, 0, 0, 0.5], [0, 0, 0.2, 1]], np.float32)
    # rankings: q0 -> d1, d2, d0, d3 ; q1 -> d0, d3, ... ; q2 -> d3, d2, ...
    qrels = {"q0": {"d2": 1}, "q1": {"d0": 1}, "q2": {"d1": 1}, "qx": {"d0": 1}}
    out = R.retrieval_scores(queries, docs, ["q0", "q1", "q2"], ["d0", "d1", "d2", "d3"], qrels,
                             ndcg_k=(10,), mrr_k=(10,), recall_k=(1, 2))
    q2_rank = 4  # q2: d3 (1.0), d2 (0.2), then d0/d1 tie at 0 -> corpus order: d0 then d1
    assert out["mrr@10"] == pytest.approx((1 / 2 + 1 + 1 / q2_rank) / 3)
    assert out["recall@1"] == pytest.approx(1 / 3)
    assert out["recall@2"] == pytest.approx(2 / 3)
    expected_ndcg = (1 / math.log2(3) + 1 + 1 / math.log2(q2_rank + 1)) / 3
    assert out["ndcg@10"] == pytest.approx(expected_ndcg)
    assert out["num_queries"] == 3
    idx, val = R.exact_search(queries, docs, k=2)
    assert idx.tolist() == [[1, 2], [0, 3], [3, 2]]
    assert val.shape == (3, 2) and val[0, 0] > val[0, 1]


def test_ndcg_at_10_binary_relevance():
    """Binary qrels (the forgetting probe's wordnet_defs nDCG@10): 1 / log2(rank + 1) of the one relevant doc."""
    docs = np.eye(4, dtype=np.float32)
    queries = np.array([[1, 0, 0, 0], [0.1, 0.9, 0, 0], [0, 0, 0.2, 0.1]], np.float32)
    qrels = {"a": {"d0": 1.0}, "b": {"d0": 1.0}, "c": {"d3": 1.0}}
    ids = ["d0", "d1", "d2", "d3"]
    got = R.retrieval_scores(queries, docs, ["a", "b", "c"], ids, qrels, ndcg_k=(10, 1), mrr_k=(), recall_k=())
    # a: rank 1 -> 1; b: rank 2 -> 1/log2(3); c: rank 2 -> 1/log2(3)
    assert got["ndcg@10"] == pytest.approx((1 + 2 / math.log2(3)) / 3)
    assert got["ndcg@1"] == pytest.approx(1 / 3)


def test_similarity_spearman():
    a = np.array([[1, 0], [1, 0], [1, 0], [1, 0]], np.float32)
    b = np.array([[1, 0], [1, 1], [0, 1], [-1, 0.1]], np.float32)
    gold = np.array([4.0, 3.0, 1.0, 0.0])
    out = R.similarity_spearman(a, b, gold)
    assert out["spearman"] == pytest.approx(1.0)
    out = R.similarity_spearman(a, b, gold[::-1].copy())
    assert out["spearman"] == pytest.approx(-1.0)


def test_qrels_naming_a_missing_document(tmp_path):
    (tmp_path / "q.jsonl").write_text(json.dumps({"id": "q1", "text": "x"}) + "\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "d1", "text": "y"}) + "\n")
    (tmp_path / "qrels.jsonl").write_text(json.dumps({"query_id": "q1", "doc_id": "d1"}) + "\n"
                                          + json.dumps({"query_id": "q1", "doc_id": "nope"}) + "\n")
    with pytest.raises(ValueError, match=r"qrels.jsonl line 2: doc_id 'nope' is not in the corpus \(1 documents\)"):
        R.load_retrieval_set(tmp_path / "q.jsonl", tmp_path / "c.jsonl", tmp_path / "qrels.jsonl")
    (tmp_path / "qrels.jsonl").write_text(json.dumps({"query_id": "q9", "doc_id": "d1"}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: query_id 'q9' is not in the queries"):
        R.load_retrieval_set(tmp_path / "q.jsonl", tmp_path / "c.jsonl", tmp_path / "qrels.jsonl")


def test_real_sets_load(data_dir):
    s = R.load_retrieval_set(data_dir / "wordnet_defs/queries_test.jsonl", data_dir / "wordnet_defs/corpus_20k.jsonl",
                             data_dir / "wordnet_defs/qrels_test.jsonl", corpus_limit=100, query_limit=20)
    assert len(s.queries) == 20 and len(s.docs) == 100 + 20
    assert all(d in s.doc_ids for rel in s.qrels.values() for d in rel)
    lee = R.load_lee(data_dir / "lee")
    assert len(lee.texts) == 50 and lee.pairs.shape == (1225, 2)
    simlex = R.load_word_similarity(data_dir / "word_similarity/simlex999.jsonl")
    assert simlex.pairs.shape == (999, 2) and len(simlex.texts) > 500
    # metrics run on any embedding of the 50 documents
    emb = np.random.default_rng(0).standard_normal((len(lee.texts), 4))
    assert -1.0 <= lee.metrics(emb)["spearman"] <= 1.0


def test_linear_probe_and_rerank():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 16)) * 3
    y = rng.integers(0, 3, 300)
    x = centers[y] + rng.standard_normal((300, 16))
    out = R.linear_probe(x[:200], y[:200], x[200:], y[200:], steps=200)
    assert out["accuracy"] > 0.9
    cands = np.array([[0, 1, 2], [2, 1, 0]])
    scores = {0: 0.1, 1: 0.9, 2: 0.5}
    reranked = R.rerank(cands, lambda qi, di: np.array([scores[int(d)] for d in di]))
    assert reranked.tolist() == [[1, 2, 0], [1, 2, 0]]


def test_eval_set_kinds_from_config(tmp_path, data_dir):
    """The task's evaluation sets from their config sections: STS-style pairs and a linear probe."""
    import ml_collections

    from jaxbert.tasks.contrastive import load_eval_set

    (tmp_path / "sts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"s1": "a cat", "s2": "a kitten", "gold": 4.5}, {"s1": "a cat", "s2": "a car", "gold": 1.0},
        {"s1": "a dog", "s2": "a puppy", "gold": 4.0}]))
    spec = ml_collections.ConfigDict({"kind": "pairs", "path": str(tmp_path / "sts.jsonl"),
                                      "text1": "s1", "text2": "s2", "score": "gold"})
    sts = load_eval_set("sts", spec)
    assert sts.texts == ["a cat", "a kitten", "a car", "a dog", "a puppy"]
    assert sts.pairs.tolist() == [[0, 1], [0, 2], [3, 4]]
    spec.score = "missing"
    with pytest.raises(ValueError, match=r"sts.jsonl line 1 \(record 0\): no field 'missing'"):
        load_eval_set("sts", spec)
    with pytest.raises(ValueError, match="evals.x.kind='nope'"):
        load_eval_set("x", ml_collections.ConfigDict({"kind": "nope"}))
    probe = load_eval_set("trec", ml_collections.ConfigDict({
        "kind": "probe", "train": str(data_dir / "trec/train.jsonl"), "test": str(data_dir / "trec/test.jsonl"),
        "label_field": "coarse_label", "train_limit": 50, "test_limit": 20}))
    assert len(probe) == 70 and probe.num_classes <= 6
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "x", "label": "A"}) + "\n")
    (tmp_path / "u.jsonl").write_text(json.dumps({"text": "y", "label": "B"}) + "\n")
    with pytest.raises(ValueError, match=r"labels \['B'\] do not occur in"):
        R.load_probe_set(tmp_path / "t.jsonl", tmp_path / "u.jsonl")
