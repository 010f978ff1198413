"""From logits to answers, in-process: window folding, thresholds and top-k (no server)."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.answers import fold_windows, predicted, ranked, score_options
from app.core.errors import InvalidInput
from contract.artifact import Manifest
from contract.encoding import sigmoid, softmax


def _manifest(problem_type: str, thresholds: list[float] | None = None) -> Manifest:
    return Manifest.model_validate({
        "task": "t", "labels": ["a", "b", "c"], "problem_type": problem_type,
        "thresholds": thresholds, "input_kind": "single", "max_length": 16,
        "model_inputs": ["input_ids"], "variants": {},
        "architecture": {"model_type": "bert", "layers": 1, "hidden": 4, "heads": 1,
                         "head_size": 4, "ffn": 4, "parameters": 1},
        "provenance": {"teacher": "x", "created": ""}})


LOGITS = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0], [1.0, 1.0, 1.0]], dtype=np.float32)


def test_single_label_windows_average_their_probabilities() -> None:
    logits, scores = fold_windows(LOGITS, [2, 1], "single_label", "mean")
    np.testing.assert_allclose(scores[0], softmax(LOGITS[:2]).mean(axis=0))
    np.testing.assert_allclose(scores[1], softmax(LOGITS[2:])[0])
    np.testing.assert_allclose(logits[0], LOGITS[:2].mean(axis=0))


def test_multi_label_windows_keep_each_labels_highest_score() -> None:
    _, scores = fold_windows(LOGITS, [3], "multi_label", "max")
    np.testing.assert_allclose(scores[0], sigmoid(LOGITS).max(axis=0))


def test_stored_thresholds_apply_unless_the_request_overrides_them() -> None:
    manifest = _manifest("multi_label", [0.9, 0.5, 0.2])
    scores = np.array([0.8, 0.6, 0.3])
    assert predicted(scores, manifest.labels, score_options(manifest, None, None)) == \
        [("b", 0.6), ("c", 0.3)]
    assert predicted(scores, manifest.labels, score_options(manifest, 0.7, None)) == [("a", 0.8)]
    assert predicted(scores, manifest.labels, score_options(manifest, {"a": 0.1}, 1)) == \
        [("a", 0.8)]


def test_threshold_for_an_unknown_label_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"unknown labels \['z'\]"):
        score_options(_manifest("multi_label"), {"z": 0.5}, None)


def test_threshold_outside_0_1_is_refused() -> None:
    with pytest.raises(InvalidInput, match="between 0 and 1"):
        score_options(_manifest("multi_label"), 1.5, None)


def test_top_k_ranks_by_score() -> None:
    assert ranked(np.array([0.2, 0.5, 0.3]), ["a", "b", "c"], 2) == [("b", 0.5), ("c", 0.3)]
