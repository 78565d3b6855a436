"""Closed-set identity classification metrics (LIMA-style data, class 0 = 'unknown')."""
from __future__ import annotations

import numpy as np

__all__ = ["closed_set_metrics", "average_precision", "top_k_accuracy"]


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Non-interpolated AP of one class: mean over its positives of precision at their rank.

    Items are ranked by descending score, ties broken by item index (stable), the same
    convention as the retrieval metrics (scikit-learn's ``average_precision_score`` instead
    treats tied scores as one threshold, which differs only when positives and negatives tie).
    Returns NaN when there is no positive.
    """
    positive = np.asarray(positive, bool)
    npos = int(positive.sum())
    if npos == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    hits = positive[order]
    ranks = np.flatnonzero(hits) + 1
    return float(np.mean(np.arange(1, npos + 1) / ranks))


def top_k_accuracy(scores, labels, k: int) -> float:
    """Fraction of rows of ``scores`` [N, C] whose label is among the ``k`` highest-scoring
    classes (ties broken by class index, as argmax does: a class ties a higher one only if it
    comes first). ``k = 1`` is prec@1. NaN for N = 0."""
    scores = np.asarray(scores)
    labels = np.asarray(labels).astype(np.int64).ravel()
    if not len(labels):
        return float("nan")
    own = scores[np.arange(len(labels)), labels][:, None]
    cols = np.arange(scores.shape[1])[None, :]
    ahead = (scores > own) | ((scores == own) & (cols < labels[:, None]))
    return float(np.mean(ahead.sum(axis=1) < k))


def closed_set_metrics(scores, labels, unknown_class: int | None = 0) -> dict:
    """prec@1, mAP over classes and the confusion matrix of class scores [N, C] for labels [N].

    - ``prec1_all``: fraction of frames whose argmax class (first on ties) equals the label;
    - ``prec1_pid``: the same over frames whose label is not ``unknown_class`` (p-ID); the argmax
      still runs over all classes, so a known person predicted as 'unknown' is an error;
    - ``mAP_all``: mean over classes 0..C-1 of ``average_precision(scores[:, c], labels == c)``
      over all N frames; classes without a positive frame are skipped (their number is
      ``classes_without_positives``);
    - ``mAP_pid``: the same mean over the classes other than ``unknown_class`` (each AP still
      ranks all N frames);
    - ``confusion``: int64 [C, C], rows = true class, columns = predicted class;
    - ``ap_per_class``: float64 [C], NaN for classes without positives.

    ``unknown_class=None`` (or a negative value) means there is no unknown class: the p-ID
    figures then equal the ALL figures. Returns a dict with those keys (NaN where undefined).
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels).astype(np.int64).ravel()
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores must be [N, C] with N = len(labels), got {scores.shape} and {labels.shape}")
    n, c = scores.shape
    if n and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"labels must be class indices in [0, {c}), "
                         f"got range [{labels.min()}, {labels.max()}]")
    unknown = None if unknown_class is None or unknown_class < 0 else int(unknown_class)
    pred = scores.argmax(axis=1) if n else np.zeros(0, np.int64)
    correct = pred == labels
    known = labels != unknown if unknown is not None else np.ones(n, bool)
    ap = np.array([average_precision(scores[:, k], labels == k) for k in range(c)])
    has_pos = ~np.isnan(ap)
    pid_cls = np.arange(c) != unknown if unknown is not None else np.ones(c, bool)
    confusion = np.zeros((c, c), np.int64)
    np.add.at(confusion, (labels, pred), 1)

    def mean(x):
        return float(np.mean(x)) if len(x) else float("nan")

    return {"prec1_all": mean(correct), "prec1_pid": mean(correct[known]),
            "mAP_all": mean(ap[has_pos]), "mAP_pid": mean(ap[has_pos & pid_cls]),
            "confusion": confusion, "ap_per_class": ap,
            "classes_without_positives": int((~has_pos).sum()), "num_frames": n,
            "num_pid_frames": int(known.sum())}
