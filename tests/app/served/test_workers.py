"""Worker processes: pinned to their own cores, restarted when they die."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from app.runtime.workers import cpu_layout
from tests.conftest import RunningServer
from tests.metrics_text import sample


def _workers(client: httpx.Client) -> list[dict[str, object]]:
    pools = client.get("/v1/pools").json()["pools"]
    assert [p["name"] for p in pools] == ["cpu"]
    workers: list[dict[str, object]] = pools[0]["workers"]
    return workers


def test_each_worker_is_pinned_to_its_own_cores(client: httpx.Client) -> None:
    workers = _workers(client)
    assert len(workers) == 2
    pinned = []
    for worker in workers:
        actual = os.sched_getaffinity(int(worker["pid"]))  # type: ignore[call-overload]
        assert actual == set(worker["cores"])  # type: ignore[call-overload]
        assert len(actual) == 1  # 1 ORT thread per worker -> 1 core
        pinned.append(actual)
    assert pinned[0].isdisjoint(pinned[1])


def test_a_killed_worker_is_restarted_and_serving_continues(client: httpx.Client) -> None:
    restarts_before = sample(client, "ffs_worker_restarts_total", pool="cpu")
    victim = int(_workers(client)[0]["pid"])  # type: ignore[call-overload]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        workers = _workers(client)
        pids = {w["pid"] for w in workers}
        if victim not in pids and all(w["alive"] and w["pid"] for w in workers):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"worker {victim} was not replaced: {_workers(client)}")
    assert sample(client, "ffs_worker_restarts_total", pool="cpu") == restarts_before + 1
    for _ in range(6):
        assert client.post("/v1/classify/sst2", json={"inputs": ["good"]}).status_code == 200


async def _load_while_killing(url: str, client: httpx.Client, requests: int) -> list[int]:
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as http:

        async def sender(count: int) -> None:
            for _ in range(count):
                response = await http.post("/v1/classify/sst2",
                                           json={"inputs": ["the plot was dull"]})
                statuses.append(response.status_code)

        victim = int(_workers(client)[1]["pid"])  # type: ignore[call-overload]
        load = asyncio.gather(*(sender(requests // 8) for _ in range(8)))
        # Frozen first, so that it is surely holding a batch when it dies.
        os.kill(victim, signal.SIGSTOP)
        await asyncio.sleep(0.3)
        os.kill(victim, signal.SIGKILL)
        await load
    return statuses


def test_no_request_is_lost_when_a_worker_is_killed_under_load(server: RunningServer,
                                                               client: httpx.Client) -> None:
    statuses = asyncio.run(_load_while_killing(server.url, client, 400))
    assert len(statuses) == 400
    assert set(statuses) == {200}


def test_default_layout_is_one_single_thread_worker_per_core() -> None:
    assert cpu_layout([0, 1, 2, 3], None, 1) == [(0,), (1,), (2,), (3,)]


def test_layout_gives_each_worker_disjoint_cores() -> None:
    assert cpu_layout([4, 5, 6, 7], 2, 2) == [(4, 5), (6, 7)]


def test_layout_refuses_more_threads_than_cores() -> None:
    with pytest.raises(ValueError, match="3 workers x 1 threads need 3 cores, but only 2"):
        cpu_layout([0, 1], 3, 1)
