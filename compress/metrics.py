"""Quality of a classifier's answers: accuracy and F1 for single- and multi-label tasks, the
majority-class baseline of the same split, and per-label thresholds tuned on a labelled split
(torch-free)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from compress.tasks import Label, MetricName, majority_label
from contract.artifact import DEFAULT_THRESHOLD, ProblemType

# Candidate thresholds when tuning: coarse is enough for small dev sets and cannot overfit much.
THRESHOLD_GRID = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))


def multi_hot(labels: Sequence[Label], count: int) -> np.ndarray:
    """[rows, count] 0/1 matrix of multi-label rows (a single index counts as a one-label set)."""
    matrix = np.zeros((len(labels), count), dtype=bool)
    for row, label in enumerate(labels):
        matrix[row, list(label) if isinstance(label, tuple) else [label]] = True
    return matrix


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 1.0)


def single_label_metrics(predicted: Sequence[int], gold: Sequence[Label], count: int) \
        -> dict[MetricName, float]:
    """Accuracy and macro-F1 (every label weighs the same, present in the data or not)."""
    pred = np.asarray(predicted, dtype=np.int64)
    true = np.asarray(gold, dtype=np.int64)
    matrix_p, matrix_t = multi_hot(list(pred), count), multi_hot(list(true), count)
    return {"accuracy": float(np.mean(pred == true)) if len(true) else 0.0,
            "macro_f1": float(np.mean(_per_label_f1(matrix_p, matrix_t)))}


def _per_label_f1(predicted: np.ndarray, gold: np.ndarray) -> np.ndarray:
    tp = (predicted & gold).sum(axis=0)
    fp = (predicted & ~gold).sum(axis=0)
    fn = (~predicted & gold).sum(axis=0)
    return _f1(tp, fp, fn)


def multi_label_metrics(predicted: np.ndarray, gold: np.ndarray) -> dict[MetricName, float]:
    """Micro-F1 (over all label decisions), macro-F1 (mean over labels) and subset accuracy."""
    tp = int((predicted & gold).sum())
    fp = int((predicted & ~gold).sum())
    fn = int((~predicted & gold).sum())
    return {"micro_f1": float(_f1(np.array(tp), np.array(fp), np.array(fn))),
            "macro_f1": float(np.mean(_per_label_f1(predicted, gold))),
            "accuracy": float(np.mean(np.all(predicted == gold, axis=1)))}


@dataclass(frozen=True)
class Scored:
    """Metrics of a model on a split, beside those of the majority baseline on the same split."""

    values: dict[MetricName, float]
    baseline: dict[MetricName, float]
    primary: MetricName

    @property
    def beats_baseline(self) -> bool:
        return self.values[self.primary] > self.baseline[self.primary] + 1e-9


def majority_baseline(problem_type: ProblemType, gold: Sequence[Label], count: int) \
        -> dict[MetricName, float]:
    """What always answering the most frequent class scores (multi-label: every label that is
    present in more than half of the rows)."""
    if problem_type == "single_label":
        return single_label_metrics([majority_label(gold)] * len(gold), gold, count)
    truth = multi_hot(gold, count)
    always = np.broadcast_to(truth.mean(axis=0) > 0.5, truth.shape)
    return multi_label_metrics(np.array(always), truth)


def score(problem_type: ProblemType, probabilities: np.ndarray, gold: Sequence[Label],
          thresholds: Sequence[float] | None = None) -> Scored:
    """Every metric of the task type for these probabilities, with the baseline's."""
    count = probabilities.shape[1]
    if problem_type == "single_label":
        values = single_label_metrics(list(probabilities.argmax(axis=1)), gold, count)
        primary: MetricName = "accuracy"
    else:
        cut = np.asarray(thresholds if thresholds is not None else [DEFAULT_THRESHOLD] * count)
        values = multi_label_metrics(probabilities >= cut, multi_hot(gold, count))
        primary = "micro_f1"
    return Scored(values, majority_baseline(problem_type, gold, count), primary)


def tune_thresholds(probabilities: np.ndarray, gold: Sequence[Label]) -> list[float]:
    """Per label, the grid threshold with the best F1 on these rows (ties: nearest to 0.5); a
    label never seen in them keeps 0.5."""
    truth = multi_hot(gold, probabilities.shape[1])
    chosen = []
    for label in range(probabilities.shape[1]):
        if not truth[:, label].any():
            chosen.append(DEFAULT_THRESHOLD)
            continue
        best = max(THRESHOLD_GRID, key=lambda t: (
            float(_per_label_f1(probabilities[:, [label]] >= t, truth[:, [label]])[0]),
            -abs(t - DEFAULT_THRESHOLD)))
        chosen.append(float(best))
    return chosen
