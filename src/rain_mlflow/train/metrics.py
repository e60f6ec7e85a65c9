"""Classification metrics of one split (positive class = rain), from sklearn; the baselines are in `baselines.py`."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, matthews_corrcoef, precision_recall_fscore_support


def split_metrics(prefix: str, labels: np.ndarray, predictions: np.ndarray, loss: float) -> dict[str, float]:
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predictions, labels=[1], average="binary", pos_label=1, zero_division=0)
    return {
        f"{prefix}_loss": float(loss),
        f"{prefix}_accuracy": float((labels == predictions).mean()),
        f"{prefix}_precision": float(precision),
        f"{prefix}_recall": float(recall),
        f"{prefix}_f1": float(f1),
        f"{prefix}_mcc": float(matthews_corrcoef(labels, predictions)),  # 0.0 for a constant predictor
        f"{prefix}_windows": int(len(labels)),  # the evaluation set's size: what a change in accuracy can mean
    }


def confusion(labels: np.ndarray, predictions: np.ndarray) -> list[list[int]]:
    """[[tn, fp], [fn, tp]] with rain = 1."""
    return confusion_matrix(labels, predictions, labels=[0, 1]).tolist()
