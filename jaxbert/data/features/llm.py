"""Batches for LLM-embedder training (:mod:`jaxbert.tasks.llm_embedding`): MNTP rows, contrastive
tuples and GRL generation rows, from texts tokenized once up front.

Everything here is host-side numpy. The task builds whole batches with :func:`pad_rows` and
:func:`jaxbert.data.batching.bucket_length`, streamed by
:class:`jaxbert.data.batching.IndexedBatchIterator`, a deterministic function of
``(seed, step)``: epoch ``e`` visits the records in the permutation drawn from ``(seed, e)``, and
the random choices of step ``s`` (MNTP masking) come from a
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
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["WORD_SPECIALS", "build_word_tokenizer", "lexical_hard_negatives", "pad_rows"]

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
