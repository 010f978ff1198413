"""Accuracy and batch-1 latency of PyTorch checkpoints and ONNX graphs, measured side by side.

Every row is timed in each round, round-robin, so that noise from a shared machine falls on all of
them alike; a row's figure is its median round. Tokenization is inside the timing for every row,
as it is for a served request.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from compress.checkpoint import load_classifier
from compress.finetune import hf_tokenize
from compress.tasks import Examples

Texts = Sequence[str | tuple[str, str]]


class Predictor(Protocol):
    def logits(self, texts: Texts) -> np.ndarray: ...


class TorchPredictor:
    """A classifier checkpoint run eagerly by PyTorch in fp32 (the 'out of the box' baseline)."""

    def __init__(self, checkpoint: Path, max_length: int, fixed_length: bool = False) -> None:
        """`fixed_length` pads every input to `max_length` (the 'no dynamic sequence length'
        baseline of the FastFormers tables); otherwise a batch pads to its longest input."""
        self.model, self.tokenizer = load_classifier(checkpoint)
        self.max_length = min(max_length, int(self.tokenizer.model_max_length or max_length))
        self.padding: str | bool = "max_length" if fixed_length else True

    def logits(self, texts: Texts) -> np.ndarray:
        batch = hf_tokenize(self.tokenizer, list(texts), self.max_length, padding=self.padding,
                            return_tensors="pt")
        with torch.inference_mode():
            return self.model(**batch).logits.numpy()


def predictions(predictor: Predictor, texts: Texts, batch_size: int = 32) -> np.ndarray:
    """Argmax label of every text, batching similar lengths (accuracy, not speed)."""
    order = sorted(range(len(texts)), key=lambda i: len(str(texts[i])))
    out = np.zeros(len(texts), dtype=np.int64)
    for start in range(0, len(order), batch_size):
        picked = order[start : start + batch_size]
        out[picked] = predictor.logits([texts[i] for i in picked]).argmax(axis=-1)
    return out


def accuracy(predictor: Predictor, examples: Examples) -> float:
    """Share of `examples` labelled correctly."""
    predicted = predictions(predictor, examples.texts)
    return float(np.mean(predicted == np.asarray(examples.labels)))


@dataclass(frozen=True)
class Speed:
    ms_per_sentence: float
    rounds_ms: list[float]

    @property
    def sentences_per_s(self) -> float:
        return 1000.0 / self.ms_per_sentence


def interleaved(runs: Mapping[str, Callable[[], float]], rounds: int,
                on_round: Callable[[dict[str, float]], None] | None = None) \
        -> dict[str, list[float]]:
    """The one timer of side-by-side figures: every run once per round, in turn, `rounds` times
    (shared machines drift: runs timed minutes apart are not comparable, runs in one round are);
    each run returns its own figure (a rate, or ms). `on_round` sees each round's figures."""
    figures: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        this_round = {}
        for name, run in runs.items():
            this_round[name] = run()
            figures[name].append(this_round[name])
        if on_round is not None:
            on_round(this_round)
    return figures


def batch1_side_by_side(predictors: dict[str, Predictor], texts: Texts, rounds: int = 3,
                        threads: int = 1) -> dict[str, Speed]:
    """ms per sentence at batch 1 for every predictor, interleaved over `rounds`."""
    torch.set_num_threads(threads)
    for predictor in predictors.values():  # warm-up: first calls allocate and plan
        for text in texts[:5]:
            predictor.logits([text])

    def ms_per_sentence(predictor: Predictor) -> Callable[[], float]:
        def run() -> float:
            started = time.perf_counter()
            for text in texts:
                predictor.logits([text])
            return 1000.0 * (time.perf_counter() - started) / len(texts)
        return run

    per_round = interleaved({name: ms_per_sentence(p) for name, p in predictors.items()}, rounds)
    return {name: Speed(statistics.median(times), [round(t, 3) for t in times])
            for name, times in per_round.items()}
