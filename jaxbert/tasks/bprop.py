"""B-PROP representative-words prediction (Ma et al. 2021, arXiv 2104.09791), trained alongside MLM.

The recipe, per document ``d`` (a passage of at most ``bprop.max_length`` tokens):

1. **Document term distribution** from a BERT teacher: the last layer's attention from
   ``[CLS]`` to every token, averaged over heads, summed over the tokens of each word and over
   repeated occurrences of a word, normalised: ``p(w|d)``.
2. **Random (corpus) distribution** ``p(w|C)``: word frequencies over the training corpus.
3. **Contrastive term distribution** (divergence from randomness): each word's pointwise
   contribution to ``KL(p(.|d) || p(.|C))``, ``s(w) = p(w|d) log(p(w|d) / p(w|C))``; words with
   ``s(w) > 0`` form ``q(w|d) ∝ s(w)^(1/T)`` (``T`` = ``bprop.temperature``).
4. **Pairs of word sets**: a size ``k ~ Poisson(set_size_mean)`` (clipped to [1, 8]); two sets of
   ``k`` distinct words drawn from ``q(.|d)``; the set with the higher likelihood
   ``sum_w log((1 - a) q(w|d) + a p(w|C))`` (``a = 0.1``) is the positive.
5. **ROP loss**: the model scores ``[CLS] set [SEP] d [SEP]`` from the ``[CLS]`` state
   (``rop_head``) and is trained with the pairwise hinge ``max(0, 1 - s(S+, d) + s(S-, d))``
   (:func:`jaxbert.objectives.mlm.pairwise_hinge_loss`), added to the MLM loss.

This module is the MLM task's B-PROP data side: the teacher (steps 1-4) and the iterator that
adds the precomputed pairs to MLM batches; the loss is a pure function in :mod:`jaxbert.objectives.mlm`.

Simplifications (written down as the issue asks): the teacher is a fixed HF checkpoint
(``mlm.bprop.teacher``, default ``model.init_from``) read once before training, so the pairs
are precomputed, not refreshed; both sets of a pair have the same size (PROP draws sizes per
set), so the likelihood compares words, not lengths; a small English stop-word list and
words without a letter or digit are excluded from the distributions; the MLM loss runs on
the ordinary packed rows rather than on the ROP inputs; step 3's exponent form (instead of a
softmax) is our reading of "contrastive term distribution".
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

STOPWORDS = frozenset("""a an the of to in and or for on at by with from as is are was were be been being it its
this that these those he she they we you i me him her his hers their them our us your my not no nor but if then so
than there here which who whom whose what when where why how all any some such into over under about after before
up down out off again further once can will would shall should may might must do does did done have has had having
also only just very more most other same own too each few both s t""".split())

MAX_SET_SIZE = 8


# ----------------------------------------------------------------------------- teacher attention


def cls_attention(layer_params: dict, hidden_in: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Attention from position 0 of one BERT layer, averaged over heads. ``[b, l, e] -> [b, l]``.

    ``layer_params`` is ``params["layer_{i}"]`` of a :class:`jaxbert.models.bert.BertModel`
    (kernels ``[embed, heads, head_dim]``), ``hidden_in`` that layer's input.
    """
    att = layer_params["attention"]
    q = jnp.einsum("be,ehd->bhd", hidden_in[:, 0], att["query"]["kernel"]) + att["query"]["bias"]
    k = jnp.einsum("ble,ehd->blhd", hidden_in, att["key"]["kernel"]) + att["key"]["bias"]
    logits = jnp.einsum("bhd,blhd->bhl", q, k) / jnp.sqrt(jnp.float32(q.shape[-1]))
    logits = jnp.where(attention_mask[:, None, :].astype(bool), logits, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1).mean(axis=1)


def teacher_cls_attention(model: Any, params: dict, input_ids: np.ndarray, attention_mask: np.ndarray,
                          batch_size: int = 64) -> np.ndarray:
    """Last-layer ``[CLS]`` attention of a BertModel ``model`` (task "base") over rows ``[n, l]``."""
    n_layers = model.config.num_hidden_layers
    last = params[f"layer_{n_layers - 1}"]

    @jax.jit
    def run(ids, mask):
        out = model.apply({"params": params}, ids, mask, output_hidden_states=True)
        return cls_attention(last, out.hidden_states[-2], mask)

    outs = []
    for i in range(0, len(input_ids), batch_size):
        ids, mask = input_ids[i:i + batch_size], attention_mask[i:i + batch_size]
        pad = batch_size - len(ids)
        if pad:
            ids = np.concatenate([ids, np.zeros((pad, ids.shape[1]), ids.dtype)])
            mask = np.concatenate([mask, np.zeros((pad, mask.shape[1]), mask.dtype)])
            mask[-pad:, 0] = 1
        outs.append(np.asarray(run(ids, mask))[: batch_size - pad])
    return np.concatenate(outs)


