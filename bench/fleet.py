"""A fleet on one machine: three replicas of the service behind HAProxy, under load, while one is
killed, all three are restarted one by one, and a new model version is rolled across them.

    python -m bench fleet --artifact models/sst2 [--clients 16] [--seconds 5]
    (deploy/fleet-check.sh installs HAProxy and runs this)

Replicas listen on 127.0.0.2-4:8000 with one worker each (pinned to the machine's cores in turn),
HAProxy on 127.0.0.1:8080 with deploy/haproxy/haproxy.cfg as shipped. Closed-loop keep-alive
clients (bench/lifecycle.py) send through HAProxy. Per phase: requests, non-2xx, lost (sent, no
answer), refused (never sent), p50 and p99. Then the fleet's throughput through HAProxy against
the sum of each replica's measured alone, the same run. Loopback only; every process it starts
is stopped before it returns.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import lifecycle, serving

ROOT = Path(__file__).resolve().parent.parent
HAPROXY_CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
PORT = 8000
BALANCER = "http://127.0.0.1:8080"
PATH = "/v1/classify/model"


@dataclass(frozen=True)
class PhaseResult:
    name: str
    requests: int
    non_2xx: int
    lost: int
    refused: int
    p50_ms: float
    p99_ms: float
    per_s: float


class Fleet:
    """Three replicas of the service on their own loopback addresses."""

    def __init__(self, repo: Path, work: Path, drain_delay_s: float) -> None:
        self.repo = repo
        self.work = work
        self.drain_delay_s = drain_delay_s
        self.cores = sorted(os.sched_getaffinity(0))
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.starts = 0

    def url(self, index: int) -> str:
        return f"http://{HOSTS[index]}:{PORT}"

    def start(self, index: int) -> None:
        self.starts += 1
        env = {"FFS_MODEL_REPOSITORY": str(self.repo), "FFS_HOST": HOSTS[index],
               "FFS_PORT": str(PORT), "FFS_LOG_LEVEL": "warning",
               "FFS_CPU_POOL__WORKERS": "1",
               "FFS_CPU_POOL__CORES": f"[{self.cores[index % len(self.cores)]}]",
               "FFS_DRAIN_DELAY_S": str(self.drain_delay_s)}
        log = self.work / f"replica-{index + 1}-{self.starts}.log"
        self.processes[index] = serving.launch([sys.executable, "-m", "app"],
                                               f"{self.url(index)}/readyz", log, env, 120)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                serving.stop(process)


def haproxy(work: Path) -> subprocess.Popen[bytes]:
    """HAProxy on deploy/haproxy/haproxy.cfg; returns once it answers on 127.0.0.1:8080."""
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        raise SystemExit("haproxy is not installed: apt-get install -y haproxy "
                         "(deploy/fleet-check.sh does it when run as root)")
    return serving.launch([binary, "-db", "-f", str(HAPROXY_CONFIG)], f"{BALANCER}/readyz",
                          work / "haproxy.log", None, 30)


def _result(name: str, tally: lifecycle.Tally, seconds: float) -> PhaseResult:
    counts = lifecycle.Tally.summary(tally.answers)
    times = sorted(1000 * (a.received - a.sent) for a in tally.answers if a.status == 200)
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))] if times else 0.0
    return PhaseResult(name, counts["requests"], counts["non_2xx"], counts["lost"],
                       counts["refused"], statistics.median(times) if times else 0.0, p99,
                       sum(a.status == 200 for a in tally.answers) / seconds)


def _phase(name: str, base_url: str, clients: int, action: Callable[[], Awaitable[None]],
           settle_s: float) -> PhaseResult:
    started = time.monotonic()
    tally = asyncio.run(lifecycle.under_load(base_url, PATH, clients, action, settle_s))
    return _result(name, tally, time.monotonic() - started)


async def _wait(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def _in_thread(function: Callable[[], None]) -> None:
    await asyncio.to_thread(function)


def run(artifact: Path, clients: int, seconds: float, drain_delay_s: float = 2.0) \
        -> list[PhaseResult]:
    work = Path(tempfile.mkdtemp(prefix="ffs-fleet-"))
    repo = lifecycle.versioned_repository(artifact, work / "models", "model", 1)
    fleet = Fleet(repo, work, drain_delay_s)
    balancer: subprocess.Popen[bytes] | None = None
    results: list[PhaseResult] = []
    try:
        for index in range(len(HOSTS)):
            fleet.start(index)
        # Each replica alone (the others idle), then the fleet through HAProxy: the same run.
        alone = [_phase(f"replica {i + 1} alone", fleet.url(i), clients // len(HOSTS) or 1,
                        lambda: _wait(seconds), 0.0) for i in range(len(HOSTS))]
        balancer = haproxy(work)
        results += alone
        results.append(_phase("fleet through HAProxy", BALANCER, clients,
                              lambda: _wait(seconds), 0.0))

        def kill_and_replace() -> None:
            time.sleep(seconds / 2)
            fleet.processes[1].send_signal(signal.SIGKILL)
            fleet.processes[1].wait()
            time.sleep(seconds / 2)
            fleet.start(1)

        results.append(_phase("kill -9 of replica 2 (then replaced)", BALANCER, clients,
                              lambda: _in_thread(kill_and_replace), 0.5))

        def rolling_restart() -> None:
            for index in range(len(HOSTS)):
                process = fleet.processes[index]
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
                fleet.start(index)

        results.append(_phase("rolling restart (SIGTERM, one by one)", BALANCER, clients,
                              lambda: _in_thread(rolling_restart), 0.5))

        def roll_version() -> None:
            shutil.copytree(artifact, repo / "model" / "2")
            for index in range(len(HOSTS)):
                response = httpx.post(f"{fleet.url(index)}/v2/repository/models/model/load",
                                      timeout=120)
                response.raise_for_status()

        results.append(_phase("version 2 rolled across the fleet (load calls)", BALANCER,
                              clients, lambda: _in_thread(roll_version), 0.5))
    finally:
        if balancer is not None:
            balancer.terminate()
            balancer.wait(timeout=10)
        fleet.stop_all()
    shutil.rmtree(work, ignore_errors=True)
    return results


@dataclass(frozen=True)
class DepthStep:
    clients: int
    per_s: float
    p99_ms: float
    mean_depth: float  # rows waiting, sampled from /metrics every 50 ms


async def _sample_depth(url: str, stop: asyncio.Event, samples: list[float]) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        while not stop.is_set():
            text = (await client.get(f"{url}/metrics")).text
            samples.append(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                               if line.startswith("ffs_queue_depth{")))
            await asyncio.sleep(0.05)


def depth_ladder(artifact: Path, ladder: list[int], seconds: float,
                 env: dict[str, str] | None = None) -> list[DepthStep]:
    """One replica (the default worker layout of this machine) under closed-loop load at each
    client count: answered/s, p99, and the mean queue depth the autoscaler would read."""
    work = Path(tempfile.mkdtemp(prefix="ffs-depth-"))
    repo = lifecycle.versioned_repository(artifact, work / "models", "model", 1)
    port = serving.free_port()
    url = f"http://127.0.0.1:{port}"
    server = serving.start(repo, port, work / "server.log", env)
    steps = []
    try:
        for clients in ladder:
            samples: list[float] = []
            stop = asyncio.Event()

            async def sampled(s: list[float] = samples, e: asyncio.Event = stop) -> None:
                sampler = asyncio.ensure_future(_sample_depth(url, e, s))
                await asyncio.sleep(seconds)
                e.set()
                await sampler

            result = _phase(f"{clients} clients", url, clients, sampled, 0.5)
            steps.append(DepthStep(clients, result.per_s, result.p99_ms,
                                   statistics.mean(samples) if samples else 0.0))
    finally:
        serving.stop(server)
        shutil.rmtree(work, ignore_errors=True)
    return steps


def table(results: list[PhaseResult]) -> str:
    lines = ["| phase | requests | non-2xx | lost | refused | answered/s | p50 ms | p99 ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.name} | {r.requests} | {r.non_2xx} | {r.lost} | {r.refused} | "
              f"{r.per_s:.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} |" for r in results]
    alone = sum(r.per_s for r in results if r.name.endswith("alone"))
    fleet = next((r.per_s for r in results if r.name == "fleet through HAProxy"), 0.0)
    if alone:
        lines.append(f"\nfleet through HAProxy / sum of the replicas alone: {fleet / alone:.2f} "
                     f"({fleet:.0f} / {alone:.0f} answered/s; the replicas share "
                     f"{len(os.sched_getaffinity(0))} cores)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench fleet",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=Path("models/sst2"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--depth-ladder", type=int, nargs="*", metavar="CLIENTS",
                        help="instead: one replica's queue depth and p99 at these client counts "
                             "(the autoscaler's threshold, docs/deployment.md)")
    parser.add_argument("--env", default="", metavar="ENV=VALUE,...",
                        help="with --depth-ladder: more settings of the server")
    args = parser.parse_args(argv)
    if args.depth_ladder:
        env = dict(pair.split("=", 1) for pair in args.env.split(",") if pair)
        print("| clients | answered/s | p99 ms | mean queue depth (rows) |\n|---:|---:|---:|---:|")
        for step in depth_ladder(args.artifact, args.depth_ladder, args.seconds, env):
            print(f"| {step.clients} | {step.per_s:.0f} | {step.p99_ms:.1f} | "
                  f"{step.mean_depth:.1f} |")
        return 0
    print(table(run(args.artifact, args.clients, args.seconds)))
    return 0
