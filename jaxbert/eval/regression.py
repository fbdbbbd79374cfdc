"""Regression metrics: MSE, Pearson and Spearman correlation (numpy, exact).

Spearman is Pearson of the ranks, ties given their average rank (what ``scipy.stats.spearmanr``
does). A constant input has no defined correlation: the result is ``nan`` (scipy warns and
returns ``nan`` too), never a silent 0.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pearson", "rankdata", "regression_scores", "spearman"]


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"inputs differ in length: {x.size} vs {y.size}")
    return x, y


def pearson(x, y) -> float:
    x, y = _pair(x, y)
    if x.size < 2:
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc * xc).sum() * (yc * yc).sum())
    return float((xc * yc).sum() / denom) if denom > 0 else float("nan")


def rankdata(x) -> np.ndarray:
    """1-based ranks, ties averaged."""
    x = np.asarray(x, np.float64).ravel()
    order = np.argsort(x, kind="stable")
    sx = x[order]
    starts = np.r_[0, np.flatnonzero(sx[1:] != sx[:-1]) + 1]
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(x, y) -> float:
    x, y = _pair(x, y)
    return pearson(rankdata(x), rankdata(y))


def regression_scores(predictions, targets) -> dict[str, float]:
    """``mse``, ``rmse``, ``pearson``, ``spearman`` of predictions against targets."""
    p, t = _pair(predictions, targets)
    mse = float(np.mean((p - t) ** 2)) if p.size else float("nan")
    return {"mse": mse, "rmse": float(np.sqrt(mse)), "pearson": pearson(p, t), "spearman": spearman(p, t)}
