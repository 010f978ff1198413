"""Soak: a steady load at a share of capacity for a bounded time; errors, latency drift, memory.

    python -m bench soak --artifact models/sst2 [--minutes 10] [--load 0.7]

Measures capacity first (wrk, saturated, --capacity-seconds), then offers `load` x capacity
with paced wrk connections, one wrk run per minute, and samples the resident memory (RSS) of the
API process and its workers after each minute. Targets only 127.0.0.1; stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import serving
from compress.tasks import get_task, load_split
from contract.artifact import read_manifest
from contract.encoding import TextInput
from loadtest import wrk

CONNECTIONS = 8


@dataclass(frozen=True)
class Minute:
    index: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    api_rss_mb: float
    workers_rss_mb: float


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def paced_script(url: str, task: str, texts: list[TextInput], rate: float) -> Path:
    """A wrk script whose CONNECTIONS, each pausing between requests, offer about `rate`.

    A connection's cycle is its pause plus the response time; one 10 s calibration run measures
    the response time at this load and takes it off the pause.
    """
    pause = CONNECTIONS / rate
    achieved = wrk.run(url, wrk.classify_script(task, texts, 1000 * pause), CONNECTIONS,
                       10).requests_per_s
    response_time = max(0.0, CONNECTIONS / achieved - pause)
    pause = max(0.0005, CONNECTIONS / rate - response_time)
    return wrk.classify_script(task, texts, 1000 * pause)


def soak(artifact: Path, data_dir: Path, minutes: int, load: float, port: int,
         capacity_seconds: float) -> list[Minute]:
    manifest = read_manifest(artifact)
    texts = load_split(get_task(manifest.task), "dev", data_dir).texts
    process = serving.serve_artifact(artifact, port)
    url = f"http://127.0.0.1:{port}"
    try:
        capacity = wrk.run(url, wrk.classify_script(manifest.task, texts), 32,
                           capacity_seconds).requests_per_s
        target = load * capacity
        script = paced_script(url, manifest.task, texts, target)
        print(f"capacity {capacity:.0f} req/s; offering {target:.0f} req/s "
              f"({load:.0%}) for {minutes} min", flush=True)
        results = []
        for index in range(1, minutes + 1):
            measured = wrk.run(url, script, CONNECTIONS, 60)
            minute = Minute(index, measured.requests_per_s, measured.latency_ms.get("50", 0.0),
                            measured.latency_ms.get("99", 0.0), measured.errors,
                            rss_mb(process.pid), sum(rss_mb(p) for p in serving.worker_pids(url)))
            results.append(minute)
            print(f"minute {index}: {minute.requests_per_s:.0f} req/s, p50 {minute.p50_ms:.1f} "
                  f"ms, p99 {minute.p99_ms:.1f} ms, errors {minute.errors}, RSS api "
                  f"{minute.api_rss_mb:.0f} MB, workers {minute.workers_rss_mb:.0f} MB",
                  flush=True)
        return results
    finally:
        serving.stop(process)


def summary(results: list[Minute]) -> str:
    first, last = results[0], results[-1]
    errors = sum(m.errors for m in results)
    growth_api = last.api_rss_mb / first.api_rss_mb - 1
    growth_workers = last.workers_rss_mb / first.workers_rss_mb - 1
    rows = ["| minute | req/s | p50 ms | p99 ms | errors | API RSS MB | workers RSS MB |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    rows += [f"| {m.index} | {m.requests_per_s:.0f} | {m.p50_ms:.1f} | {m.p99_ms:.1f} | "
             f"{m.errors} | {m.api_rss_mb:.1f} | {m.workers_rss_mb:.1f} |" for m in results]
    rows += ["", f"errors: {errors}; p99 last/first minute: {last.p99_ms / first.p99_ms:.2f}; "
                 f"RSS growth after minute 1: API {growth_api:+.1%}, workers {growth_workers:+.1%}"]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, default=Path("models/sst2"))
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("DATA_DIR", "../shared/data")))
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--load", type=float, default=0.7, help="share of measured capacity")
    parser.add_argument("--capacity-seconds", type=float, default=15)
    parser.add_argument("--port", type=int, default=8798)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = soak(args.artifact, args.data_dir, args.minutes, args.load, args.port,
                   args.capacity_seconds)
    print("\n" + summary(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(m) for m in results], indent=2))
    return 0
