"""A bulk job beside interactive load: POST /v1/classify/{task}/bulk streaming newline-delimited
JSON in and out, while an open-loop step runs (`python -m loadtest --rates R --with-bulk N`).

The job's input is generated as the server reads it (N inputs cycled from the given texts), so it
never holds the whole job in memory; its answers are read as they stream. After the step the job
is stopped (the connection closed), and a sample of its answered lines is checked against /v1's
answers for the same inputs.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson


@dataclass
class BulkRun:
    """What the bulk job did during a step."""

    lines: int = 0
    errors: int = 0
    seconds: float = 0.0
    answers: dict[int, tuple[str, float]] = field(default_factory=dict)  # line -> label, score
    checked: int = 0
    mismatched: int = 0

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.seconds if self.seconds else 0.0


async def _body(inputs: Sequence[object], count: int) -> AsyncIterator[bytes]:
    step = 256
    for start in range(0, count, step):
        yield b"".join(orjson.dumps(inputs[i % len(inputs)]) + b"\n"
                       for i in range(start, min(count, start + step)))


async def run_bulk(base_url: str, task: str, inputs: Sequence[object], count: int,
                   stop: asyncio.Event, run: BulkRun) -> None:
    """Stream `count` inputs through the bulk route until done or `stop`; fills `run`."""
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(base_url=base_url, timeout=timeout) as session, \
            session.post(f"/v1/classify/{task}/bulk", data=_body(inputs, count),
                         headers={"content-type": "application/x-ndjson"}) as response:
        response.raise_for_status()
        reading = asyncio.ensure_future(_read(response, run))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for waiting in (reading, stopping):
            waiting.cancel()
    run.seconds = time.perf_counter() - started


async def _read(response: aiohttp.ClientResponse, run: BulkRun) -> None:
    async for raw in response.content:
        if not raw.strip():
            continue
        line: dict[str, Any] = orjson.loads(raw)
        run.lines += 1
        if "error" in line:
            run.errors += 1
        else:
            run.answers[line["line"]] = (line["label"], line["score"])


async def check_sample(base_url: str, task: str, inputs: Sequence[object], run: BulkRun,
                       sample: int = 200, seed: int = 0) -> None:
    """Compare up to `sample` answered lines with /v1's answers for the same inputs."""
    lines = sorted(run.answers)
    chosen = sorted(random.Random(seed).sample(lines, min(sample, len(lines))))
    async with aiohttp.ClientSession(base_url=base_url) as session:
        for start in range(0, len(chosen), 16):
            group = chosen[start : start + 16]
            body = {"inputs": [inputs[n % len(inputs)] for n in group]}
            async with session.post(f"/v1/classify/{task}", json=body) as response:
                results = (await response.json())["results"]
            for n, result in zip(group, results, strict=True):
                label, score = run.answers[n]
                run.checked += 1
                if label != result["label"] or abs(score - result["score"]) > 1e-6:
                    run.mismatched += 1
