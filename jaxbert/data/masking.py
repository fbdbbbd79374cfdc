"""Maskers for masked-language-model pretraining: pure functions of one row and an RNG.

Every masker is a callable ``masker(token_ids, word_ids, rng) -> (inputs, labels)``:

* ``token_ids`` int ``[L]``: one row of token ids (special tokens and padding included);
* ``word_ids`` int ``[L]``: the word each token belongs to, ``-1`` for tokens that must never be
  masked (special tokens, padding). A *word* is a maximal run of consecutive tokens with the
  same id >= 0 (tokenizers give these through ``BatchEncoding.word_ids()``);
* ``rng``: a ``np.random.Generator`` (grain's ``random_map`` passes one per element).

It never mutates its arguments, so it can run inside a grain pipeline. Token-level maskers
return ``inputs`` int32 ``[L]`` and ``labels`` int32 ``[L]`` holding the original id where the
model must predict and :data:`IGNORE` (-100) everywhere else. The n-gram masker returns dicts
(see :class:`NgramMasker`); :func:`to_targets` turns either form into fixed-size arrays.

==================  ==========================================================================
masker              what is chosen (the *budget* is ``rate`` x maskable tokens, stochastically
                    rounded so that its expectation is exact)
==================  ==========================================================================
RandomTokenMasker   single tokens (BERT); replacement 80/10/10 per token
WholeWordMasker     whole words until the budget is reached (never splits a word); 80/10/10
                    decided per word
SpanMasker          SpanBERT: span length in words ~ Geometric(p=0.2) clipped at 10, a random
                    start word, contiguous complete words; 80/10/10 decided per span
NgramMasker         ERNIE-Gram: the row is segmented into lexicon n-grams (forward maximum
                    matching) and single words; a chosen n-gram is replaced by ONE [MASK] (the
                    rest of its tokens are removed) and predicted as an n-gram identity and
                    token by token; chosen single words as in whole-word masking
MixtureMasker       picks one of several maskers per row with given probabilities (LegalTurk)
==================  ==========================================================================

The 80/10/10 rule: a chosen unit becomes ``[MASK]`` with probability ``mask_prob`` (0.8), random
tokens with ``random_prob`` (0.1) and stays unchanged otherwise; it is predicted in all cases.

:class:`NgramLexicon` mines the n-gram lexicon from tokenized rows by a t-test (ERNIE-Gram) or
PMI over word n-grams, with keys made of token ids, so it matches exactly what the masker sees.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "IGNORE",
    "MaskingSpec",
    "MixtureMasker",
    "NgramLexicon",
    "NgramMasker",
    "RandomTokenMasker",
    "SpanMasker",
    "WholeWordMasker",
    "build_masker",
    "max_predictions",
    "to_targets",
    "word_spans",
]

IGNORE = -100  # label value of positions that are not predicted (optax/torch convention)

Masker = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[Any, Any]]


# ------------------------------------------------------------------------------ settings


@dataclasses.dataclass(frozen=True)
class MaskingSpec:
    """What every masker needs: the rate, the replacement rule and the token ids involved.

    ``vocab_size`` is the tokenizer's size (random replacements are drawn from
    ``[0, vocab_size)`` minus ``special_ids``), not the padded embedding table.
    """

    mask_token_id: int
    vocab_size: int
    rate: float = 0.15
    mask_prob: float = 0.8
    random_prob: float = 0.1
    special_ids: tuple[int, ...] = ()
    pad_token_id: int = 0

    def __post_init__(self):
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) or not 0.0 < self.rate < 1.0:
            raise ValueError(f"masking rate must be in the open interval (0, 1), got {self.rate!r}")
        for name in ("mask_prob", "random_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        if self.mask_prob + self.random_prob > 1.0 + 1e-9:
            raise ValueError(f"mask_prob + random_prob must be <= 1, got {self.mask_prob} + {self.random_prob}")
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise ValueError(f"mask_token_id={self.mask_token_id} is outside the vocabulary [0, {self.vocab_size})")
        if self.vocab_size - len(set(self.special_ids)) < 1:
            raise ValueError(f"vocab_size={self.vocab_size} leaves no non-special token for random replacement")

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **kwargs: Any) -> "MaskingSpec":
        """Read ``[MASK]``, ``[PAD]`` and the special ids from a Hugging Face tokenizer."""
        from jaxbert.data.tokenization import tokenizer_vocab_size  # pylint: disable=import-outside-toplevel
        if tokenizer.mask_token_id is None:
            raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no mask token; "
                             "MLM needs one (train it with jaxbert.data.tokenization.train_tokenizer)")
        specials = set(int(i) for i in tokenizer.all_special_ids)
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        specials |= {int(i) for i, t in added.items() if getattr(t, "special", False)}  # e.g. [unused3]
        specials = tuple(sorted(specials))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return cls(mask_token_id=int(tokenizer.mask_token_id), vocab_size=tokenizer_vocab_size(tokenizer),
                   special_ids=specials, pad_token_id=int(pad), **kwargs)

    @property
    def random_pool(self) -> np.ndarray:
        pool = np.setdiff1d(np.arange(self.vocab_size, dtype=np.int32), np.asarray(self.special_ids, np.int32))
        return pool.astype(np.int32)


def max_predictions(rate: float, length: int) -> int:
    """Upper bound on predicted tokens per row of ``length`` tokens (every masker respects it)."""
    return max(1, int(math.ceil(rate * length)))


def _budget(n: int, rate: float, rng: np.random.Generator) -> int:
    """``rate * n`` stochastically rounded: ``E[budget] = rate * n`` exactly."""
    x = rate * n
    return min(n, int(math.floor(x + rng.random())))


def word_spans(word_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, ends)`` token ranges ``[s, e)`` of the words of a row (runs of equal ids >= 0)."""
    w = np.asarray(word_ids)
    valid = w >= 0
    prev = np.concatenate([[-2], w[:-1]])
    prev_valid = np.concatenate([[False], valid[:-1]])
    start = valid & (~prev_valid | (w != prev))
    starts = np.flatnonzero(start)
    nxt = np.concatenate([w[1:], [-2]])
    nxt_valid = np.concatenate([valid[1:], [False]])
    end = valid & (~nxt_valid | (w != nxt))
    ends = np.flatnonzero(end) + 1
    return starts, ends


