"""Training evaluation metrics on logits (N, labels) and multi-hot targets (N, labels): accuracy and mAP."""

from __future__ import annotations

import numpy as np


def accuracy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Share of clips whose top-scoring label is one of their labels."""
    top = logits.argmax(axis=1)
    return float(targets[np.arange(len(top)), top].astype(np.float64).mean())


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP of one label: the mean, over its positive clips, of the precision at that clip's rank (ties: a positive
    clip counts every clip scored at least as high, as scikit-learn's average_precision_score does)."""
    positives = positives.astype(bool)
    if not positives.any():
        return float("nan")
    aps = []
    for s in scores[positives]:
        ranked = scores >= s
        aps.append(positives[ranked].sum() / ranked.sum())
    return float(np.mean(aps))


def mean_average_precision(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean AP over the labels that have at least one positive clip (AudioSet's mAP)."""
    aps = [average_precision(logits[:, k], targets[:, k]) for k in range(targets.shape[1]) if targets[:, k].any()]
    return float(np.mean(aps)) if aps else float("nan")
