"""Several API processes on one port (settings.api_processes), through real processes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer, TinyRepo, start_server, stop_server
from tests.metrics_text import sample


@pytest.fixture(scope="module")
def tier(tiny_repo: TinyRepo, tmp_path_factory: pytest.TempPathFactory) \
        -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("tier") / "server.log"
    server = start_server(tiny_repo.root, log, FFS_API_PROCESSES="2",
                          FFS_CPU_POOL__WORKERS="2")
    yield server
    stop_server(server)


def _worker_sets(tier: RunningServer, tries: int = 40) -> set[tuple[int, ...]]:
    seen = set()
    for _ in range(tries):
        with httpx.Client(base_url=tier.url, timeout=10) as client:  # a new connection each time
            pools = client.get("/v1/pools").json()["pools"][0]["workers"]
            seen.add(tuple(w["index"] for w in pools))
    return seen


def test_each_api_process_owns_its_own_share_of_the_workers(tier: RunningServer) -> None:
    assert _worker_sets(tier) == {(0,), (1,)}


def test_metrics_count_the_requests_of_every_api_process(tier: RunningServer) -> None:
    with httpx.Client(base_url=tier.url, timeout=10) as first:
        before = sample(first, "ffs_requests_total", task="sst2", status="200")
    for _ in range(20):
        with httpx.Client(base_url=tier.url, timeout=10) as client:
            assert client.post("/v1/classify/sst2", json={"inputs": ["lovely"]}).status_code == 200
    with httpx.Client(base_url=tier.url, timeout=10) as last:
        assert sample(last, "ffs_requests_total", task="sst2", status="200") == before + 20


def test_sigterm_stops_every_api_process_and_exits_zero(tiny_repo: TinyRepo,
                                                         tmp_path_factory: pytest.TempPathFactory
                                                         ) -> None:
    log = tmp_path_factory.mktemp("tier-stop") / "server.log"
    server = start_server(tiny_repo.root, log, FFS_API_PROCESSES="2", FFS_CPU_POOL__WORKERS="2",
                          FFS_DRAIN_DELAY_S="0.2", FFS_LOG_LEVEL="info")
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    assert server.log().count("Application shutdown complete") == 2


def _children(pid: int) -> list[int]:
    """Spawned child processes of `pid` (API processes, or workers), not multiprocessing's
    resource tracker."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in command:
                found.append(int(entry.name))
    return found


def test_a_killed_api_process_is_restarted_with_its_workers(tier: RunningServer) -> None:
    api = _children(tier.process.pid)
    assert len(api) == 2
    workers_before = {w for pid in api for w in _children(pid)}
    os.kill(api[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = _children(tier.process.pid)
        if len(now) == 2 and api[0] not in now and all(_children(pid) for pid in now):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the API process was not replaced within 60 s")
    assert _worker_sets(tier) == {(0,), (1,)}  # both shards serve again
    workers_after = {w for pid in now for w in _children(pid)}
    assert len(workers_after) == 2 and workers_after != workers_before
    with httpx.Client(base_url=tier.url, timeout=10) as client:
        assert client.post("/v1/classify/sst2", json={"inputs": ["lovely"]}).status_code == 200
