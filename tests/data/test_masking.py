"""Maskers: rates over many draws, whole words, contiguous spans, n-gram targets, labels elsewhere, errors."""

from __future__ import annotations

import numpy as np
import pytest

from jaxbert.data.masking import (IGNORE, MaskingSpec, MixtureMasker, NgramLexicon, NgramMasker, RandomTokenMasker,
                                  SpanMasker, WholeWordMasker, build_masker, max_predictions, to_targets, word_spans)

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
VOCAB = 1000
SPEC = dict(mask_token_id=MASK, vocab_size=VOCAB, special_ids=(PAD, UNK, CLS, SEP, MASK), pad_token_id=PAD)


def make_row(rng, length=128, n_real=110, max_word=4):
    """[CLS] words... [SEP] [PAD]...; a second segment after a middle [SEP][CLS] pair (packed-like)."""
    ids = np.full(length, PAD, np.int32)
    words = np.full(length, -1, np.int32)
    ids[0] = CLS
    pos, w = 1, 0
    while pos < n_real - 1:
        if pos == n_real // 2:  # a segment boundary inside the row
            ids[pos:pos + 2] = (SEP, CLS)
            pos += 2
            continue
        k = min(int(rng.integers(1, max_word + 1)), n_real - 1 - pos)
        if pos < n_real // 2 < pos + k:
            k = n_real // 2 - pos
        ids[pos:pos + k] = rng.integers(10, VOCAB, size=k)
        words[pos:pos + k] = w
        pos += k
        w += 1
    ids[n_real - 1] = SEP
    return ids, words


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    return [make_row(rng) for _ in range(8)]


def predicted_fraction(masker, rows, draws=60, seed=1):
    rng = np.random.default_rng(seed)
    num = den = 0
    for _ in range(draws):
        for ids, words in rows:
            inputs, labels = masker(ids, words, rng)
            if isinstance(labels, dict):  # n-gram masker: count token targets (a slot holds several)
                labels = labels["tokens"]
            num += int((labels != IGNORE).sum())
            den += int((words >= 0).sum())
    return num / den


@pytest.mark.parametrize("rate", [0.15, 0.3])
@pytest.mark.parametrize("cls", [RandomTokenMasker, WholeWordMasker, SpanMasker])
def test_rate_within_tolerance(rows, cls, rate):
    masker = cls(MaskingSpec(rate=rate, **SPEC))
    frac = predicted_fraction(masker, rows)
    assert abs(frac - rate) < 0.01, (cls.__name__, rate, frac)


def test_replacement_is_80_10_10(rows):
    masker = RandomTokenMasker(MaskingSpec(rate=0.3, **SPEC))
    rng = np.random.default_rng(3)
    counts = np.zeros(3)
    for _ in range(100):
        for ids, words in rows:
            inputs, labels = masker(ids, words, rng)
            sel = labels != IGNORE
            counts += [(inputs[sel] == MASK).sum(), ((inputs[sel] != MASK) & (inputs[sel] != ids[sel])).sum(),
                       (inputs[sel] == ids[sel]).sum()]
    frac = counts / counts.sum()
    assert np.allclose(frac, [0.8, 0.1, 0.1], atol=0.01), frac


@pytest.mark.parametrize("cls", [RandomTokenMasker, WholeWordMasker, SpanMasker])
def test_labels_ignored_everywhere_else(rows, cls):
    masker = cls(MaskingSpec(rate=0.3, **SPEC))
    rng = np.random.default_rng(4)
    for _ in range(20):
        for ids, words in rows:
            before = ids.copy()
            inputs, labels = masker(ids, words, rng)
            assert np.array_equal(ids, before)  # pure: arguments untouched
            sel = labels != IGNORE
            assert np.array_equal(labels[sel], ids[sel])  # targets are the original tokens
            assert np.array_equal(inputs[~sel], ids[~sel])  # nothing else changes
            assert not sel[words < 0].any()  # specials and padding never predicted
            assert not np.isin(inputs[sel & (inputs != MASK)], SPEC["special_ids"]).any()


