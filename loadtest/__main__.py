"""`python -m loadtest`: open-loop load at given rates, or a capacity search at a latency SLO.

    python -m loadtest --task sst2 --rates 50,100,200 --duration 10
    python -m loadtest --task sst2 --capacity --slo-ms 50 --vm Standard_F16s_v2
    python -m loadtest --task sst2 --rates 100 --with-bulk 100000

Targets only --url (default http://127.0.0.1:8000); every step is bounded by --duration and
--max-requests; output goes to --out (results.json, results.md, latency.png).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from tqdm import tqdm

from loadtest.capacity import Capacity, find_capacity
from loadtest.cost import Projection, project
from loadtest.openloop import Request, StepResult, run_blocking, run_step
from loadtest.proc import ServerCpu
from loadtest.results import capacity_lines, steps_table, write
from loadtest.workload import file_requests, task_requests


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--task", required=True)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data-dir", type=Path, default=None,
                        help="task data folder (default: $DATA_DIR or ../shared/data)")
    source.add_argument("--text-file", type=Path, help="one input per line (tab: a pair)")
    p.add_argument("--inputs-per-request", type=int, default=1)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--rates", help="comma-separated offered rates (req/s), one step each")
    mode.add_argument("--capacity", action="store_true", help="search the rate at the SLO")
    p.add_argument("--slo-ms", type=float, default=50.0, help="p99 latency objective")
    p.add_argument("--start-rate", type=float, default=25.0)
    p.add_argument("--max-rate", type=float, default=5000.0)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per step")
    p.add_argument("--max-requests", type=int, default=100_000, help="per step")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--measured-cores", type=int, default=None,
                   help="cores the server used (default: this machine's usable cores)")
    p.add_argument("--vm", default="Standard_F16s_v2", help="VM size to project cost on")
    p.add_argument("--server-pid", type=int, default=None,
                   help="pid of a server on this machine (python -m app): its API and worker "
                        "CPU per request is read from /proc and priced instead of scaling cores")
    p.add_argument("--with-bulk", type=int, default=None, metavar="N",
                   help="with --rates: run each step alone, then again while a bulk job of N "
                        "inputs (the task's train texts, cycled) streams through "
                        "/v1/classify/<task>/bulk; prints both, the bulk rate, and a sample of "
                        "its answers checked against /v1")
    p.add_argument("--out", type=Path, default=Path("runs/loadtest"))
    return p


def _requests(args: argparse.Namespace) -> list[Request]:
    if args.text_file is not None:
        return file_requests(args.task, args.text_file, args.inputs_per_request)
    from compress.tasks import default_data_dir

    return task_requests(args.task, args.data_dir or default_data_dir(), "dev",
                         args.inputs_per_request)


def _step_with_bulk(args: argparse.Namespace, requests: list[Request], rate: float,
                    progress: tqdm) -> StepResult:
    """The same step while a bulk job streams (started 2 s before, stopped after)."""
    import asyncio

    from compress.tasks import default_data_dir, get_task, load_split
    from loadtest.bulk import BulkRun, check_sample, run_bulk

    texts = load_split(get_task(args.task), "train", args.data_dir or default_data_dir()).texts
    inputs = [t if isinstance(t, str) else list(t) for t in texts]

    async def both() -> tuple[StepResult, BulkRun]:
        stop = asyncio.Event()
        run = BulkRun()
        job = asyncio.ensure_future(run_bulk(args.url, args.task, inputs, args.with_bulk, stop,
                                             run))
        await asyncio.sleep(2.0)
        result = await run_step(args.url, requests, rate, args.duration, args.max_requests,
                                args.connections)
        stop.set()
        await job
        await check_sample(args.url, args.task, inputs, run)
        return result, run

    result, run = run_blocking(both())
    progress.update(1)
    progress.write(f"offered {rate:.0f}/s with a bulk job: achieved {result.achieved_rps:.0f}/s,"
                   f" p99 {result.p99_ms:.1f} ms, 429 {result.rejected_429}, errors "
                   f"{result.errors}; bulk {run.lines} lines ({run.lines_per_s:.0f}/s, "
                   f"{run.errors} error lines), {run.checked} checked against /v1: "
                   f"{run.mismatched} differ")
    return result


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    requests = _requests(args)
    progress = tqdm(desc="steps", unit="step")

    cpu_at: dict[float, tuple[float, float]] = {}

    def step(rate: float) -> StepResult:
        cpu = ServerCpu(args.server_pid) if args.server_pid else None
        result = run_blocking(run_step(args.url, requests, rate, args.duration,
                                       args.max_requests, args.connections))
        if cpu is not None and result.ok:
            api_s, worker_s = cpu.spent()
            cpu_at[rate] = (1000 * api_s / result.ok, 1000 * worker_s / result.ok)
        progress.update(1)
        progress.write(f"offered {rate:.0f}/s: achieved {result.achieved_rps:.0f}/s, "
                       f"p99 {result.p99_ms:.1f} ms, 429 {result.rejected_429}, "
                       f"errors {result.errors}")
        return result

    capacity: Capacity | None = None
    projection: Projection | None = None
    if args.capacity:
        capacity = find_capacity(step, args.slo_ms, args.start_rate, args.max_rate)
        steps = capacity.steps
        if capacity.rps is not None:
            cores = args.measured_cores or len(os.sched_getaffinity(0))
            projection = project(capacity.rps, cores, args.vm, cpu_ms=cpu_at.get(capacity.rps))
    elif args.with_bulk:
        steps = []
        for rate in args.rates.split(","):
            steps.append(step(float(rate)))
            steps.append(_step_with_bulk(args, requests, float(rate), progress))
    else:
        steps = [step(float(rate)) for rate in args.rates.split(",")]
    progress.close()
    meta = {"target": args.url, "task": args.task, "connections": args.connections,
            "duration_s": args.duration,
            "command": "python -m loadtest " + shlex.join(argv if argv is not None
                                                          else sys.argv[1:])}
    write(args.out, steps, meta, capacity, projection)
    print(steps_table(steps))
    if capacity is not None:
        print("\n".join(capacity_lines(capacity, projection)))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
