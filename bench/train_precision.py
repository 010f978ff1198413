"""`python -m bench.train_precision --task sst2`: the same fine-tuning in fp32 and under bf16
autocast, side by side: the same model, data, seed and number of steps, with the time each took
and the dev accuracy each reached (scored in PyTorch fp32, as the build scores a checkpoint).

bf16 pays only where the CPU computes it natively (AVX512-BF16 or AMX; `compress/device.py`
chooses it there by default); elsewhere autocast emulates it and is slower, which this shows too.
The runs go one after the other in this process; `--order` alternates which goes first between
calls, and CPU seconds are printed beside wall seconds because a shared machine moves wall time.
The checkpoints stay in `--out/<precision>` (package them with `python -m compress package`).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from compress.device import PRECISIONS, choose_runtime, native_bf16_cpu
from compress.finetune import FinetuneConfig, finetune
from compress.pretrained import resolve_model
from compress.speed import TorchPredictor, accuracy
from compress.tasks import builtin_tasks, default_data_dir, get_task, load_split
from contract.cpu_features import cpu_flags, int8_kernel_family


@dataclass(frozen=True)
class PrecisionRun:
    """One fine-tuning: what it cost and what it reached."""

    precision: str
    steps: int
    wall_s: float
    cpu_s: float
    dev_accuracy: float


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_one(precision: str, args: argparse.Namespace) -> PrecisionRun:
    """Fine-tune `args.model` under `precision` and score it on dev."""
    spec = get_task(args.task)
    train = load_split(spec, "train", args.data_dir)
    dev = load_split(spec, "dev", args.data_dir).head(args.max_dev_examples)
    config = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size,
                            learning_rate=args.learning_rate,
                            max_examples=args.max_train_examples, seed=args.seed)
    runtime = replace(choose_runtime("cpu", precision), threads=args.threads) \
        if args.threads else choose_runtime("cpu", precision)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    folder = finetune(resolve_model(args.model), spec, train, config, args.out / precision,
                      runtime)
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    steps = -(-min(len(train), args.max_train_examples or len(train)) // args.batch_size)
    score = accuracy(TorchPredictor(folder, spec.max_length), dev)
    return PrecisionRun(precision, int(steps * args.epochs), round(wall, 1), round(cpu, 1),
                        round(100 * score, 2))


def table(runs: list[PrecisionRun]) -> str:
    """Markdown rows, and fp32's time over each precision's."""
    fp32 = next((r for r in runs if r.precision == "fp32"), runs[0])
    lines = ["| precision | steps | wall s | CPU s | s/step | wall vs fp32 | dev accuracy |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r.precision} | {r.steps} | {r.wall_s:.0f} | {r.cpu_s:.0f} | "
                     f"{r.wall_s / max(r.steps, 1):.2f} | {fp32.wall_s / r.wall_s:.2f}x | "
                     f"{r.dev_accuracy:.2f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Both precisions, one after the other; a table and a JSON file."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="sst2", choices=builtin_tasks())
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--model", default="packaged:minilm-l6")
    p.add_argument("--max-train-examples", type=int, default=40000)
    p.add_argument("--max-dev-examples", type=int, default=None)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="default: the usable cores")
    p.add_argument("--order", default="fp32,bf16",
                   help="precisions in the order they run (of: fp32, bf16)")
    p.add_argument("--out", type=Path, default=Path("runs/train-precision"))
    args = p.parse_args(argv)
    order = [o.strip() for o in args.order.split(",") if o.strip()]
    if not order or any(o not in PRECISIONS or o == "auto" for o in order):
        p.error("--order: a comma-separated list of fp32 and bf16")
    print(f"CPU: native bf16 {native_bf16_cpu()}, integer kernels {int8_kernel_family()}, "
          f"AMX {'amx_bf16' in cpu_flags()}")
    runs = [run_one(precision, args) for precision in order]
    print(table(runs))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_precision.json").write_text(
        json.dumps([asdict(r) for r in runs], indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
