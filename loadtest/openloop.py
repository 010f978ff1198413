"""Open-loop load: Poisson arrivals at a fixed rate, latency from each request's scheduled time.

A closed-loop client (N connections, each sending when its last answer came back) slows down with
the server and so never sees the queue it would have built: coordinated omission. Here arrivals are
drawn in advance; a request that cannot be sent on time (all connections busy, client behind)
still counts its latency from when it should have been sent.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Coroutine, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import aiohttp
import numpy as np

T = TypeVar("T")

# Requests in flight above this are not sent but counted as client overload (keeps memory bounded).
MAX_IN_FLIGHT = 20_000


@dataclass(frozen=True)
class Request:
    """One request to send: a path under the base URL and its JSON body."""

    path: str
    body: dict[str, object]


@dataclass(frozen=True)
class StepResult:
    """What one rate step measured."""

    offered_rps: float
    achieved_rps: float
    sent: int
    ok: int
    rejected_429: int
    errors: int
    client_overload: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    duration_s: float

    def meets(self, slo_ms: float) -> bool:
        """p99 within the SLO, nothing failed or refused, and the server kept up with the offer."""
        return (self.ok > 0 and self.p99_ms <= slo_ms and self.errors == 0
                and self.rejected_429 == 0 and self.client_overload == 0)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def arrival_times(rate: float, duration_s: float, max_requests: int, seed: int) -> list[float]:
    """Poisson process: exponential gaps with mean 1/rate, until duration or count is reached."""
    rng = random.Random(seed)
    times: list[float] = []
    t = rng.expovariate(rate)
    while t < duration_s and len(times) < max_requests:
        times.append(t)
        t += rng.expovariate(rate)
    return times


@dataclass
class _Tally:
    latencies_ms: list[float]
    ok: int = 0
    rejected: int = 0
    errors: int = 0
    overload: int = 0
    last_done: float = 0.0


async def _send(session: aiohttp.ClientSession, request: Request, scheduled: float,
                tally: _Tally) -> None:
    try:
        async with session.post(request.path, json=request.body) as response:
            await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError):
        status = 0
    done = time.perf_counter()
    tally.last_done = max(tally.last_done, done)
    if status == 200:
        tally.ok += 1
        tally.latencies_ms.append(1000.0 * (done - scheduled))
    elif status == 429:
        tally.rejected += 1
    else:
        tally.errors += 1


async def run_step(base_url: str, requests: Sequence[Request], rate: float, duration_s: float,
                   max_requests: int = 1_000_000, connections: int = 64,
                   timeout_s: float = 30.0, seed: int = 0) -> StepResult:
    """Offer `rate` requests/s for `duration_s` (or `max_requests`), cycling through `requests`."""
    arrivals = arrival_times(rate, duration_s, max_requests, seed)
    tally = _Tally(latencies_ms=[])
    # aiohttp on uvloop, not httpx: the client shares the machine with the server it measures, and
    # at an offered 400 req/s httpx itself saturated at 126 req/s here while aiohttp achieved 395.
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(base_url=base_url, connector=connector,
                                     timeout=timeout) as client:
        start = time.perf_counter()
        tasks: set[asyncio.Task[None]] = set()
        for index, offset in enumerate(arrivals):
            scheduled = start + offset
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(tasks) >= MAX_IN_FLIGHT:
                tally.overload += 1
                continue
            task = asyncio.create_task(_send(client, requests[index % len(requests)], scheduled,
                                             tally))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
    # Achieved rate: answers per second of the offered window (or until the last answer, if later).
    window = max(duration_s if arrivals else 0.0, tally.last_done - start, 1e-9)
    return _summarise(rate, len(arrivals), tally, window)


def _summarise(rate: float, sent: int, tally: _Tally, window: float) -> StepResult:
    latencies = np.asarray(tally.latencies_ms) if tally.latencies_ms else np.asarray([np.nan])
    p50, p90, p99 = (float(np.percentile(latencies, q)) for q in (50, 90, 99))
    return StepResult(
        offered_rps=rate, achieved_rps=tally.ok / window, sent=sent, ok=tally.ok,
        rejected_429=tally.rejected, errors=tally.errors, client_overload=tally.overload,
        p50_ms=p50, p90_ms=p90, p99_ms=p99, max_ms=float(np.nanmax(latencies)),
        duration_s=window)


def run_blocking(step: Coroutine[Any, Any, T]) -> T:
    """Run a step (or any coroutine) to completion on uvloop when it is installed (cheaper)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(step)
    return uvloop.run(step)
