"""Batches for LLM-embedder training (:mod:`jaxbert.tasks.llm_embedding`): MNTP rows, contrastive
tuples and GRL generation rows, from texts tokenized once up front.

Everything here is host-side numpy. The training iterator (:class:`IndexedBatchIterator`) is a
deterministic function of ``(seed, step)``: epoch ``e`` visits the records in the permutation
drawn from ``(seed, e)``, and the random choices of step ``s`` (MNTP masking) come from a
generator seeded with ``(seed, s)``. Its state is therefore one integer, so a resumed run sees
exactly the batches an uninterrupted run would have seen.

Row layouts (``B`` rows on this host, ``L`` a length bucket of the batch's longest text)::

    mntp         input_ids, attention_mask, labels      int32 [B, L]
    contrastive  input_ids, attention_mask, embed_mask  int32 [B, K, L]   text 0 = query,
                                                                          1 = positive, 2.. = hard negatives
    grl          the contrastive arrays, plus gen_ids, gen_mask, gen_target int32 [B, K - 1, Lg]
                 (query followed by candidate c; gen_target 1 on the candidate's tokens)

``embed_mask`` is 0 on tokens that are fed to the model but not pooled (the tokenizer's special
prefix such as BOS, and an instruction), exactly as :class:`jaxbert.inference.llm_encoder.LlmSentenceEncoder`
pools at inference.

Also here: :func:`build_word_tokenizer` (a word-level tokenizer built from the run's texts, so
tiny smoke runs need no tokenizer download) and :func:`lexical_hard_negatives` (TF-IDF mined hard
negatives for query -> document pairs).
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxbert.data.pipeline import _normalise

__all__ = ["build_word_tokenizer", "lexical_hard_negatives", "bucket_for", "pad_rows", "IndexedBatchIterator",
           "WORD_SPECIALS"]

#: Special tokens of :func:`build_word_tokenizer`, ids 0..4 in this order.
WORD_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<mask>")
_WORD_RE = re.compile(r"\w+|[^\w\s]+")  # the split of tokenizers' Whitespace pre-tokenizer


def build_word_tokenizer(texts: Sequence[str], max_words: int, *, lowercase: bool = True,
                         model_max_length: int = 2048) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over the ``max_words`` most frequent words of ``texts``.

    Ids 0-4 are :data:`WORD_SPECIALS` (pad, BOS, EOS, unk, mask); every text is prefixed with BOS
    (as Llama tokenizers do). Ties in frequency are broken alphabetically, so the vocabulary is a
    function of the texts. For smoke runs of random tiny models; ``save_pretrained`` writes it and
    ``AutoTokenizer.from_pretrained`` reads it back.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    if isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < 1:
        raise ValueError(f"max_words must be a positive int, got {max_words!r}")
    counts: collections.Counter = collections.Counter()
    for t in texts:
        counts.update(_WORD_RE.findall(t.lower() if lowercase else t))
    if not counts:
        raise ValueError("no words in the texts given to build_word_tokenizer")
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_words]]
    vocab = {w: i for i, w in enumerate(WORD_SPECIALS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    if lowercase:
        tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", mask_token="<mask>", model_max_length=model_max_length)


def lexical_hard_negatives(queries: Sequence[str], positives: Sequence[str], corpus: Sequence[str], k: int,
                           *, pool: int = 20, seed: int = 0) -> list[list[str]]:
    """``k`` hard negatives per query: corpus texts with high TF-IDF cosine to the query, not its positive.

    For each query the ``2 k`` best-scoring corpus texts other than its positive (compared as
    text; at most ``pool``) are shuffled with a seeded generator and the first ``k`` kept, so the
    negatives are hard but not always the single most similar text. Returns ``k`` strings per
    query. For WordNet example sentences these are mostly other senses of the sentence's words.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    if len(queries) != len(positives):
        raise ValueError(f"{len(queries)} queries but {len(positives)} positives")
    if not 1 <= k <= pool:
        raise ValueError(f"k={k} hard negatives must be in [1, pool={pool}]")
    if len(corpus) <= pool:
        raise ValueError(f"corpus of {len(corpus)} texts is too small for a pool of {pool} negatives")
    vec = TfidfVectorizer(lowercase=True, sublinear_tf=True, token_pattern=r"(?u)\b\w+\b")
    docs = vec.fit_transform(corpus)
    qs = vec.transform(queries)
    rng = np.random.default_rng(seed)
    out: list[list[str]] = []
    for start in range(0, len(queries), 512):
        scores = (qs[start:start + 512] @ docs.T).toarray()
        top = np.argsort(-scores, axis=1, kind="stable")[:, :pool + 1]
        for r, row in enumerate(top):
            pos = positives[start + r]
            cands = [int(j) for j in row if corpus[j] != pos][:pool]
            head = cands[:2 * k]
            rng.shuffle(head)
            out.append([corpus[j] for j in head[:k]])
    return out


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= ``length`` (``buckets`` sorted ascending; the last one caps)."""
    for b in buckets:
        if b >= length:
            return int(b)
    raise ValueError(f"a row of {length} tokens exceeds the largest length bucket {buckets[-1]}")


def pad_rows(seqs: Sequence[Sequence[int]], length: int, pad_id: int, skip: Sequence[int] | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-pad token lists to ``length`` -> ``(input_ids, attention_mask, embed_mask)`` int32 ``[n, length]``.

    ``embed_mask`` is the attention mask with the first ``skip[i]`` tokens of row ``i`` zeroed
    (None: nothing skipped). A list longer than ``length`` is an error (callers truncate).
    """
    n = len(seqs)
    ids = np.full((n, length), pad_id, np.int32)
    mask = np.zeros((n, length), np.int32)
    for r, s in enumerate(seqs):
        if len(s) > length:
            raise ValueError(f"row {r} has {len(s)} tokens, more than the padded length {length}")
        ids[r, :len(s)] = s
        mask[r, :len(s)] = 1
    embed = mask.copy()
    if skip is not None:
        for r, k in enumerate(skip):
            embed[r, :int(k)] = 0
    return ids, mask, embed