def test_whole_word_never_splits_a_word(rows):
    masker = WholeWordMasker(MaskingSpec(rate=0.3, **SPEC))
    rng = np.random.default_rng(5)
    for _ in range(50):
        for ids, words in rows:
            inputs, labels = masker(ids, words, rng)
            for s, e in zip(*word_spans(words)):
                sel = labels[s:e] != IGNORE
                assert sel.all() or not sel.any()
                masked = inputs[s:e] == MASK
                assert masked.all() or not masked.any()  # 80/10/10 decided per word


def test_spans_contiguous_whole_words_and_geometric(rows):
    masker = SpanMasker(MaskingSpec(rate=0.3, **SPEC), p=0.2, max_span=10)
    assert abs(masker.mean_span - 3.8) < 0.05  # SpanBERT: mean 3.8 words for p=0.2, max 10
    rng = np.random.default_rng(6)
    run_words = []
    for _ in range(50):
        for ids, words in rows:
            inputs, labels = masker(ids, words, rng)
            sel = labels != IGNORE
            starts, ends = word_spans(words)
            for s, e in zip(starts, ends):  # whole words only
                assert sel[s:e].all() or not sel[s:e].any()
            # maximal runs of predicted tokens are contiguous stretches of complete words
            edges = np.flatnonzero(np.diff(np.concatenate([[0], sel.astype(int), [0]])))
            for a, b in zip(edges[::2], edges[1::2]):
                assert (words[a:b] >= 0).all()
                assert a in starts and b in ends
                run_words.append(len(np.unique(words[a:b])))
    assert np.mean(run_words) > 2.5  # spans, not isolated words


def test_span_masking_does_not_cross_segments():
    spec = MaskingSpec(rate=0.5, **SPEC)
    ids = np.array([CLS, 10, 11, SEP, CLS, 12, 13, SEP], np.int32)
    words = np.array([-1, 0, 1, -1, -1, 2, 3, -1], np.int32)
    masker = SpanMasker(spec)
    for seed in range(50):
        _, labels = masker(ids, words, np.random.default_rng(seed))
        assert (labels[[0, 3, 4, 7]] == IGNORE).all()


# ------------------------------------------------------------------------------ n-grams

PHRASES = [((500,), (501,)), ((600,), (601, 602), (603,))]  # "new york", a 3-word 4-token phrase


