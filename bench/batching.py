"""Batch policies side by side: rows/s and latency of the batcher + pinned workers, without HTTP.

    python -m bench.batching --artifact models/sst2 [--rounds 2] [--concurrency 1 4 16]

Closed-loop clients (each submits its next dev sentence when the last is answered) drive one worker
pool (the server's default layout); the policies take turns on the same pool within each round, so
they see the same machine state. It shows what each batching rule is worth on this hardware.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

from app.core.batching import Batcher, BatchPolicy, TaskInputs
from app.core.repository import load_task_model
from app.runtime.workers import ModelFile, WorkerPool, WorkerSpec, cpu_layout
from compress.tasks import get_task, load_split
from contract.encoding import EncodedText, encode

BASE = BatchPolicy(max_batch_size=32, max_batch_tokens=8192, max_wait_ms=0.0,
                   max_queue_rows=100_000)
POLICIES: dict[str, BatchPolicy] = {
    "batch 1": replace(BASE, max_batch_size=1),
    "greedy, wait 2 ms (no share, no fill)": replace(BASE, fair_share=False, min_fill=0.0,
                                                       max_wait_ms=2.0),
    "share, no fill, wait 2 ms": replace(BASE, min_fill=0.0, max_wait_ms=2.0),
    "share, fill 0.75, wait 2 ms": replace(BASE, min_fill=0.75, max_wait_ms=2.0),
    "share, fill 0.9, wait 2 ms": replace(BASE, max_wait_ms=2.0),
    "share, fill 0.9, wait 0 (default)": BASE,
}


@dataclass
class Measure:
    rows_per_s: float
    mean_ms: float
    p99_ms: float
    mean_batch: float


async def _drive(batcher: Batcher, task: str, rows: list[list[EncodedText]],
                 concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    position = 0

    async def client() -> None:
        nonlocal position
        while position < len(rows):
            row = rows[position]
            position += 1
            started = time.perf_counter()
            await batcher.submit(task, row)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


async def _measure(pool: WorkerPool, policy: BatchPolicy, inputs: TaskInputs, task: str,
                   rows: list[list[EncodedText]], concurrency: int) -> Measure:
    sizes: list[int] = []
    batcher = Batcher(pool, policy, {task: inputs},
                      on_batch=lambda stats: sizes.append(stats.rows))
    batcher.start()
    try:
        wall, latencies = await _drive(batcher, task, rows, concurrency)
    finally:
        await batcher.stop()
    latencies.sort()
    return Measure(len(rows) / wall, 1000 * statistics.fmean(latencies),
                   1000 * latencies[int(0.99 * (len(latencies) - 1))], statistics.fmean(sizes))


async def run(artifact: Path, data_dir: Path, rounds: int, levels: list[int]) -> None:
    model = load_task_model(artifact, ["cpu-int8"])
    manifest = model.manifest
    texts = load_split(get_task(manifest.task), "dev", data_dir).texts
    rows = [encode(model.tokenizer, [text]) for text in texts]
    files = {manifest.task: ModelFile(str(model.files["cpu-int8"]), tuple(manifest.model_inputs))}
    layout = cpu_layout(sorted(os.sched_getaffinity(0)), None, 1)
    pool = WorkerPool("cpu", [WorkerSpec(i, cores, 1, files) for i, cores in enumerate(layout)])
    await pool.start()
    inputs = TaskInputs(tuple(manifest.model_inputs), manifest.pad_token_id)
    results: dict[tuple[str, int], list[Measure]] = {}
    try:
        for index in range(rounds):
            for concurrency in levels:
                for name, policy in POLICIES.items():
                    measure = await _measure(pool, policy, inputs, manifest.task, rows,
                                             concurrency)
                    results.setdefault((name, concurrency), []).append(measure)
            print(f"round {index + 1} of {rounds} done", flush=True)
    finally:
        pool.stop()
    print(f"\n{manifest.task}: {len(rows)} dev sentences, {len(layout)} workers x 1 thread, "
          f"medians of {rounds} rounds\n")
    print("| policy | clients | rows/s | vs batch 1 | mean ms | p99 ms | mean batch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for concurrency in levels:
        base = statistics.median(m.rows_per_s for m in results[("batch 1", concurrency)])
        for name in POLICIES:
            got = results[(name, concurrency)]
            rate = statistics.median(m.rows_per_s for m in got)
            print(f"| {name} | {concurrency} | {rate:.0f} | {rate / base:.2f}x | "
                  f"{statistics.median(m.mean_ms for m in got):.1f} | "
                  f"{statistics.median(m.p99_ms for m in got):.1f} | "
                  f"{statistics.median(m.mean_batch for m in got):.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batching", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, default=Path("models/sst2"))
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("DATA_DIR", "../shared/data")))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args(argv)
    asyncio.run(run(args.artifact, args.data_dir, args.rounds, args.concurrency))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
