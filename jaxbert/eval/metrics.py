"""Classification metrics computed on host numpy arrays (exact, no sampling)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``[num_classes, num_classes]`` counts, rows = true label, columns = prediction."""
    predictions, labels = np.asarray(predictions).astype(int), np.asarray(labels).astype(int)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} differ in shape")
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (labels, predictions), 1)
    return cm


def accuracy_and_f1(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy, macro-F1 (mean over classes that occur in labels or predictions) and, for two
    classes, the F1 of class 1 (``f1``)."""
    cm = confusion_matrix(predictions, labels, num_classes)
    total = cm.sum()
    tp = np.diag(cm).astype(float)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = denom > 0
    out = {"accuracy": float(tp.sum() / total) if total else 0.0,
           "macro_f1": float(f1[present].mean()) if present.any() else 0.0}
    if num_classes == 2:
        out["f1"] = float(f1[1])
    return out
