"""Retrieval and similarity evaluation of embeddings: exact search, nDCG@k, MRR@k, Recall@k,
Spearman against human scores (STS-style pairs, Lee documents, SimLex-999 / WordSim-353), and
a linear probe on frozen embeddings.

Conventions (those of BEIR / sentence-transformers' ``InformationRetrievalEvaluator``):

* scores are cosine similarities of L2-normalised embeddings; exact search scores every
  document (in chunks of queries, so memory is ``chunk x num_docs``), ties broken by corpus order;
* ``qrels[query_id] = {doc_id: gain}``; documents with gain <= 0 are not relevant;
* nDCG@k = DCG@k / IDCG@k with ``DCG = sum_r gain_r / log2(r + 1)`` (rank ``r`` from 1) and
  IDCG the DCG of the ideal ordering of the query's gains; MRR@k = ``1 / rank`` of the first
  relevant document within the top k (0 if none); Recall@k = relevant found in the top k /
  all relevant. Each is averaged over the queries that have at least one relevant document.

Evaluation sets (:class:`RetrievalSet`, :class:`SimilaritySet`) hold the texts to embed and
compute their metrics from the embeddings, so a training task embeds ``set.texts`` and calls
``set.metrics(embeddings)`` (see :mod:`jaxbert.tasks.contrastive`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxbert.data.sources import read_jsonl_lines
from jaxbert.eval.regression import pearson, spearman

__all__ = ["RetrievalSet", "SimilaritySet", "exact_search", "retrieval_scores", "ndcg_at_k", "mrr_at_k",
           "recall_at_k", "similarity_spearman", "load_qrels", "load_retrieval_set", "load_lee",
           "load_word_similarity", "ProbeSet", "load_probe_set", "linear_probe", "rerank", "cross_encoder_scorer"]


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def exact_search(query_emb: np.ndarray, doc_emb: np.ndarray, k: int = 10, chunk: int = 1024,
                 normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` documents per query by cosine (dot product if ``normalize=False``), exact.

    Returns ``(indices int64 [q, k], scores float32 [q, k])``, best first; equal scores keep
    corpus order. ``k`` is capped at the number of documents.
    """
    q = _normalize(query_emb) if normalize else np.asarray(query_emb, np.float32)
    d = _normalize(doc_emb) if normalize else np.asarray(doc_emb, np.float32)
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1]:
        raise ValueError(f"exact_search expects [q, dim] and [n, dim] embeddings, got {q.shape} and {d.shape}")
    k = min(int(k), d.shape[0])
    idx = np.zeros((q.shape[0], k), np.int64)
    val = np.zeros((q.shape[0], k), np.float32)
    for s in range(0, q.shape[0], chunk):
        scores = q[s:s + chunk] @ d.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        idx[s:s + chunk] = top
        val[s:s + chunk] = np.take_along_axis(scores, top, axis=1)
    return idx, val


def _gains(ranked_doc_ids: Sequence[str], rel: Mapping[str, float]) -> np.ndarray:
    return np.asarray([max(float(rel.get(d, 0.0)), 0.0) for d in ranked_doc_ids], np.float64)


def ndcg_at_k(ranked_doc_ids: Sequence[str], rel: Mapping[str, float], k: int = 10) -> float:
    """nDCG@k of one ranking (graded gains from ``rel``; 0 when nothing is relevant)."""
    gains = _gains(list(ranked_doc_ids)[:k], rel)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float(np.sum(gains * discounts[:len(gains)]))
    ideal = np.sort(np.asarray([g for g in rel.values() if g > 0], np.float64))[::-1][:k]
    idcg = float(np.sum(ideal * discounts[:len(ideal)]))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at_k(ranked_doc_ids: Sequence[str], rel: Mapping[str, float], k: int = 10) -> float:
    """Reciprocal rank of the first relevant document in the top ``k`` (0 if none)."""
    for r, d in enumerate(list(ranked_doc_ids)[:k], start=1):
        if rel.get(d, 0) > 0:
            return 1.0 / r
    return 0.0


def recall_at_k(ranked_doc_ids: Sequence[str], rel: Mapping[str, float], k: int = 10) -> float:
    """Fraction of the relevant documents found in the top ``k``."""
    relevant = {d for d, g in rel.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant & set(list(ranked_doc_ids)[:k])) / len(relevant)


