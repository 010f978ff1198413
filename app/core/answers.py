"""From a model's logits to a user's answer: scores by problem type, windows of a long text folded
into one result, top-k labels and per-label thresholds (from the artifact, overridable per request).
Both protocols answer through these functions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from app.core.errors import InvalidInput
from contract.artifact import DEFAULT_THRESHOLD, Manifest, ProblemType
from contract.encoding import probabilities

Aggregation = Literal["mean", "max"]


@dataclass(frozen=True)
class ScoreOptions:
    """How a request wants its scores turned into labels."""

    thresholds: np.ndarray  # [labels]; used by multi-label tasks
    top_k: int | None


def score_options(manifest: Manifest, threshold: float | dict[str, float] | None,
                  top_k: int | None) -> ScoreOptions:
    """The thresholds (artifact's, or the request's) and top_k of a request; 422 when they do
    not fit the task."""
    count = len(manifest.labels)
    stored = np.asarray(manifest.thresholds or [DEFAULT_THRESHOLD] * count, dtype=np.float64)
    if top_k is not None and top_k < 1:
        raise InvalidInput(f"top_k must be at least 1, got {top_k}")
    if threshold is None:
        return ScoreOptions(stored, top_k)
    if manifest.problem_type != "multi_label":
        raise InvalidInput(f"threshold applies to multi_label tasks; task {manifest.task} "
                           "is single_label (use top_k to see more labels)")
    chosen = stored.copy()
    if isinstance(threshold, dict):
        unknown = sorted(set(threshold) - set(manifest.labels))
        if unknown:
            raise InvalidInput(f"threshold names unknown labels {unknown}; labels are "
                               f"{manifest.labels}")
        for label, value in threshold.items():
            chosen[manifest.labels.index(label)] = value
    else:
        chosen[:] = threshold
    if not np.all((chosen >= 0) & (chosen <= 1)):
        raise InvalidInput("thresholds are scores between 0 and 1")
    return ScoreOptions(chosen, top_k)


def aggregation_for(problem_type: ProblemType, setting: str) -> Aggregation:
    """'auto': windows of one text average their class probabilities (single-label) or keep
    each label's highest score (multi-label: a label present in one window is present)."""
    if setting == "auto":
        return "max" if problem_type == "multi_label" else "mean"
    return "max" if setting == "max" else "mean"


def fold_windows(logits: np.ndarray, counts: Sequence[int], problem_type: ProblemType,
                 how: Aggregation) -> tuple[np.ndarray, np.ndarray]:
    """Per input, the logits and probabilities of its windows (`counts[i]` rows each) folded
    into one row: probabilities by `how`, logits by the same operation."""
    scores = probabilities(logits, problem_type)
    folded_logits = np.zeros((len(counts), logits.shape[1]), dtype=np.float32)
    folded_scores = np.zeros((len(counts), logits.shape[1]), dtype=np.float64)
    start = 0
    for index, count in enumerate(counts):
        window = slice(start, start + count)
        reduce = np.max if how == "max" else np.mean
        folded_logits[index] = reduce(logits[window], axis=0)
        folded_scores[index] = reduce(scores[window], axis=0)
        start += count
    return folded_logits, folded_scores


def ranked(scores: np.ndarray, labels: Sequence[str], top_k: int | None,
           thresholds: np.ndarray | None = None) -> list[tuple[str, float]]:
    """Labels by decreasing score, those reaching their threshold if given, the best `top_k` of
    them (all if None)."""
    order = [int(i) for i in np.argsort(-scores, kind="stable")
             if thresholds is None or scores[i] >= thresholds[i]]
    return [(labels[i], float(scores[i])) for i in order[:top_k]]


def predicted(scores: np.ndarray, labels: Sequence[str], options: ScoreOptions) \
        -> list[tuple[str, float]]:
    """Multi-label: the labels whose score reaches their threshold, best first (top_k caps)."""
    return ranked(scores, labels, options.top_k, options.thresholds)
