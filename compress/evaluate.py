"""Stage 7: accuracy of an ONNX variant on a task split, through the serving encoder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from compress.encoding import encode, load_tokenizer, pad_batch
from compress.tasks import Examples


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    examples: int
    predictions: list[int]


class OrtPredictor:
    """An ONNX graph on ORT's CPU provider, fed by the serving tokenizer (torch-free)."""

    def __init__(self, graph: Path, tokenizer_json: Path, input_names: list[str], max_length: int,
                 pad_token_id: int = 0, threads: int | None = None) -> None:
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(graph), options,
                                            providers=["CPUExecutionProvider"])
        self.tokenizer = load_tokenizer(tokenizer_json, max_length)
        self.input_names = input_names
        self.pad_token_id = pad_token_id

    def logits(self, texts: Sequence[str | tuple[str, str]]) -> np.ndarray:
        feeds = pad_batch(encode(self.tokenizer, texts), self.input_names, self.pad_token_id)
        result: np.ndarray = self.session.run(None, feeds)[0]
        return result


def predict(
    model_path: Path,
    tokenizer_path: Path,
    texts: list[str | tuple[str, str]],
    input_names: list[str],
    max_length: int,
    pad_token_id: int = 0,
    batch_size: int = 32,
) -> list[int]:
    """Predicted label index for every text, batching texts of similar length together."""
    predictor = OrtPredictor(model_path, tokenizer_path, input_names, max_length, pad_token_id)
    rows = encode(predictor.tokenizer, texts)
    order = sorted(range(len(rows)), key=lambda i: rows[i].length)
    predictions = np.zeros(len(rows), dtype=np.int64)
    for start in range(0, len(order), batch_size):
        picked = order[start : start + batch_size]
        feeds = pad_batch([rows[i] for i in picked], input_names, pad_token_id)
        predictions[picked] = predictor.session.run(None, feeds)[0].argmax(axis=-1)
    return [int(p) for p in predictions]


def evaluate(
    model_path: Path,
    tokenizer_path: Path,
    examples: Examples,
    input_names: list[str],
    max_length: int,
    pad_token_id: int = 0,
) -> Evaluation:
    """Accuracy of `model_path` on `examples`."""
    predicted = predict(
        model_path, tokenizer_path, examples.texts, input_names, max_length, pad_token_id
    )
    correct = sum(int(p == y) for p, y in zip(predicted, examples.labels, strict=True))
    return Evaluation(correct / max(1, len(examples)), len(examples), predicted)
