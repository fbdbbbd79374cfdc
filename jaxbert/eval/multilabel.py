"""Multi-label metrics: micro/macro F1 of multi-hot predictions and per-label threshold tuning.

``labels`` and ``predictions`` are ``[n, num_labels]`` arrays of 0/1; ``probs`` are sigmoid
outputs in ``[0, 1]``.

* micro F1 pools every (example, label) decision: ``2 TP / (2 TP + FP + FN)``;
* macro F1 is the mean of the per-label F1 (a label with no gold and no predicted positives
  has F1 0 here and is still averaged, as scikit-learn does with ``zero_division=0``);
* ``subset_accuracy``: the predicted label set equals the gold set.

:func:`tune_thresholds` picks, for each label independently, the threshold that maximises
that label's F1 on the given (validation) data, which also maximises macro F1. Candidates
are midpoints between consecutive distinct probabilities, so the choice does not sit on a
training-set value; ties go to the threshold closest to 0.5. A label without gold positives
keeps ``default``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["apply_thresholds", "multilabel_scores", "tune_thresholds"]


def _as_binary(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [n, num_labels], got shape {x.shape}")
    if not np.isin(x, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0/1")
    return x.astype(bool)


def multilabel_scores(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """``micro_f1``, ``macro_f1``, micro ``precision``/``recall``, ``subset_accuracy``, per-label F1."""
    y, p = _as_binary(labels, "labels"), _as_binary(predictions, "predictions")
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and predictions {p.shape} differ in shape")
    tp = (y & p).sum(0).astype(float)
    fp = (~y & p).sum(0).astype(float)
    fn = (y & ~p).sum(0).astype(float)
    denom = 2 * tp + fp + fn
    per_label = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    TP, FP, FN = tp.sum(), fp.sum(), fn.sum()
    out = {
        "micro_f1": float(2 * TP / (2 * TP + FP + FN)) if (2 * TP + FP + FN) else 0.0,
        "macro_f1": float(per_label.mean()) if per_label.size else 0.0,
        "precision": float(TP / (TP + FP)) if TP + FP else 0.0,
        "recall": float(TP / (TP + FN)) if TP + FN else 0.0,
        "subset_accuracy": float((y == p).all(1).mean()) if len(y) else 0.0,
    }
    out["per_label_f1"] = per_label.tolist()
    return out


def apply_thresholds(probs: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """``probs > threshold`` per label, as int32 0/1."""
    probs = np.asarray(probs, np.float64)
    t = np.broadcast_to(np.asarray(thresholds, np.float64), probs.shape[-1:])
    return (probs > t).astype(np.int32)


def _best_threshold(p: np.ndarray, y: np.ndarray, default: float) -> float:
    n_pos = int(y.sum())
    if n_pos == 0:
        return default
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    # Predicting the top k as positive, for each k where the next probability differs.
    tp = np.cumsum(ys)
    k = np.arange(1, len(ps) + 1)
    last = np.r_[ps[1:] != ps[:-1], True]  # cut only between distinct values
    f1 = np.where(last, 2 * tp / (k + n_pos), -1.0)
    cut_hi = ps  # predicted positive: p > t with t in [next value, this value)
    cut_lo = np.r_[ps[1:], min(ps[-1], 0.0) - 1e-6]
    thresholds = (cut_hi + cut_lo) / 2  # below every probability for k = n (all positive)
    best = f1.max()
    ties = np.flatnonzero(f1 >= best - 1e-12)
    return float(thresholds[ties[np.argmin(np.abs(thresholds[ties] - 0.5))]])


def tune_thresholds(probs: np.ndarray, labels: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per-label thresholds (float64 ``[num_labels]``) maximising each label's F1 on this data."""
    probs = np.asarray(probs, np.float64)
    y = _as_binary(labels, "labels")
    if probs.shape != y.shape:
        raise ValueError(f"probs {probs.shape} and labels {y.shape} differ in shape")
    return np.array([_best_threshold(probs[:, j], y[:, j], default) for j in range(y.shape[1])])