class IndexedBatchIterator:
    """Infinite, seeded, checkpointable stream of batches built by ``make_batch(indices, rng)``.

    Global step ``s`` covers stream positions ``[s B, (s + 1) B)`` of the concatenated per-epoch
    permutations of ``range(num_records)``; this host builds rows ``[p B / P, (p + 1) B / P)`` of
    them. ``make_batch(indices, rng)`` gets the record indices and a ``numpy`` generator seeded with
    ``(seed, s)`` (the same on every host). ``get_state()`` / ``set_state()`` follow
    :class:`jaxbert.data.pipeline.PipelineIterator`: ``{"pipeline": spec, "iterator": {"step": s}}``;
    a state saved with another spec (seed, batch size, records, ...) is refused.
    """

    def __init__(self, num_records: int, batch_size: int, seed: int,
                 make_batch: Callable[[np.ndarray, np.random.Generator], dict[str, np.ndarray]], *,
                 spec: Mapping[str, Any] | None = None, shuffle: bool = True,
                 process_index: int | None = None, process_count: int | None = None):
        from jaxbert.data.pipeline import _check_batch, _process_defaults

        self.process_index, self.process_count = _process_defaults(process_index, process_count)
        self.per_host = _check_batch(batch_size, self.process_count)
        if num_records < batch_size:
            raise ValueError(f"{num_records} training records are fewer than one global batch of {batch_size}")
        self.num_records, self.batch_size, self.seed = int(num_records), int(batch_size), int(seed)
        self.shuffle = bool(shuffle)
        self.make_batch = make_batch
        self.step = 0
        self._orders: dict[int, np.ndarray] = {}
        self.spec = {"kind": "indexed", "num_records": self.num_records, "global_batch_size": self.batch_size,
                     "seed": self.seed, "shuffle": self.shuffle, "process_index": self.process_index,
                     "process_count": self.process_count, **dict(spec or {})}

    @property
    def steps_per_epoch(self) -> int:
        return self.num_records // self.batch_size

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) > 2:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = (np.random.default_rng([self.seed, epoch]).permutation(self.num_records)
                                   if self.shuffle else np.arange(self.num_records))
        return self._orders[epoch]

    def indices(self, step: int) -> np.ndarray:
        """Record indices of this host's rows at global ``step``."""
        start = step * self.batch_size + self.process_index * self.per_host
        pos = np.arange(start, start + self.per_host)
        out = np.empty(self.per_host, np.int64)
        for e in np.unique(pos // self.num_records):
            sel = pos // self.num_records == e
            out[sel] = self._order(int(e))[pos[sel] % self.num_records]
        return out

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.make_batch(self.indices(self.step), np.random.default_rng([self.seed, 0x11A, self.step]))
        self.step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"pipeline": dict(self.spec), "iterator": {"step": int(self.step)}}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or "pipeline" not in state or "iterator" not in state:
            raise ValueError("not a jaxbert pipeline state: expected a dict with keys 'pipeline' and 'iterator', "
                             f"got {type(state).__name__} {sorted(state) if isinstance(state, Mapping) else ''}")
        saved = dict(state["pipeline"])
        diffs = [f"{k}: saved {saved.get(k)!r}, current {self.spec.get(k)!r}"
                 for k in sorted(set(saved) | set(self.spec))
                 if _normalise(saved.get(k)) != _normalise(self.spec.get(k))]
        if diffs:
            raise ValueError("iterator state was saved by a differently configured pipeline; restoring it would "
                             "not continue the same data stream:\n  " + "\n  ".join(diffs))
        self.step = int(state["iterator"]["step"])
