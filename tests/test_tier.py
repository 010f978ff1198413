"""Several API processes on one port (settings.api_processes), through real processes."""

from __future__ import annotations

import signal
from collections.abc import Iterator

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
