"""SQuAD metrics: answer normalisation, exact match and token F1, with v2.0's no-answer rules.

Follows the official evaluation scripts (``evaluate-v1.1.py`` and ``evaluate-v2.0.py``):

* normalise = lower-case, drop ASCII punctuation (``string.punctuation``), drop the articles
  ``a an the`` as whole words, collapse whitespace;
* EM = normalised strings equal; F1 = bag-of-tokens F1 of the normalised strings;
* a question scores the **max** over its gold answers;
* v2.0: gold answers that normalise to ``""`` are dropped and a question with none left is
  unanswerable, gold ``[""]``; predicting ``""`` there scores EM = F1 = 1, anything else 0
  (and ``""`` on an answerable question scores 0). On answerable questions this equals v1.1.

Scores are percentages (0-100) like the official scripts. A question without a prediction
scores 0 (v1.1's behaviour) and is counted in ``missing``.

    squad_scores({"q1": ["Denver Broncos"]}, {"q1": "the Denver Broncos"})
    # {'exact': 100.0, 'f1': 100.0, 'total': 1, 'HasAns_exact': 100.0, ...}
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

__all__ = ["exact_match", "f1_score", "normalize_answer", "squad_scores"]

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (official order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def exact_match(gold: str, pred: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(pred))


def f1_score(gold: str, pred: str) -> float:
    """Token-overlap F1 of the normalised strings; two empty answers agree (1.0)."""
    g, p = _tokens(gold), _tokens(pred)
    if not g or not p:
        return float(g == p)
    same = sum((Counter(g) & Counter(p)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_scores(gold_answers: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> dict[str, float]:
    """EM / F1 (percent) over ``gold_answers`` (question id -> answer texts; empty = unanswerable).

    Returns ``exact``, ``f1``, ``total``, ``missing`` and, where such questions exist,
    ``HasAns_exact/f1/total`` and ``NoAns_exact/f1/total`` (the v2.0 script's breakdown).
    """
    unknown = sorted(set(predictions) - set(gold_answers))
    if unknown:
        raise ValueError(f"{len(unknown)} predictions for unknown question ids, e.g. {unknown[:5]}")
    em, f1, has_ans = {}, {}, {}
    missing = 0
    for qid, answers in gold_answers.items():
        golds = [a for a in answers if normalize_answer(a)] or [""]
        has_ans[qid] = golds != [""]
        if qid not in predictions:
            missing += 1
            em[qid], f1[qid] = 0, 0.0
            continue
        pred = predictions[qid]
        em[qid] = max(exact_match(g, pred) for g in golds)
        f1[qid] = max(f1_score(g, pred) for g in golds)

    def summary(ids: list[str]) -> tuple[float, float]:
        return (100.0 * sum(em[i] for i in ids) / len(ids), 100.0 * sum(f1[i] for i in ids) / len(ids))

    ids = list(gold_answers)
    out: dict[str, float] = {"total": len(ids), "missing": missing}
    if ids:
        out["exact"], out["f1"] = summary(ids)
    for name, keep in (("HasAns", True), ("NoAns", False)):
        sub = [i for i in ids if has_ans[i] == keep]
        if sub:
            out[f"{name}_exact"], out[f"{name}_f1"] = summary(sub)
            out[f"{name}_total"] = len(sub)
    return out
