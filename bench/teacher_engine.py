"""`python -m bench.teacher_engine --teacher DIR`: the teacher's logits on PyTorch and on its fused
fp32 ONNX graph, side by side on the same texts (interleaved rounds), with their largest logit
difference: what `compress/teacher_engine.py` chooses between for large labelling jobs."""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from compress.speed import interleaved
from compress.tasks import default_data_dir, get_task, load_split
from compress.teacher_engine import Engine, onnx_engine, torch_engine


def _rate(engine: Engine, texts: list[str | tuple[str, str]]) -> Callable[[], float]:
    def run() -> float:
        started = time.perf_counter()
        engine(texts)
        return len(texts) / (time.perf_counter() - started)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", type=Path, required=True, help="a classifier checkpoint")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--texts", type=int, default=512, help="train texts labelled per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    args = parser.parse_args(argv)
    train = load_split(get_task(args.task), "train", args.data_dir)
    texts = random.Random(0).sample(list(train.texts), min(args.texts, len(train)))
    with tempfile.TemporaryDirectory() as scratch:
        engines = {"pytorch": torch_engine(args.teacher, args.max_length),
                   "onnx fused fp32": onnx_engine(args.teacher, Path(scratch), args.max_length),
                   "pytorch bf16": torch_engine(args.teacher, args.max_length, bf16=True)}
        reference = engines["pytorch"](texts)
        for name in ("onnx fused fp32", "pytorch bf16"):
            got = engines[name](texts)
            print(f"{name} against pytorch fp32 on {len(texts)} texts: labels equal "
                  f"{100 * np.mean(got.argmax(-1) == reference.argmax(-1)):.2f}%, max |logit diff| "
                  f"{np.abs(got - reference).max():.1e}")
        rates = interleaved({name: _rate(engine, texts) for name, engine in engines.items()},
                            args.rounds, lambda r: print(", ".join(f"{k} {v:.1f}/s"
                                                                  for k, v in r.items())))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"{len(texts)} {args.task} train texts, {args.rounds} rounds, medians: "
          + ", ".join(f"{k} {v:.1f} texts/s" for k, v in medians.items())
          + f"; ONNX / PyTorch {medians['onnx fused fp32'] / medians['pytorch']:.2f}x, "
          f"PyTorch bf16 / ONNX {medians['pytorch bf16'] / medians['onnx fused fp32']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