def retrieval_scores(query_emb: np.ndarray, doc_emb: np.ndarray, query_ids: Sequence[str],
                     doc_ids: Sequence[str], qrels: Mapping[str, Mapping[str, float]],
                     ndcg_k: Sequence[int] = (10,), mrr_k: Sequence[int] = (10,),
                     recall_k: Sequence[int] = (1, 10, 100), chunk: int = 1024) -> dict[str, float]:
    """``{"ndcg@10", "mrr@10", "recall@1", ...}`` of exact cosine search, averaged over the queries
    with at least one relevant document (``num_queries`` of them)."""
    if len(query_ids) != len(query_emb) or len(doc_ids) != len(doc_emb):
        raise ValueError(f"{len(query_ids)} query ids for {len(query_emb)} embeddings, "
                         f"{len(doc_ids)} doc ids for {len(doc_emb)} embeddings")
    kmax = max([*ndcg_k, *mrr_k, *recall_k])
    keep = [i for i, q in enumerate(query_ids) if any(g > 0 for g in qrels.get(q, {}).values())]
    if not keep:
        raise ValueError("no query has a relevant document in qrels")
    top, _ = exact_search(np.asarray(query_emb)[keep], doc_emb, kmax, chunk)
    doc_ids = np.asarray(doc_ids)
    out = {f"ndcg@{k}": 0.0 for k in ndcg_k} | {f"mrr@{k}": 0.0 for k in mrr_k} | {f"recall@{k}": 0.0 for k in recall_k}
    for row, qi in zip(top, keep):
        ranked = doc_ids[row].tolist()
        rel = qrels[query_ids[qi]]
        for k in ndcg_k:
            out[f"ndcg@{k}"] += ndcg_at_k(ranked, rel, k)
        for k in mrr_k:
            out[f"mrr@{k}"] += mrr_at_k(ranked, rel, k)
        for k in recall_k:
            out[f"recall@{k}"] += recall_at_k(ranked, rel, k)
    out = {k: v / len(keep) for k, v in out.items()}
    out["num_queries"] = len(keep)
    return out


