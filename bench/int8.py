"""`python -m bench int8 ARTIFACT`: the INT8 variants side by side on the artifact's task.

From the artifact's fp32 graph: ORT fusion, then (with --dynamic) dynamic INT8 (`quantize_dynamic`,
one activation scale per tensor per call) and static INT8 graphs (scales calibrated on train texts),
one per `--static` WEIGHTS:ALPHA (weight format x SmoothQuant alpha). For each: label agreement and
the largest logit change between batch 1 and mixed batches (random dev sentences batched together,
as a busy server batches strangers), dev accuracy both ways, and speed at batch 1 and in
length-sorted batches, 1 thread, timed in interleaved rounds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from compress.optimize import optimize
from compress.quantize import (
    CALIBRATION_PERCENTILE,
    WEIGHT_FORMATS,
    WeightFormat,
    calibration_batches,
    quantize_int8,
    quantize_static_int8,
)
from compress.smooth import DEFAULT_ALPHA as SMOOTH_ALPHA
from compress.speed import interleaved
from compress.tasks import Examples, default_data_dir, get_task, load_split
from contract.artifact import Manifest, read_manifest
from contract.encoding import EncodedText, encode, load_tokenizer
from contract.predictor import OnnxPredictor


@dataclass(frozen=True)
class Fidelity:
    agreement: float  # labels at batch 1 == labels in mixed batches
    max_logit_diff: float
    accuracy_b1: float
    accuracy_mixed: float
    agreement_fp32: float  # labels at batch 1 == fp32's labels at batch 1


class Runner:
    """One graph on one thread (the serving predictor), fed encoded rows."""

    def __init__(self, graph: Path, manifest: Manifest) -> None:
        self.predictor = OnnxPredictor(graph, None, manifest.model_inputs, manifest.max_length,
                                       manifest.pad_token_id, threads=1)
        self.width = len(manifest.labels)

    def batch1(self, rows: list[EncodedText]) -> np.ndarray:
        return np.concatenate([self.predictor.run_rows([row]) for row in rows])

    def batched(self, rows: list[EncodedText], order: list[int], size: int) -> np.ndarray:
        logits = np.zeros((len(rows), self.width), dtype=np.float32)
        for start in range(0, len(order), size):
            picked = order[start : start + size]
            logits[picked] = self.predictor.run_rows([rows[i] for i in picked])
        return logits


def fidelity(runner: Runner, rows: list[EncodedText], labels: np.ndarray,
             reference: np.ndarray, batch: int) -> Fidelity:
    """Batch 1 against random (mixed-length) batches of `batch`."""
    mixed_order = list(range(len(rows)))
    random.Random(1).shuffle(mixed_order)
    alone, mixed = runner.batch1(rows), runner.batched(rows, mixed_order, batch)
    return Fidelity(
        agreement=float(np.mean(alone.argmax(1) == mixed.argmax(1))),
        max_logit_diff=float(np.abs(alone - mixed).max()),
        accuracy_b1=float(np.mean(alone.argmax(1) == labels)),
        accuracy_mixed=float(np.mean(mixed.argmax(1) == labels)),
        agreement_fp32=float(np.mean(alone.argmax(1) == reference.argmax(1))),
    )


def speeds(runners: dict[str, Runner], rows: list[EncodedText], batch: int, rounds: int) \
        -> dict[str, list[float]]:
    """Sentences/s at batch 1 and in length-sorted batches, every graph in every round."""
    by_length = sorted(range(len(rows)), key=lambda i: rows[i].length)

    def rate(fn: Callable[[], object]) -> Callable[[], float]:
        def timed() -> float:
            started = time.perf_counter()
            fn()
            return len(rows) / (time.perf_counter() - started)
        return timed

    runs: dict[str, Callable[[], float]] = {}
    for name, runner in runners.items():
        runner.batch1(rows[:10])  # warm-up
        runs[f"{name} b1"] = rate(partial(runner.batch1, rows))
        runs[f"{name} b{batch}"] = rate(partial(runner.batched, rows, by_length, batch))
    return interleaved(runs, rounds)


@dataclass(frozen=True)
class StaticConfig:
    """One static INT8 graph to build: weight format and SmoothQuant strength."""

    weights: WeightFormat
    smooth_alpha: float

    @classmethod
    def parse(cls, spec: str) -> StaticConfig:
        """`s7:0.8` -> s7 weights, alpha 0.8."""
        weights, _, alpha = spec.partition(":")
        if weights not in WEIGHT_FORMATS:
            raise argparse.ArgumentTypeError(f"{spec}: weights must be one of {WEIGHT_FORMATS}")
        return cls(weights, float(alpha or SMOOTH_ALPHA))

    @property
    def name(self) -> str:
        return f"int8 static {self.weights} a{self.smooth_alpha:g}"


def build_graphs(artifact: Path, manifest: Manifest, train: Examples, folder: Path,
                 calibration: int, percentile: float, configs: list[StaticConfig],
                 dynamic: bool) -> dict[str, Path]:
    """fp32 (fused), optionally dynamic INT8, and one static INT8 graph per config, written to
    `folder`; every static graph is calibrated on the same train texts."""
    fused = folder / "fused.onnx"
    optimize(artifact / manifest.variants["fp32"].file, fused, manifest.architecture)
    graphs = {"fp32 fused": fused}
    if dynamic:
        graphs["int8 dynamic s8"] = folder / "dynamic.onnx"
        quantize_int8(fused, graphs["int8 dynamic s8"], weights="s8")
    texts = [train.texts[i] for i in random.Random(0).sample(range(len(train)),
                                                             min(calibration, len(train)))]
    for index, config in enumerate(configs):
        graphs[config.name] = folder / f"static-{index}.onnx"
        started = time.perf_counter()
        quantize_static_int8(fused, graphs[config.name], calibration_batches(
            artifact / manifest.tokenizer, texts, manifest.model_inputs, manifest.max_length,
            manifest.pad_token_id), percentile, smooth_alpha=config.smooth_alpha,
            weights=config.weights)
        print(f"{config.name}: calibrated on {len(texts)} train texts (percentile "
              f"{percentile}) in {time.perf_counter() - started:.1f} s")
    return graphs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench int8", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--calibration", type=int, default=500, help="train texts to calibrate on")
    parser.add_argument("--percentile", type=float, default=CALIBRATION_PERCENTILE)
    parser.add_argument("--static", type=StaticConfig.parse, nargs="+",
                        default=[StaticConfig("s7", SMOOTH_ALPHA), StaticConfig("s8", SMOOTH_ALPHA)],
                        help="static graphs as WEIGHTS:ALPHA (weights s7, s8 or u8; SmoothQuant "
                             "alpha, 0 = off), e.g. s7:0.8 s8:0")
    parser.add_argument("--dynamic", action="store_true", help="also the dynamic INT8 graph")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--speed-examples", type=int, default=400)
    args = parser.parse_args(argv)

    manifest = read_manifest(args.artifact)
    spec = get_task(manifest.task)
    train = load_split(spec, "train", args.data_dir)
    dev = load_split(spec, "dev", args.data_dir)
    tokenizer = load_tokenizer(args.artifact / manifest.tokenizer, manifest.max_length)
    rows = encode(tokenizer, dev.texts)
    labels = np.asarray(dev.labels)
    with tempfile.TemporaryDirectory() as tmp:
        graphs = build_graphs(args.artifact, manifest, train, Path(tmp), args.calibration,
                              args.percentile, args.static, args.dynamic)
        runners = {name: Runner(path, manifest) for name, path in graphs.items()}
        reference = runners["fp32 fused"].batch1(rows)
        print(f"\n{len(rows)} {spec.name} dev texts; mixed batches of {args.batch} (random order)")
        print("| graph | labels b1 = mixed | max abs logit diff | acc b1 | acc mixed "
              "| labels = fp32 (b1) |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, runner in runners.items():
            f = fidelity(runner, rows, labels, reference, args.batch)
            print(f"| {name} | {100 * f.agreement:.2f}% | {f.max_logit_diff:.2e} | "
                  f"{100 * f.accuracy_b1:.2f} | {100 * f.accuracy_mixed:.2f} | "
                  f"{100 * f.agreement_fp32:.2f}% |")
        timed = [rows[i] for i in random.Random(2).sample(range(len(rows)),
                                                          min(args.speed_examples, len(rows)))]
        figures = speeds(runners, timed, args.batch, args.rounds)
    print(f"\nsentences/s, 1 thread, {len(timed)} texts, median of {args.rounds} interleaved "
          "rounds (rounds in brackets)")
    for name, values in figures.items():
        print(f"{name:>22}: {statistics.median(values):8.1f}  {[round(v) for v in values]}")
    return 0