def ngram_corpus(n=200, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        ids, words = [CLS], [-1]
        w = 0
        while len(ids) < 60:
            if rng.random() < 0.15:
                phrase = PHRASES[int(rng.integers(len(PHRASES)))]
            else:
                phrase = [(int(rng.integers(10, 400)),)]
            for word in phrase:
                ids.extend(word)
                words.extend([w] * len(word))
                w += 1
        ids.append(SEP)
        words.append(-1)
        rows.append((np.array(ids, np.int32), np.array(words, np.int32)))
    return rows


@pytest.fixture(scope="module")
def lexicon():
    return NgramLexicon.mine(ngram_corpus(), max_n=3, min_count=5, size=50)


@pytest.mark.parametrize("method", ["tscore", "pmi"])
def test_lexicon_finds_planted_ngrams(method):
    lex = NgramLexicon.mine(ngram_corpus(), max_n=3, min_count=5, size=20, method=method)
    for phrase in PHRASES:
        assert tuple(phrase) in lex.index, (method, lex.ngrams[:5])
    assert NgramLexicon.from_dict(lex.to_dict()).ngrams == lex.ngrams


def test_ngram_masking_masks_whole_lexicon_ngrams_and_head_targets_match(lexicon):
    masker = NgramMasker(MaskingSpec(rate=0.3, **SPEC), lexicon, max_tokens=6)
    rng = np.random.default_rng(7)
    seen_ngrams = 0
    num = den = 0
    for ids, words in ngram_corpus(40, seed=1):
        units = lexicon.segment(ids, words)
        inputs, labels = masker(ids, words, rng)
        x, visible = inputs["input_ids"], inputs["visible"]
        tok, ng = labels["tokens"], labels["ngrams"]
        for s, e, gid in units:
            predicted = (tok[s:e] != IGNORE).any(-1) | ~visible[s:e]
            assert predicted.all() or not predicted.any()  # units are masked whole
            if gid >= 0 and predicted.any():
                seen_ngrams += 1
                assert x[s] == MASK and not visible[s + 1:e].any() and visible[s]  # one [MASK] for the n-gram
                key = tuple(tuple(int(t) for t in ids[s:e][a:b]) for a, b in zip(*word_spans(words[s:e])))
                assert ng[s] == gid == lexicon.index[key]  # the n-gram head's target is this n-gram
                assert list(tok[s, :e - s]) == list(ids[s:e])  # token-by-token targets, in order
                assert (tok[s, e - s:] == IGNORE).all()
        others = ng != IGNORE
        assert all(ids[p] == lexicon.ngrams[ng[p]][0][0] for p in np.flatnonzero(others))
        # labels ignored everywhere else
        predicted = (tok != IGNORE).any(-1)
        assert np.array_equal(x[~predicted & visible], ids[~predicted & visible])
        assert not predicted[words < 0].any()
        num += int((tok != IGNORE).sum())
        den += int((words >= 0).sum())
    assert seen_ngrams > 10
    assert abs(num / den - 0.3) < 0.03


def test_to_targets_shapes_and_offsets(lexicon):
    masker = NgramMasker(MaskingSpec(rate=0.3, **SPEC), lexicon, max_tokens=6)
    ids, words = ngram_corpus(5, seed=2)[0]
    m = max_predictions(0.3, len(ids))
    inputs, labels = masker(ids, words, np.random.default_rng(0))
    t = to_targets(inputs, labels, m)
    real = t["masked_labels"] != IGNORE
    assert real.sum() == (labels["tokens"] != IGNORE).sum()
    # offset k+1 -> the k-th token of the n-gram at its slot; offset 0 -> the token at that position
    for p, o, lab in zip(t["masked_positions"][real], t["masked_offsets"][real], t["masked_labels"][real]):
        assert lab == (ids[p + o - 1] if o > 0 else ids[p])
    tr = to_targets(*RandomTokenMasker(MaskingSpec(rate=0.3, **SPEC))(ids, words, np.random.default_rng(0)), m)
    assert (tr["masked_offsets"] == 0).all() and tr["visible"].all()


def test_mixture_draws_components_with_probabilities(rows):
    spec = MaskingSpec(rate=0.3, **SPEC)
    ids, words = rows[0]
    only_random = MixtureMasker([(RandomTokenMasker(spec), 1.0), (WholeWordMasker(spec), 0.0)])
    a = only_random(ids, words, np.random.default_rng(9))
    rng = np.random.default_rng(9)
    rng.choice(2, p=[1.0, 0.0])
    b = RandomTokenMasker(spec)(ids, words, rng)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])

    class Tag:
        def __init__(self, k):
            self.k = k

        def __call__(self, t, w, rng):
            return self.k, None

    mix = MixtureMasker([(Tag(0), 0.25), (Tag(1), 0.75)])
    rng = np.random.default_rng(0)
    picks = [mix(ids, words, rng)[0] for _ in range(4000)]
    assert abs(np.mean(picks) - 0.75) < 0.03
    assert predicted_fraction(build_masker("mixture", spec, mixture=(("span", 0.5), ("whole_word", 0.5))),
                              rows, draws=30) == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5])
def test_rate_outside_open_interval_is_an_error(rate):
    with pytest.raises(ValueError, match=r"open interval \(0, 1\)"):
        MaskingSpec(rate=rate, **SPEC)


def test_bad_settings_are_errors():
    with pytest.raises(ValueError, match="unknown masking strategy"):
        build_masker("bert", MaskingSpec(**SPEC))
    with pytest.raises(ValueError, match="NgramLexicon"):
        build_masker("ngram", MaskingSpec(**SPEC))
    with pytest.raises(ValueError, match="empty corpus"):
        NgramLexicon.mine([], max_n=3)
