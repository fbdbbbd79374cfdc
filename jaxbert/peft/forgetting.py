"""How much general ability an encoder keeps after task fine-tuning (catastrophic forgetting).

Two zero-shot probes on mean-pooled, L2-normalised encoder outputs (the sentence-transformers
recipe of all-MiniLM-L6-v2), run before and after fine-tuning:

* **wordnet_defs retrieval**: the 1,000 test queries (WordNet example sentences) against
  ``corpus_20k`` (synset definitions), exact cosine search, nDCG@10 with the single relevant
  document per query (binary gains: ``1 / log2(rank + 1)`` if it is in the top 10, else 0;
  :func:`jaxbert.eval.retrieval.retrieval_scores`).
  ``corpus_limit`` keeps the relevant documents plus the first ``corpus_limit`` others (quick runs).
* **lee document similarity**: Spearman correlation between the cosine similarity of the 50
  documents' embeddings and the 1,225 human similarity ratings (:func:`jaxbert.eval.regression.spearman`).

:func:`general_scores` takes the encoder params (the ``encoder`` subtree of a task model, e.g.
from :meth:`jaxbert.peft.base.PeftMethod.merge`) and its config.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from jaxbert.data.tokenization import encode_batch
from jaxbert.eval.regression import spearman
from jaxbert.eval.retrieval import retrieval_scores

LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512)


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclasses.dataclass
class ForgettingData:
    queries: list[str]
    query_ids: list[str]
    docs: list[str]
    doc_ids: list[str]
    qrels: dict[str, set[str]]
    lee_docs: list[str]
    lee_pairs: np.ndarray  # [n, 2] int
    lee_scores: np.ndarray  # [n]


def load_data(data_dir: str | Path, corpus_limit: int | None = None, query_limit: int | None = None) -> ForgettingData:
    """Read the wordnet_defs test split and the lee set from the data pack at ``data_dir``."""
    root = Path(data_dir)
    wn = root / "wordnet_defs"
    queries = _read_jsonl(wn / "queries_test.jsonl")
    if query_limit:
        queries = queries[:query_limit]
    qrels: dict[str, set[str]] = {}
    for r in _read_jsonl(wn / "qrels_test.jsonl"):
        if int(r.get("score", 1)) > 0:
            qrels.setdefault(r["query_id"], set()).add(r["doc_id"])
    queries = [q for q in queries if q["id"] in qrels]
    corpus = _read_jsonl(wn / "corpus_20k.jsonl")
    if corpus_limit is not None:
        relevant = set().union(*(qrels[q["id"]] for q in queries))
        others = [d for d in corpus if d["id"] not in relevant][:corpus_limit]
        corpus = [d for d in corpus if d["id"] in relevant] + others
    lee = root / "lee"
    docs = sorted(_read_jsonl(lee / "docs.jsonl"), key=lambda d: int(d["id"]))
    sim = _read_jsonl(lee / "similarity.jsonl")
    return ForgettingData(queries=[q["text"] for q in queries], query_ids=[q["id"] for q in queries],
                          docs=[d["text"] for d in corpus], doc_ids=[d["id"] for d in corpus], qrels=qrels,
                          lee_docs=[d["text"] for d in docs],
                          lee_pairs=np.array([[int(r["a"]), int(r["b"])] for r in sim], np.int64),
                          lee_scores=np.array([float(r["score"]) for r in sim], np.float64))


@functools.lru_cache(maxsize=8)
def _embed_fn(cfg: Any):
    """Jitted ``(params, ids, mask, types) -> normalised mean-pooled [b, hidden]`` for a BERT config."""
    from jaxbert.models.bert.model import BertModel
    from jaxbert.models.pooling import l2_normalize, pool

    model = BertModel(cfg)

    @jax.jit
    def embed(p, ids, mask, types):
        h = model.apply({"params": p}, ids, mask, types).last_hidden_state
        return l2_normalize(pool(h, mask, "mean"))
    return embed


def encode(encoder_params: Any, model_config: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int = 128,
           batch_size: int = 128) -> np.ndarray:
    """Mean-pooled, L2-normalised embeddings ``[n, hidden]`` (float32) of ``texts``.

    Texts are sorted by length and padded to length buckets, so few shapes are compiled.
    """
    cfg = model_config.replace(extensions=(), add_pooling_layer=False, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0)
    embed = _embed_fn(cfg)
    params = {k: v for k, v in encoder_params.items() if k != "pooler"}
    lengths = [len(t) for t in texts]
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(texts), cfg.hidden_size), np.float32)
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        enc = encode_batch(tokenizer, [texts[i] for i in idx], max_length=max_length, pad_to="longest")
        length = next(b for b in LENGTH_BUCKETS + (max_length,) if b >= enc["input_ids"].shape[1])
        rows = len(idx)
        pad = lambda a: np.pad(a, ((0, batch_size - rows), (0, length - a.shape[1])))
        e = embed(params, *(pad(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids")))
        out[idx] = np.asarray(e)[:rows]
    return out


def lee_spearman(doc_emb: np.ndarray, pairs: np.ndarray, scores: np.ndarray) -> float:
    """Spearman of the pairs' cosine similarity (embeddings already normalised) against the ratings."""
    cos = np.sum(doc_emb[pairs[:, 0]] * doc_emb[pairs[:, 1]], axis=1)
    return spearman(cos, scores)


def general_scores(encoder_params: Any, model_config: Any, tokenizer: Any, data: ForgettingData,
                   max_length: int = 128) -> dict[str, float]:
    """``{'wordnet_ndcg@10': ..., 'lee_spearman': ...}`` of an encoder."""
    q = encode(encoder_params, model_config, tokenizer, data.queries, max_length=max_length)
    d = encode(encoder_params, model_config, tokenizer, data.docs, max_length=max_length)
    lee = encode(encoder_params, model_config, tokenizer, data.lee_docs, max_length=256)
    qrels = {qid: dict.fromkeys(docs, 1.0) for qid, docs in data.qrels.items()}  # binary gains
    ndcg = retrieval_scores(q, d, data.query_ids, data.doc_ids, qrels, ndcg_k=(10,), mrr_k=(), recall_k=())
    return {"wordnet_ndcg@10": ndcg["ndcg@10"],
            "lee_spearman": lee_spearman(lee, data.lee_pairs, data.lee_scores)}