def similarity_spearman(emb_a: np.ndarray, emb_b: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Spearman (and Pearson) between row-wise cosine of ``emb_a``/``emb_b`` and gold ``scores``."""
    cos = np.sum(_normalize(emb_a) * _normalize(emb_b), axis=-1)
    return {"spearman": spearman(cos, gold), "pearson": pearson(cos, gold)}


# ----------------------------------------------------------------------------- data


def load_qrels(path: str | os.PathLike, doc_ids: Sequence[str] | set[str] | None = None,
               query_ids: Sequence[str] | set[str] | None = None) -> dict[str, dict[str, float]]:
    """``{query_id: {doc_id: score}}`` from JSONL rows ``{"query_id", "doc_id", "score"}``.

    With ``doc_ids`` / ``query_ids`` given, a row naming a document not in the corpus (or a
    query not in the query set) is an error that names the file and line.
    """
    docs = None if doc_ids is None else set(doc_ids)
    queries = None if query_ids is None else set(query_ids)
    out: dict[str, dict[str, float]] = {}
    for lineno, r in read_jsonl_lines(Path(path)):
        for key in ("query_id", "doc_id"):
            if key not in r:
                raise ValueError(f"{path} line {lineno}: no field {key!r} (record has {sorted(r)})")
        q, d = str(r["query_id"]), str(r["doc_id"])
        if docs is not None and d not in docs:
            raise ValueError(f"{path} line {lineno}: doc_id {d!r} is not in the corpus ({len(docs)} documents)")
        if queries is not None and q not in queries:
            raise ValueError(f"{path} line {lineno}: query_id {q!r} is not in the queries ({len(queries)} queries)")
        out.setdefault(q, {})[d] = float(r.get("score", 1))
    return out


@dataclasses.dataclass
class RetrievalSet:
    """Queries, corpus and qrels; ``texts`` = queries then documents."""

    query_ids: list[str]
    queries: list[str]
    doc_ids: list[str]
    docs: list[str]
    qrels: dict[str, dict[str, float]]
    ndcg_k: tuple[int, ...] = (10,)
    mrr_k: tuple[int, ...] = (10,)
    recall_k: tuple[int, ...] = (1, 10, 100)
    name: str = "retrieval"

    @property
    def texts(self) -> list[str]:
        return self.queries + self.docs

    def __len__(self) -> int:
        return len(self.queries) + len(self.docs)

    def metrics(self, embeddings: np.ndarray) -> dict[str, float]:
        nq = len(self.queries)
        return retrieval_scores(embeddings[:nq], embeddings[nq:], self.query_ids, self.doc_ids, self.qrels,
                                self.ndcg_k, self.mrr_k, self.recall_k)


def load_retrieval_set(queries_path: str | os.PathLike, corpus_path: str | os.PathLike,
                       qrels_path: str | os.PathLike, *, corpus_limit: int | None = None,
                       query_limit: int | None = None, **kwargs: Any) -> RetrievalSet:
    """Read a BEIR-style set (``{"id", "text"}`` queries and corpus, qrels rows).

    A qrel naming a document absent from the corpus file is an error (file and line).
    ``query_limit`` keeps the first N queries; ``corpus_limit`` keeps the relevant documents of
    the kept queries plus the first ``corpus_limit`` others (quick runs).
    """
    queries = [r for _, r in read_jsonl_lines(Path(queries_path))]
    corpus = [r for _, r in read_jsonl_lines(Path(corpus_path))]
    qrels = load_qrels(qrels_path, doc_ids=[str(d["id"]) for d in corpus],
                       query_ids=[str(q["id"]) for q in queries])
    queries = [q for q in queries if str(q["id"]) in qrels]
    if query_limit:
        queries = queries[:query_limit]
    qrels = {str(q["id"]): qrels[str(q["id"])] for q in queries}
    if corpus_limit is not None:
        relevant = set().union(*(set(r) for r in qrels.values()))
        others = [d for d in corpus if str(d["id"]) not in relevant][:corpus_limit]
        corpus = [d for d in corpus if str(d["id"]) in relevant] + others
    return RetrievalSet([str(q["id"]) for q in queries], [q["text"] for q in queries],
                        [str(d["id"]) for d in corpus], [d["text"] for d in corpus], qrels, **kwargs)


@dataclasses.dataclass
class SimilaritySet:
    """Texts and scored pairs ``(a, b)`` of text indices: Spearman of cosine vs gold scores."""

    texts: list[str]
    pairs: np.ndarray  # [n, 2] int
    scores: np.ndarray  # [n]
    name: str = "similarity"

    def __len__(self) -> int:
        return len(self.texts)

    def metrics(self, embeddings: np.ndarray) -> dict[str, float]:
        out = similarity_spearman(embeddings[self.pairs[:, 0]], embeddings[self.pairs[:, 1]], self.scores)
        out["num_pairs"] = int(len(self.pairs))
        return out


def load_lee(folder: str | os.PathLike) -> SimilaritySet:
    """Lee et al. (2005): 50 documents, 1,225 human-rated pairs (``lee/docs.jsonl``, ``similarity.jsonl``)."""
    folder = Path(folder)
    docs = sorted((r for _, r in read_jsonl_lines(folder / "docs.jsonl")), key=lambda d: int(d["id"]))
    ids = {int(d["id"]): i for i, d in enumerate(docs)}
    pairs, scores = [], []
    for lineno, r in read_jsonl_lines(folder / "similarity.jsonl"):
        for key in ("a", "b"):
            if int(r[key]) not in ids:
                raise ValueError(f"{folder / 'similarity.jsonl'} line {lineno}: document {r[key]} is not in docs.jsonl")
        pairs.append((ids[int(r["a"])], ids[int(r["b"])]))
        scores.append(float(r["score"]))
    return SimilaritySet([d["text"] for d in docs], np.asarray(pairs, np.int64), np.asarray(scores), name="lee")


def load_word_similarity(path: str | os.PathLike) -> SimilaritySet:
    """SimLex-999 / WordSim-353 rows ``{"word1", "word2", "score"}``: texts are the distinct words."""
    rows = read_jsonl_lines(Path(path))
    words: dict[str, int] = {}
    pairs, scores = [], []
    for lineno, r in rows:
        for key in ("word1", "word2", "score"):
            if key not in r:
                raise ValueError(f"{path} line {lineno}: no field {key!r} (record has {sorted(r)})")
        a, b = (words.setdefault(r[k], len(words)) for k in ("word1", "word2"))
        pairs.append((a, b))
        scores.append(float(r["score"]))
    return SimilaritySet(list(words), np.asarray(pairs, np.int64), np.asarray(scores), name=Path(path).stem)


@dataclasses.dataclass
class ProbeSet:
    """A classification set for a linear probe: ``texts`` = train texts then test texts."""

    train_texts: list[str]
    train_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray
    num_classes: int
    name: str = "probe"

    @property
    def texts(self) -> list[str]:
        return self.train_texts + self.test_texts

    def __len__(self) -> int:
        return len(self.train_texts) + len(self.test_texts)

    def metrics(self, embeddings: np.ndarray) -> dict[str, float]:
        n = len(self.train_texts)
        return linear_probe(embeddings[:n], self.train_labels, embeddings[n:], self.test_labels,
                            num_classes=self.num_classes)


def load_probe_set(train_path: str | os.PathLike, test_path: str | os.PathLike, *, text_field: str = "text",
                   label_field: str = "label", train_limit: int | None = None, test_limit: int | None = None,
                   name: str = "probe") -> ProbeSet:
    """Labelled JSONL train / test files (labels str or int; ids from the sorted train labels)."""
    def read(path, limit):
        rows = read_jsonl_lines(Path(path))[:limit] if limit else read_jsonl_lines(Path(path))
        for lineno, r in rows:
            if text_field not in r or label_field not in r:
                raise ValueError(f"{path} line {lineno}: needs fields {text_field!r} and {label_field!r} "
                                 f"(record has {sorted(r)})")
        return [r[text_field] for _, r in rows], [r[label_field] for _, r in rows]

    tx, ty = read(train_path, train_limit)
    sx, sy = read(test_path, test_limit)
    labels = sorted(set(ty))
    index = {l: i for i, l in enumerate(labels)}
    unknown = sorted({str(l) for l in sy if l not in index})
    if unknown:
        raise ValueError(f"{test_path}: labels {unknown} do not occur in {train_path}")
    return ProbeSet(tx, np.asarray([index[l] for l in ty]), sx, np.asarray([index[l] for l in sy]), len(labels), name)


# ----------------------------------------------------------------------------- probe and reranking


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                 num_classes: int | None = None, l2: float = 1e-3, steps: int = 300, lr: float = 0.1,
                 seed: int = 0) -> dict[str, float]:
    """Multinomial logistic regression on frozen (normalised) embeddings: test accuracy / macro-F1.

    Full-batch Adam on softmax cross-entropy + ``l2`` weight decay (deterministic; float32).
    """
    import jax
    import jax.numpy as jnp
    import optax

    from jaxbert.eval.metrics import accuracy_and_f1

    x, xt = _normalize(train_x), _normalize(test_x)
    y, yt = np.asarray(train_y, np.int32), np.asarray(test_y, np.int32)
    c = int(num_classes or max(y.max(), yt.max()) + 1)
    params = {"w": jnp.zeros((x.shape[1], c)), "b": jnp.zeros((c,))}
    tx = optax.adam(lr)
    opt = tx.init(params)

    def loss(p):
        logits = x @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + l2 * jnp.sum(p["w"] ** 2)

    @jax.jit
    def step(p, o):
        g = jax.grad(loss)(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    for _ in range(steps):
        params, opt = step(params, opt)
    pred = np.asarray(jnp.argmax(xt @ params["w"] + params["b"], -1))
    return accuracy_and_f1(pred, yt, c)


def rerank(candidates: np.ndarray, score_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
           query_index: np.ndarray | None = None) -> np.ndarray:
    """Two-stage search, second stage: reorder each query's candidate docs by ``score_fn``.

    ``candidates [q, k]`` doc indices from the first stage (e.g. :func:`exact_search`);
    ``score_fn(query_indices [n], doc_indices [n]) -> scores [n]`` (e.g. a cross-encoder over
    the text pairs). Returns the candidates reordered best first (stable for ties).
    """
    q, k = candidates.shape
    qi = np.repeat(np.arange(q) if query_index is None else np.asarray(query_index), k)
    scores = np.asarray(score_fn(qi, candidates.reshape(-1)), np.float64).reshape(q, k)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(candidates, order, axis=1)


def cross_encoder_scorer(model: Any, params: Any, tokenizer: Any, queries: Sequence[str], docs: Sequence[str], *,
                         max_length: int = 128, batch_size: int = 64, positive_label: int = 1
                         ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A ``score_fn`` for :func:`rerank` from a cross-encoder (a sequence-classification model on
    the ``(query, doc)`` text pair): the logit of ``positive_label`` minus the log-sum-exp of the
    others (the log-odds; the single logit when the head has one output).

    ``model`` is a jaxbert task model returning ``{"logits": [b, c]}`` (e.g. from
    ``load_pretrained(dir, task="sequence_classification")`` or the classification task).
    """
    import jax
    import jax.numpy as jnp

    from jaxbert.data.tokenization import encode_batch

    @jax.jit
    def logits_fn(p, ids, mask, types):
        logits = model.apply({"params": p}, ids, mask, types)["logits"].astype(jnp.float32)
        if logits.shape[-1] == 1:
            return logits[:, 0]
        others = jnp.where(jnp.arange(logits.shape[-1]) == positive_label, -jnp.inf, logits)
        return logits[:, positive_label] - jax.nn.logsumexp(others, axis=-1)

    def score_fn(query_index: np.ndarray, doc_index: np.ndarray) -> np.ndarray:
        out = np.zeros(len(query_index), np.float32)
        for s in range(0, len(query_index), batch_size):
            qi, di = query_index[s:s + batch_size], doc_index[s:s + batch_size]
            enc = encode_batch(tokenizer, [queries[i] for i in qi], [docs[j] for j in di], max_length=max_length)
            rows = len(qi)
            pad = lambda a: np.pad(a, ((0, batch_size - rows), (0, 0)))  # noqa: E731  (one shape: one compile)
            out[s:s + rows] = np.asarray(logits_fn(params, *(pad(enc[k]) for k in
                                                             ("input_ids", "attention_mask", "token_type_ids"))))[:rows]
        return out

    return score_fn

