"""Stage 7: accuracy of an ONNX variant on a task split, through the serving encoder."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.metrics import Scored, score
from compress.tasks import Examples, TextInput
from contract.artifact import AgreementCheck, Manifest, ProblemType
from contract.encoding import probabilities
from contract.predictor import OnnxPredictor


@dataclass(frozen=True)
class Evaluation:
    scored: Scored
    examples: int


# A row's logits alone and in any batch may differ by float rounding at most; labels never.
INVARIANCE_TOLERANCE = 1e-4


def _compare(got: np.ndarray, expected: np.ndarray, problem_type: ProblemType) -> tuple[float,
                                                                                         float]:
    """Label agreement (multi-label: every label decision at 0.5) and largest logit change."""
    if problem_type == "multi_label":
        same = float(np.mean((got > 0) == (expected > 0)))
    else:
        same = float(np.mean(got.argmax(axis=1) == expected.argmax(axis=1)))
    return round(same, 6), round(float(np.abs(got - expected).max()), 6)


def agreement(candidate: OnnxPredictor, reference: OnnxPredictor, texts: Sequence[TextInput],
              name: str, problem_type: ProblemType) -> AgreementCheck:
    """How often a variant answers the reference's labels, and the largest logit difference,
    on the same texts."""
    same, diff = _compare(candidate.logits_in_batches(texts), reference.logits_in_batches(texts),
                          problem_type)
    return AgreementCheck(variant=name, texts=len(texts), label_agreement=same,
                          max_abs_logit_diff=diff)


def batch_invariance(predictor: OnnxPredictor, texts: Sequence[TextInput], name: str,
                     problem_type: ProblemType, batch_size: int = 16) -> AgreementCheck:
    """Each text run alone against the same texts in random batches of `batch_size` (mixed
    lengths, so most rows are padded, next to strangers): a served label must not depend on
    which other requests share its batch."""
    rows = predictor.encode(texts)
    alone = np.concatenate([predictor.run_rows([row]) for row in rows])
    order = list(range(len(rows)))
    random.Random(1).shuffle(order)
    mixed = np.zeros_like(alone)
    for start in range(0, len(order), batch_size):
        picked = order[start : start + batch_size]
        mixed[picked] = predictor.run_rows([rows[i] for i in picked])
    same, diff = _compare(mixed, alone, problem_type)
    return AgreementCheck(variant=name, reference="batch 1", texts=len(rows),
                          label_agreement=same, max_abs_logit_diff=diff)


def is_batch_invariant(check: AgreementCheck) -> bool:
    """Whether a `batch_invariance` check passed."""
    return check.label_agreement == 1.0 and check.max_abs_logit_diff <= INVARIANCE_TOLERANCE


def predict(
    model_path: Path,
    tokenizer_path: Path,
    texts: list[TextInput],
    input_names: list[str],
    max_length: int,
    pad_token_id: int = 0,
    batch_size: int = 32,
) -> list[int]:
    """Predicted label index for every text (single-label tasks)."""
    predictor = OnnxPredictor(model_path, tokenizer_path, input_names, max_length, pad_token_id)
    return [int(p) for p in predictor.logits_in_batches(texts, batch_size).argmax(axis=1)]


def evaluate_artifact(folder: Path, manifest: Manifest, variant: str, graph: Path,
                      examples: Examples) -> Evaluation:
    """Every metric of the task type for one variant of an artifact, with the thresholds and
    labels the artifact serves with."""
    predictor = OnnxPredictor(graph, folder / manifest.tokenizer, manifest.model_inputs,
                             manifest.max_length, manifest.pad_token_id)
    scores = probabilities(predictor.logits_in_batches(examples.texts), manifest.problem_type)
    scored = score(manifest.problem_type, scores, examples.labels, manifest.thresholds)
    return Evaluation(scored, len(examples))
