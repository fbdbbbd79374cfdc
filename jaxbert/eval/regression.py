"""Regression metrics: MSE, and Pearson / Spearman correlation from ``scipy.stats``.

Spearman is Pearson of the ranks, ties given their average rank (``scipy.stats.spearmanr``).
A constant input (or fewer than two values) has no defined correlation: the result is ``nan``
(checked here, so scipy's ``ConstantInputWarning`` is not raised), never a silent 0.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["pearson", "rankdata", "regression_scores", "spearman"]

#: 1-based ranks, ties averaged (``scipy.stats.rankdata``, method ``"average"``).
rankdata = stats.rankdata


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"inputs differ in length: {x.size} vs {y.size}")
    return x, y


def _undefined(x: np.ndarray, y: np.ndarray) -> bool:
    return x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0


def pearson(x, y) -> float:
    """Pearson correlation of two equal-length sequences (``nan`` if undefined)."""
    x, y = _pair(x, y)
    return float("nan") if _undefined(x, y) else float(stats.pearsonr(x, y).statistic)


def spearman(x, y) -> float:
    """Spearman rank correlation of two equal-length sequences (``nan`` if undefined)."""
    x, y = _pair(x, y)
    return float("nan") if _undefined(x, y) else float(stats.spearmanr(x, y).statistic)


def regression_scores(predictions, targets) -> dict[str, float]:
    """``mse``, ``rmse``, ``pearson``, ``spearman`` of predictions against targets."""
    p, t = _pair(predictions, targets)
    mse = float(np.mean((p - t) ** 2)) if p.size else float("nan")
    return {"mse": mse, "rmse": float(np.sqrt(mse)), "pearson": pearson(p, t), "spearman": spearman(p, t)}