def _check_row(token_ids: np.ndarray, word_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(token_ids)
    w = np.asarray(word_ids)
    if t.ndim != 1 or w.shape != t.shape:
        raise ValueError(f"token_ids and word_ids must be 1-D of the same length, got {t.shape} and {w.shape}")
    return t.astype(np.int32), w.astype(np.int32)


def _start_row(token_ids: np.ndarray, word_ids: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(tokens, words, inputs, labels)``: the checked row, a copy to mask, all labels IGNORE."""
    t, w = _check_row(token_ids, word_ids)
    return t, w, t.copy(), np.full_like(t, IGNORE)


def _replace(inputs: np.ndarray, positions: np.ndarray, spec: MaskingSpec, rng: np.random.Generator,
             pool: np.ndarray) -> None:
    """80/10/10 for one unit (all ``positions`` share the decision), in place."""
    u = rng.random()
    if u < spec.mask_prob:
        inputs[positions] = spec.mask_token_id
    elif u < spec.mask_prob + spec.random_prob:
        inputs[positions] = rng.choice(pool, size=len(positions))


# ------------------------------------------------------------------------------ maskers


class _SpecMasker:
    """A masker configured by a :class:`MaskingSpec` alone."""

    def __init__(self, spec: MaskingSpec):
        self.spec = spec
        self._pool = spec.random_pool


class RandomTokenMasker(_SpecMasker):
    """BERT: ``rate`` of the maskable tokens, chosen uniformly; 80/10/10 per token."""

    kind = "random"

    def __call__(self, token_ids, word_ids, rng: np.random.Generator):
        t, w, inputs, labels = _start_row(token_ids, word_ids)
        candidates = np.flatnonzero(w >= 0)
        k = _budget(len(candidates), self.spec.rate, rng)
        if k == 0:
            return inputs, labels
        chosen = rng.choice(candidates, size=k, replace=False)
        labels[chosen] = t[chosen]
        u = rng.random(k)
        to_mask = chosen[u < self.spec.mask_prob]
        to_rand = chosen[(u >= self.spec.mask_prob) & (u < self.spec.mask_prob + self.spec.random_prob)]
        inputs[to_mask] = self.spec.mask_token_id
        if len(to_rand):
            inputs[to_rand] = rng.choice(self._pool, size=len(to_rand))
        return inputs, labels


class WholeWordMasker(_SpecMasker):
    """Whole-word masking: words in random order, each taken whole if it fits the token budget.

    A word that would overflow the budget is skipped (Google's ``create_pretraining_data``
    rule), so no word is ever split and the count never exceeds the budget.
    """

    kind = "whole_word"

    def __call__(self, token_ids, word_ids, rng: np.random.Generator):
        t, w, inputs, labels = _start_row(token_ids, word_ids)
        starts, ends = word_spans(w)
        budget = _budget(int((w >= 0).sum()), self.spec.rate, rng)
        count = 0
        for i in rng.permutation(len(starts)):
            if count >= budget:
                break
            n = ends[i] - starts[i]
            if count + n > budget:
                continue
            pos = np.arange(starts[i], ends[i])
            labels[pos] = t[pos]
            _replace(inputs, pos, self.spec, rng, self._pool)
            count += n
        return inputs, labels


class SpanMasker:
    """SpanBERT span masking (Joshi et al. 2020).

    Repeatedly: draw a span length ``l`` (in words) from Geometric(``p``) truncated to
    ``[1, max_span]``, a random start word, and take the ``l`` contiguous complete words from
    there (a span stops at special tokens and padding) unless they overlap an earlier span;
    stop when ``rate`` of the tokens are chosen. A span that would overflow the budget is cut
    to the whole words that fit. 80/10/10 is decided once per span.
    """

    kind = "span"

    def __init__(self, spec: MaskingSpec, p: float = 0.2, max_span: int = 10, max_tries: int = 100):
        if not 0.0 < p <= 1.0:
            raise ValueError(f"span geometric p must be in (0, 1], got {p}")
        if max_span < 1:
            raise ValueError(f"max_span must be >= 1, got {max_span}")
        self.spec, self.p, self.max_span, self.max_tries = spec, float(p), int(max_span), int(max_tries)
        lengths = np.arange(1, self.max_span + 1)
        probs = self.p * (1 - self.p) ** (lengths - 1)
        self.length_probs = probs / probs.sum()
        self._pool = spec.random_pool

    @property
    def mean_span(self) -> float:
        return float((np.arange(1, self.max_span + 1) * self.length_probs).sum())

    def __call__(self, token_ids, word_ids, rng: np.random.Generator):
        t, w, inputs, labels = _start_row(token_ids, word_ids)
        starts, ends = word_spans(w)
        nw = len(starts)
        budget = _budget(int((w >= 0).sum()), self.spec.rate, rng)
        if nw == 0 or budget == 0:
            return inputs, labels
        # contiguous[i]: word i+1 starts right where word i ends (no special token between)
        contiguous = np.concatenate([starts[1:] == ends[:-1], [False]])
        taken = np.zeros(nw, bool)
        count, failures = 0, 0
        while count < budget and failures < self.max_tries:
            length = int(rng.choice(len(self.length_probs), p=self.length_probs)) + 1
            first = int(rng.integers(nw))
            last = first
            while last - first + 1 < length and contiguous[last]:
                last += 1
            # cut to what fits the budget and is still free
            words = []
            n = 0
            for j in range(first, last + 1):
                size = ends[j] - starts[j]
                if taken[j] or count + n + size > budget:
                    break
                words.append(j)
                n += size
            if not words:
                failures += 1
                continue
            pos = np.arange(starts[words[0]], ends[words[-1]])
            taken[words] = True
            labels[pos] = t[pos]
            _replace(inputs, pos, self.spec, rng, self._pool)
            count += n
        return inputs, labels


# ------------------------------------------------------------------------------ n-grams


@dataclasses.dataclass
class NgramLexicon:
    """Word n-grams (n >= 2) keyed by their tokens: ``key = ((tok, ...), (tok, ...), ...)`` per word.

    ``ngrams[i]`` is the key of n-gram id ``i``; ``texts``/``scores``/``counts`` describe them.
    """

    ngrams: list[tuple[tuple[int, ...], ...]]
    texts: list[str] = dataclasses.field(default_factory=list)
    scores: list[float] = dataclasses.field(default_factory=list)
    counts: list[int] = dataclasses.field(default_factory=list)
    method: str = "tscore"

    def __post_init__(self):
        self.ngrams = [tuple(tuple(int(t) for t in word) for word in ng) for ng in self.ngrams]
        self.index = {ng: i for i, ng in enumerate(self.ngrams)}
        self.max_n = max((len(ng) for ng in self.ngrams), default=1)

    def __len__(self) -> int:
        return len(self.ngrams)

    def num_tokens(self, i: int) -> int:
        return sum(len(w) for w in self.ngrams[i])

    # ------------------------------------------------------------------ mining
    @classmethod
    def mine(cls, rows: Iterable[tuple[np.ndarray, np.ndarray]], *, max_n: int = 3, min_count: int = 5,
             size: int = 10000, method: str = "tscore", max_tokens: int = 6,
             keep_word: Callable[[tuple[int, ...]], bool] | None = None,
             decode: Callable[[list[int]], str] | None = None) -> "NgramLexicon":
        """Mine significant word n-grams (2..``max_n`` words) from ``(token_ids, word_ids)`` rows.

        ``method="tscore"`` ranks by the collocation t-statistic that ERNIE-Gram uses,
        ``t = (p(w) - prod_i p(x_i)) / sqrt(p(w) / N)`` with ``p`` relative frequencies over ``N``
        n-grams of that order; ``method="pmi"`` by ``log p(w) / prod_i p(x_i)``. N-grams seen fewer
        than ``min_count`` times, with more than ``max_tokens`` tokens, or containing a word that
        ``keep_word`` rejects (e.g. punctuation) are dropped. ``size`` n-grams are kept, split
        evenly over the orders (the unused share of one order goes to the others).
        """
        if method not in ("tscore", "pmi"):
            raise ValueError(f"n-gram scoring method must be 'tscore' or 'pmi', got {method!r}")
        if max_n < 2:
            raise ValueError(f"max_n must be >= 2, got {max_n}")
        runs: list[list[tuple[int, ...]]] = []
        for token_ids, word_ids in rows:
            t, w = _check_row(token_ids, word_ids)
            starts, ends = word_spans(w)
            run: list[tuple[int, ...]] = []
            for k, (s, e) in enumerate(zip(starts, ends)):
                if k and s != ends[k - 1] and run:
                    runs.append(run)
                    run = []
                run.append(tuple(int(x) for x in t[s:e]))
            if run:
                runs.append(run)
        if not runs:
            raise ValueError("cannot mine an n-gram lexicon from an empty corpus (no words in any row)")
        unigrams: Counter = Counter(word for run in runs for word in run)
        total1 = sum(unigrams.values())
        ok = {wd for wd, c in unigrams.items() if c >= min_count and (keep_word is None or keep_word(wd))}
        counts: dict[int, Counter] = {}
        frequent_prev: set | None = None
        for n in range(2, max_n + 1):
            c: Counter = Counter()
            for run in runs:
                for i in range(len(run) - n + 1):
                    ng = tuple(run[i:i + n])
                    if not all(wd in ok for wd in ng):
                        continue
                    if frequent_prev is not None and (ng[:-1] not in frequent_prev or ng[1:] not in frequent_prev):
                        continue  # an (n)-gram is frequent only if both its (n-1)-grams are
                    c[ng] += 1
            c = Counter({k: v for k, v in c.items() if v >= min_count and sum(map(len, k)) <= max_tokens})
            counts[n] = c
            frequent_prev = set(c)
        scored: dict[int, list[tuple[float, tuple, int]]] = {}
        for n, c in counts.items():
            total_n = max(1, sum(len(run) - n + 1 for run in runs if len(run) >= n))
            items = []
            for ng, cnt in c.items():
                p = cnt / total_n
                indep = math.prod(unigrams[wd] / total1 for wd in ng)
                score = (p - indep) / math.sqrt(p / total_n) if method == "tscore" else math.log(p / indep)
                items.append((score, ng, cnt))
            items.sort(key=lambda x: (-x[0], x[1]))
            scored[n] = items
        orders = sorted(scored)
        chosen: list[tuple[float, tuple, int]] = []
        remaining = size
        for k, n in enumerate(orders):
            share = remaining // (len(orders) - k)
            take = [x for x in scored[n][:share] if x[0] > 0]
            chosen.extend(take)
            remaining -= len(take)
        texts = [decode([t for wd in ng for t in wd]) if decode else " ".join(map(str, ng)) for _, ng, _ in chosen]
        return cls(ngrams=[ng for _, ng, _ in chosen], texts=texts, scores=[float(s) for s, _, _ in chosen],
                   counts=[int(c) for _, _, c in chosen], method=method)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "ngrams": [[list(w) for w in ng] for ng in self.ngrams],
                "texts": self.texts, "scores": self.scores, "counts": self.counts}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NgramLexicon":
        return cls(ngrams=[tuple(tuple(w) for w in ng) for ng in d["ngrams"]], texts=list(d.get("texts", [])),
                   scores=list(d.get("scores", [])), counts=list(d.get("counts", [])), method=d.get("method", "tscore"))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "NgramLexicon":
        return cls.from_dict(json.loads(Path(path).read_text()))

    # ------------------------------------------------------------------ matching
    def segment(self, token_ids: np.ndarray, word_ids: np.ndarray) -> list[tuple[int, int, int]]:
        """Forward maximum matching: ``[(start, end, ngram_id or -1), ...]`` units covering all words.

        Units never cross special tokens or padding; ``-1`` marks a single word.
        """
        t, w = _check_row(token_ids, word_ids)
        starts, ends = word_spans(w)
        words = [tuple(int(x) for x in t[s:e]) for s, e in zip(starts, ends)]
        units = []
        i, nw = 0, len(words)
        while i < nw:
            match = None
            for n in range(min(self.max_n, nw - i), 1, -1):
                if any(starts[j + 1] != ends[j] for j in range(i, i + n - 1)):
                    continue
                gid = self.index.get(tuple(words[i:i + n]))
                if gid is not None:
                    match = (n, gid)
                    break
            if match:
                n, gid = match
                units.append((int(starts[i]), int(ends[i + n - 1]), gid))
                i += n
            else:
                units.append((int(starts[i]), int(ends[i]), -1))
                i += 1
        return units


class NgramMasker:
    """ERNIE-Gram explicit n-gram masking (Xiao et al. 2021, arXiv 2010.12148).

    The row is segmented into units (lexicon n-grams by forward maximum matching, else single
    words). Units are taken in random order while they fit the token budget. A chosen n-gram is
    replaced by a single ``[MASK]`` at its first token; its other tokens are *removed* (marked
    invisible: the pipeline drops them from attention and renumbers positions, which is the
    same computation as deleting them, with static shapes). A chosen single word is masked as in
    whole-word masking (80/10/10 per word).

    Returns ``(inputs, labels)`` as dicts::

        inputs["input_ids"] int32 [L]   (removed tokens hold the pad id)
        inputs["visible"]   bool  [L]   (False for removed tokens)
        labels["tokens"]    int32 [L, K] token targets per slot: the n-gram's tokens in order at
                                         its [MASK] slot, the word's token at a masked word token,
                                         IGNORE elsewhere (K = ``max_tokens``)
        labels["ngrams"]    int32 [L]   n-gram id at an n-gram's [MASK] slot, IGNORE elsewhere
    """

    kind = "ngram"

    def __init__(self, spec: MaskingSpec, lexicon: NgramLexicon, max_tokens: int = 6):
        self.spec, self.lexicon, self.max_tokens = spec, lexicon, int(max_tokens)
        self._pool = spec.random_pool

    def __call__(self, token_ids, word_ids, rng: np.random.Generator):
        t, w = _check_row(token_ids, word_ids)
        L, K = len(t), self.max_tokens
        inputs = t.copy()
        visible = np.ones(L, bool)
        tok_labels = np.full((L, K), IGNORE, np.int32)
        ng_labels = np.full(L, IGNORE, np.int32)
        units = self.lexicon.segment(t, w)
        budget = _budget(int((w >= 0).sum()), self.spec.rate, rng)
        count = 0
        for u in rng.permutation(len(units)):
            if count >= budget:
                break
            s, e, gid = units[u]
            n = e - s
            if count + n > budget:
                continue
            if gid >= 0 and n <= K:
                inputs[s] = self.spec.mask_token_id
                inputs[s + 1:e] = self.spec.pad_token_id
                visible[s + 1:e] = False
                tok_labels[s, :n] = t[s:e]
                ng_labels[s] = gid
            else:
                pos = np.arange(s, e)
                tok_labels[pos, 0] = t[pos]
                _replace(inputs, pos, self.spec, rng, self._pool)
            count += n
        return {"input_ids": inputs, "visible": visible}, {"tokens": tok_labels, "ngrams": ng_labels}


class MixtureMasker:
    """Per row, one masker drawn with the given probabilities (LegalTurk-style mixed strategies)."""

    kind = "mixture"

    def __init__(self, components: Sequence[tuple[Masker, float]]):
        if not components:
            raise ValueError("a mixture needs at least one (masker, probability) component")
        probs = np.asarray([float(p) for _, p in components])
        if np.any(probs < 0) or probs.sum() <= 0:
            raise ValueError(f"mixture probabilities must be >= 0 with a positive sum, got {probs.tolist()}")
        self.maskers = [m for m, _ in components]
        self.probs = probs / probs.sum()

    def __call__(self, token_ids, word_ids, rng: np.random.Generator):
        i = int(rng.choice(len(self.maskers), p=self.probs))
        return self.maskers[i](token_ids, word_ids, rng)


# ------------------------------------------------------------------------------ targets


def to_targets(inputs: Any, labels: Any, num_predictions: int, max_tokens: int = 1) -> dict[str, np.ndarray]:
    """Masker output -> fixed-size arrays for the model (static shapes for jit).

    Returns ``input_ids [L]``, ``visible [L]`` (bool), ``masked_positions``, ``masked_offsets``,
    ``masked_labels`` (each ``[num_predictions]``; labels IGNORE-padded; offset 0 = an ordinary
    token, ``k + 1`` = the k-th token of an n-gram read from its single [MASK] slot) and
    ``ngram_positions``, ``ngram_labels`` (``[num_predictions]``, IGNORE-padded).
    """
    if isinstance(inputs, dict):
        ids, visible = inputs["input_ids"], inputs["visible"]
        tok, ngl = labels["tokens"], labels["ngrams"]
    else:
        ids, visible = inputs, np.ones(len(inputs), bool)
        tok, ngl = np.asarray(labels)[:, None], np.full(len(inputs), IGNORE, np.int32)
    pos, off = np.nonzero(tok != IGNORE)
    n = len(pos)
    if n > num_predictions:
        raise ValueError(f"masker produced {n} predictions, more than num_predictions={num_predictions}")
    is_ngram_slot = ngl[pos] != IGNORE
    out_pos = np.zeros(num_predictions, np.int32)
    out_off = np.zeros(num_predictions, np.int32)
    out_lab = np.full(num_predictions, IGNORE, np.int32)
    out_pos[:n] = pos
    out_off[:n] = np.where(is_ngram_slot, off + 1, 0)
    out_lab[:n] = tok[pos, off]
    gpos = np.flatnonzero(ngl != IGNORE)
    g_pos = np.zeros(num_predictions, np.int32)
    g_lab = np.full(num_predictions, IGNORE, np.int32)
    g_pos[:len(gpos)] = gpos
    g_lab[:len(gpos)] = ngl[gpos]
    return {"input_ids": np.asarray(ids, np.int32), "visible": np.asarray(visible, bool),
            "masked_positions": out_pos, "masked_offsets": out_off, "masked_labels": out_lab,
            "ngram_positions": g_pos, "ngram_labels": g_lab}


# ------------------------------------------------------------------------------ factory

STRATEGIES = ("random", "whole_word", "span", "ngram", "mixture")


def build_masker(strategy: str, spec: MaskingSpec, *, span_p: float = 0.2, span_max: int = 10,
                 lexicon: NgramLexicon | None = None, ngram_max_tokens: int = 6,
                 mixture: Sequence[tuple[str, float]] = ()) -> Masker:
    """The masker named ``strategy`` (one of :data:`STRATEGIES`)."""
    if strategy == "random":
        return RandomTokenMasker(spec)
    if strategy == "whole_word":
        return WholeWordMasker(spec)
    if strategy == "span":
        return SpanMasker(spec, p=span_p, max_span=span_max)
    if strategy == "ngram":
        if lexicon is None:
            raise ValueError("n-gram masking needs an NgramLexicon (mine one with NgramLexicon.mine)")
        return NgramMasker(spec, lexicon, ngram_max_tokens)
    if strategy == "mixture":
        if not mixture:
            raise ValueError("strategy 'mixture' needs components, e.g. (('whole_word', 0.5), ('span', 0.5))")
        comps = []
        for name, p in mixture:
            if name == "mixture":
                raise ValueError("a mixture cannot contain another mixture")
            comps.append((build_masker(name, spec, span_p=span_p, span_max=span_max, lexicon=lexicon,
                                       ngram_max_tokens=ngram_max_tokens), p))
        return MixtureMasker(comps)
    raise ValueError(f"unknown masking strategy {strategy!r}; known: {list(STRATEGIES)}")