# ----------------------------------------------------------------------------- distributions


def words_of(token_ids: np.ndarray, word_ids: np.ndarray) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """``[(word tokens, token positions), ...]`` for the words of one row."""
    from jaxbert.data.masking import word_spans
    starts, ends = word_spans(word_ids)
    return [(tuple(int(t) for t in token_ids[s:e]), np.arange(s, e)) for s, e in zip(starts, ends)]


def corpus_distribution(rows: Iterable[tuple[np.ndarray, np.ndarray]], keep=lambda w: True) -> dict:
    """``p(w|C)``: word frequencies over ``(token_ids, word_ids)`` rows."""
    c: Counter = Counter()
    for ids, words in rows:
        c.update(w for w, _ in words_of(ids, words) if keep(w))
    total = sum(c.values())
    if total == 0:
        raise ValueError("B-PROP needs a non-empty corpus to estimate the random term distribution")
    return {w: n / total for w, n in c.items()}


def document_distribution(token_ids: np.ndarray, word_ids: np.ndarray, attention: np.ndarray,
                          keep=lambda w: True) -> dict:
    """``p(w|d)`` from per-token teacher attention: summed per word and per word type, normalised."""
    c: dict = {}
    for w, pos in words_of(token_ids, word_ids):
        if keep(w):
            c[w] = c.get(w, 0.0) + float(np.sum(attention[pos]))
    total = sum(c.values())
    return {w: v / total for w, v in c.items()} if total > 0 else {}


def contrastive_distribution(p_doc: dict, p_corpus: dict, temperature: float = 1.0) -> dict:
    """``q(w|d) ∝ s(w)^(1/T)`` over words with ``s(w) = p(w|d) log(p(w|d)/p(w|C)) > 0``."""
    floor = min(p_corpus.values()) if p_corpus else 1e-9
    s = {w: p * math.log(p / p_corpus.get(w, floor)) for w, p in p_doc.items() if p > 0}
    s = {w: v ** (1.0 / temperature) for w, v in s.items() if v > 0}
    total = sum(s.values())
    return {w: v / total for w, v in s.items()} if total > 0 else {}


def sample_pair(q: dict, p_corpus: dict, rng: np.random.Generator, set_size_mean: float = 3.0,
                alpha: float = 0.1) -> tuple[list, list] | None:
    """Two equal-size word sets from ``q``; returns ``(positive, negative)`` by smoothed likelihood."""
    words = list(q)
    if len(words) < 2:
        return None
    probs = np.asarray([q[w] for w in words])
    k = int(np.clip(rng.poisson(set_size_mean), 1, min(MAX_SET_SIZE, len(words) - 1)))
    a = rng.choice(len(words), size=k, replace=False, p=probs)
    b = rng.choice(len(words), size=k, replace=False, p=probs)
    floor = min(p_corpus.values())
    ll = lambda idx: sum(math.log((1 - alpha) * probs[i] + alpha * p_corpus.get(words[i], floor)) for i in idx)
    la, lb = ll(a), ll(b)
    if set(a.tolist()) == set(b.tolist()) or la == lb:
        return None
    pos, neg = (a, b) if la > lb else (b, a)
    return [words[i] for i in pos], [words[i] for i in neg]


