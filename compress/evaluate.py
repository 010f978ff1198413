"""Stage 7: accuracy of an ONNX variant on a task split, through the serving encoder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.metrics import Scored, score
from compress.tasks import Examples, TextInput
from contract.artifact import AgreementCheck, Manifest, ProblemType
from contract.encoding import encode, load_tokenizer, pad_batch, probabilities
from contract.session import open_session


@dataclass(frozen=True)
class Evaluation:
    scored: Scored
    examples: int


class OrtPredictor:
    """An ONNX graph on ORT's CPU provider, fed by the serving tokenizer (torch-free)."""

    def __init__(self, graph: Path, tokenizer_json: Path, input_names: list[str], max_length: int,
                 pad_token_id: int = 0, threads: int | None = None) -> None:
        self.session = open_session(graph, threads)
        self.tokenizer = load_tokenizer(tokenizer_json, max_length)
        self.input_names = input_names
        self.pad_token_id = pad_token_id

    def logits(self, texts: Sequence[TextInput]) -> np.ndarray:
        feeds = pad_batch(encode(self.tokenizer, texts), self.input_names, self.pad_token_id)
        result: np.ndarray = self.session.run(None, feeds)[0]
        return result


def batched_logits(predictor: OrtPredictor, texts: Sequence[TextInput],
                   batch_size: int = 32) -> np.ndarray:
    """Logits of every text in input order, batching texts of similar length together."""
    rows = encode(predictor.tokenizer, texts)
    order = sorted(range(len(rows)), key=lambda i: rows[i].length)
    chunks = []
    for start in range(0, len(order), batch_size):
        picked = order[start : start + batch_size]
        feeds = pad_batch([rows[i] for i in picked], predictor.input_names,
                          predictor.pad_token_id)
        chunks.append((picked, predictor.session.run(None, feeds)[0]))
    width = chunks[0][1].shape[1] if chunks else 0
    logits = np.zeros((len(rows), width), dtype=np.float32)
    for picked, values in chunks:
        logits[picked] = values
    return logits


def agreement(candidate: OrtPredictor, reference: OrtPredictor, texts: Sequence[TextInput],
              name: str, problem_type: ProblemType) -> AgreementCheck:
    """How often a variant answers the reference's labels (multi-label: every label decision at
    0.5), and the largest logit difference, on the same texts."""
    got, expected = batched_logits(candidate, texts), batched_logits(reference, texts)
    if problem_type == "multi_label":
        same = float(np.mean((got > 0) == (expected > 0)))
    else:
        same = float(np.mean(got.argmax(axis=1) == expected.argmax(axis=1)))
    return AgreementCheck(variant=name, texts=len(texts), label_agreement=round(same, 6),
                          max_abs_logit_diff=round(float(np.abs(got - expected).max()), 6))


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
    predictor = OrtPredictor(model_path, tokenizer_path, input_names, max_length, pad_token_id)
    return [int(p) for p in batched_logits(predictor, texts, batch_size).argmax(axis=1)]


def evaluate_artifact(folder: Path, manifest: Manifest, variant: str, graph: Path,
                      examples: Examples) -> Evaluation:
    """Every metric of the task type for one variant of an artifact, with the thresholds and
    labels the artifact serves with."""
    predictor = OrtPredictor(graph, folder / manifest.tokenizer, manifest.model_inputs,
                             manifest.max_length, manifest.pad_token_id)
    scores = probabilities(batched_logits(predictor, examples.texts), manifest.problem_type)
    scored = score(manifest.problem_type, scores, examples.labels, manifest.thresholds)
    return Evaluation(scored, len(examples))