def pair_inputs(word_set: Sequence[tuple[int, ...]], passage: np.ndarray, cls_id: int, sep_id: int,
                pad_id: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[CLS] set [SEP] passage [SEP]`` -> ``(input_ids, attention_mask, token_type_ids)`` of ``length``."""
    first = [t for w in word_set for t in w]
    room = length - len(first) - 3
    body = list(passage[:max(room, 0)])
    ids = [cls_id] + first + [sep_id] + body + [sep_id]
    types = [0] * (len(first) + 2) + [1] * (len(body) + 1)
    out_ids = np.full(length, pad_id, np.int32)
    out_types = np.zeros(length, np.int32)
    mask = np.zeros(length, np.int32)
    n = min(len(ids), length)
    out_ids[:n], out_types[:n], mask[:n] = ids[:n], types[:n], 1
    return out_ids, mask, out_types


# ----------------------------------------------------------------------------- task glue


def build_rop_pairs(passages: Sequence[tuple[np.ndarray, np.ndarray]], attention: Sequence[np.ndarray],
                    p_corpus: dict, tokenizer: Any, *, pairs_per_document: int, set_size_mean: float,
                    temperature: float, length: int, seed: int, keep) -> dict[str, np.ndarray]:
    """ROP training pairs as arrays ``rop_{pos,neg}_{input_ids,attention_mask,token_type_ids} [P, length]``."""
    rng = np.random.default_rng(seed)
    pad = tokenizer.pad_token_id or 0
    cols: dict[str, list] = {f"rop_{s}_{k}": [] for s in ("pos", "neg")
                            for k in ("input_ids", "attention_mask", "token_type_ids")}
    for (ids, words), att in zip(passages, attention):
        q = contrastive_distribution(document_distribution(ids, words, att, keep), p_corpus, temperature)
        body = ids[words >= 0] if (words >= 0).any() else ids
        for _ in range(pairs_per_document):
            pair = sample_pair(q, p_corpus, rng, set_size_mean)
            if pair is None:
                continue
            for side, ws in zip(("pos", "neg"), pair):
                x, m, t = pair_inputs(ws, body, tokenizer.cls_token_id, tokenizer.sep_token_id, pad, length)
                cols[f"rop_{side}_input_ids"].append(x)
                cols[f"rop_{side}_attention_mask"].append(m)
                cols[f"rop_{side}_token_type_ids"].append(t)
    if not cols["rop_pos_input_ids"]:
        raise ValueError("B-PROP produced no training pairs (documents too short or no contrastive terms)")
    return {k: np.stack(v) for k, v in cols.items()}


def build_rop_pairs_for_task(task: Any, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Read the teacher, build passages from the train texts and precompute the ROP pairs."""
    from jaxbert.data.features.mlm import chunk_documents
    from jaxbert.data.tokenization import tokenize_with_words
    from jaxbert.tasks.base import Task, resolve_model_path

    cfg = task.config
    b = cfg.mlm.bprop
    teacher_dir = b.get("teacher") or cfg.model.get("init_from")
    if not teacher_dir:
        raise ValueError("B-PROP bootstraps from a pretrained BERT: set mlm.bprop.teacher (HF dir) or model.init_from")
    teacher = Task.load_checkpoint(resolve_model_path(teacher_dir), "base")
    if not hasattr(teacher.config, "num_hidden_layers") or "layer_0" not in teacher.params:
        raise ValueError(f"B-PROP reads [CLS] attention from BERT-layout layers; {teacher_dir} is not one")
    tok = task.tokenizer
    length = int(b.max_length)
    passage_len = max(8, length - MAX_SET_SIZE * 3)
    docs = tokenize_with_words(tok, list(texts))
    passages = chunk_documents(docs, passage_len, tok.cls_token_id, tok.sep_token_id)[: int(b.max_documents)]
    ids = np.full((len(passages), passage_len), tok.pad_token_id or 0, np.int32)
    mask = np.zeros_like(ids)
    for i, (t, _) in enumerate(passages):
        ids[i, :len(t)], mask[i, :len(t)] = t, 1
    att = teacher_cls_attention(teacher.model, teacher.params, ids, mask)
    decode_cache: dict = {}

    def keep(word):
        if word not in decode_cache:
            text = tok.decode(list(word)).strip().lstrip("#").lower()
            decode_cache[word] = any(ch.isalnum() for ch in text) and text not in STOPWORDS
        return decode_cache[word]

    p_corpus = corpus_distribution(((u[0], u[1]) for u in passages), keep)
    return build_rop_pairs(passages, [a[: len(p[0])] for a, p in zip(att, passages)], p_corpus, tok,
                           pairs_per_document=int(b.pairs_per_document), set_size_mean=float(b.set_size_mean),
                           temperature=float(b.temperature), length=length, seed=int(cfg.seed), keep=keep)


class RopAugmentedIterator:
    """Adds ``B`` ROP pairs (drawn with a step-seeded RNG) to every MLM batch; checkpointable."""

    def __init__(self, inner: Any, pairs: dict[str, np.ndarray], seed: int):
        self.inner, self.pairs, self.seed, self.step = inner, pairs, int(seed), 0
        self.num_pairs = len(next(iter(pairs.values())))

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self.inner)
        b = batch["input_ids"].shape[0]
        rng = np.random.default_rng([self.seed, self.step])
        idx = rng.integers(self.num_pairs, size=b)
        self.step += 1
        return {**batch, **{k: v[idx] for k, v in self.pairs.items()}}

    def get_state(self) -> dict:
        return {"inner": self.inner.get_state(), "rop_step": self.step}

    def set_state(self, state: dict) -> None:
        self.inner.set_state(state["inner"])
        self.step = int(state["rop_step"])
