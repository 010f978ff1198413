"""The open-loop load generator, the capacity search and the cost arithmetic."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import statistics
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from loadtest.__main__ import main as loadtest_main
from loadtest.capacity import find_capacity, ladder
from loadtest.cost import project, usd_per_100m
from loadtest.openloop import Request, StepResult, arrival_times, run_blocking, run_step
from tests.conftest import RunningServer, TinyRepo

SST2 = [Request("/v1/classify/sst2", {"inputs": [text]})
        for text in ("a good film", "dull and tedious", "the acting was superb", "weak plot")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _step(rate: float, p99: float, ok: int = 100) -> StepResult:
    return StepResult(offered_rps=rate, achieved_rps=rate, sent=ok, ok=ok, rejected_429=0,
                      errors=0, client_overload=0, p50_ms=p99 / 2, p90_ms=p99, p99_ms=p99,
                      max_ms=p99, duration_s=1.0)


def test_arrivals_are_a_poisson_process_at_the_offered_rate() -> None:
    times = arrival_times(rate=200.0, duration_s=20.0, max_requests=10**6, seed=1)
    assert len(times) == pytest.approx(4000, rel=0.05)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert statistics.mean(gaps) == pytest.approx(1 / 200, rel=0.05)
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(1.0, abs=0.1)
    assert len(arrival_times(200.0, 20.0, max_requests=50, seed=1)) == 50


def test_achieved_rate_tracks_the_offered_rate_at_low_load(server: RunningServer) -> None:
    result = run_blocking(run_step(server.url, SST2, rate=40.0, duration_s=3.0))
    assert result.errors == 0 and result.rejected_429 == 0 and result.ok == result.sent
    assert result.achieved_rps == pytest.approx(result.sent / 3.0, rel=0.1)
    assert result.sent == pytest.approx(120, rel=0.25)
    assert result.meets(slo_ms=1000.0)


async def _with_slow_server(handler: Callable[[web.Request], Awaitable[web.Response]],
                            body: Callable[[str], Awaitable[StepResult]]) -> StepResult:
    app = web.Application()
    app.router.add_post("/v1/classify/sst2", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        return await body(f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def test_latency_is_measured_from_the_scheduled_time_so_queueing_shows() -> None:
    """A server that answers one request per 50 ms (20/s), offered 40/s: the backlog grows, and
    latency from scheduled time shows it; a closed-loop client would report about 50 ms."""
    lock = asyncio.Lock()

    async def serial(_: web.Request) -> web.Response:
        async with lock:
            await asyncio.sleep(0.05)
        return web.json_response({"results": []})

    result = asyncio.run(_with_slow_server(
        serial, lambda url: run_step(url, SST2, rate=40.0, duration_s=2.0, seed=3)))
    assert result.ok == result.sent
    assert result.p50_ms > 400 and result.p99_ms > 1000
    assert result.achieved_rps < 25
    assert not result.meets(slo_ms=100.0)


def test_refusals_and_errors_are_counted_and_fail_the_slo() -> None:
    calls = {"n": 0}

    async def flaky(_: web.Request) -> web.Response:
        calls["n"] += 1
        status = (200, 429, 500)[calls["n"] % 3]
        return web.json_response({}, status=status)

    result = asyncio.run(_with_slow_server(
        flaky, lambda url: run_step(url, SST2, rate=60.0, duration_s=1.0, seed=4)))
    assert result.ok + result.rejected_429 + result.errors == result.sent
    assert result.rejected_429 > 0 and result.errors > 0
    assert not result.meets(slo_ms=1000.0)


def test_capacity_search_converges_on_the_rate_where_p99_crosses_the_slo() -> None:
    seen: list[float] = []

    def step(rate: float) -> StepResult:
        seen.append(rate)
        return _step(rate, p99=10.0 if rate <= 137.0 else 120.0)

    capacity = find_capacity(step, slo_ms=50.0, start_rate=10.0, max_rate=5000.0)
    assert capacity.rps is not None and capacity.bounded
    assert 137.0 * 0.95 <= capacity.rps <= 137.0
    assert len(seen) <= 12


def test_capacity_is_a_lower_bound_when_the_highest_rate_still_meets_the_slo() -> None:
    capacity = find_capacity(lambda rate: _step(rate, p99=5.0), 50.0, 10.0, 100.0)
    assert capacity.rps == 100.0 and not capacity.bounded


def test_capacity_is_none_when_even_the_first_rate_misses() -> None:
    capacity = find_capacity(lambda rate: _step(rate, p99=500.0), 50.0, 10.0, 100.0)
    assert capacity.rps is None and len(capacity.steps) == 1


def test_ladder_ends_at_the_maximum_rate() -> None:
    assert ladder(25.0, 150.0, 2.0) == [25.0, 50.0, 100.0, 150.0]


def test_cost_per_100m_requests_matches_a_hand_calculation() -> None:
    # 100M requests at 1,000/s take 100,000 s = 27.78 h; at $0.677/h that is $18.81.
    assert usd_per_100m(1000.0, 0.677) == pytest.approx(18.806, abs=0.001)
    projection = project(measured_rps=125.0, measured_cores=2, vm="Standard_F16s_v2")
    assert projection.projected_rps == pytest.approx(1000.0)
    assert projection.usd_per_100m == pytest.approx(18.806, abs=0.001)
    assert projection.measured_rps == 125.0 and projection.vm_vcpus == 16


def test_energy_per_100m_requests_matches_a_hand_calculation() -> None:
    # 16 vCPUs x 3.75 W = 60 W; at 1,000 req/s that is 0.06 J a request, and 100M requests
    # take 6e6 J = 1.667 kWh.
    projection = project(measured_rps=125.0, measured_cores=2, vm="Standard_F16s_v2")
    assert projection.watts == pytest.approx(60.0)
    assert projection.joules_per_request == pytest.approx(0.06)
    assert projection.kwh_per_100m == pytest.approx(1.6667, abs=1e-4)
    assert projection.power_model is not None and "estimate" in projection.power_model


def test_energy_counts_the_servers_cpu_when_it_was_read() -> None:
    # API 0.4 ms + workers 2.6 ms of CPU a request: 3 ms x 3.75 W = 0.01125 J.
    projection = project(measured_rps=500.0, measured_cores=2, vm="Standard_F16s_v2",
                         cpu_ms=(0.4, 2.6))
    assert projection.joules_per_request == pytest.approx(0.01125)


def test_unknown_vm_size_is_refused_with_the_known_ones() -> None:
    with pytest.raises(KeyError, match="Standard_F16s_v2"):
        project(100.0, 2, "Standard_Z99")


def test_command_writes_json_markdown_and_a_plot(server: RunningServer, tmp_path: Path) -> None:
    texts = tmp_path / "inputs.txt"
    texts.write_text("a good film\ndull plot\n", encoding="utf-8")
    out = tmp_path / "out"
    assert loadtest_main(["--url", server.url, "--task", "sst2", "--text-file", str(texts),
                          "--rates", "10,20", "--duration", "1", "--out", str(out)]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert [step["offered_rps"] for step in saved["steps"]] == [10.0, 20.0]
    assert all(step["errors"] == 0 for step in saved["steps"])
    assert "| offered req/s |" in (out / "results.md").read_text()
    assert (out / "latency.png").read_bytes()[:4] == b"\x89PNG"


def test_baseline_server_answers_in_the_same_shape_as_this_project(
        tiny_repo: TinyRepo, tmp_path: Path) -> None:
    import sys

    import httpx

    from bench import serving

    port = _free_port()
    process = serving.launch(
        [sys.executable, "-m", "bench.baseline_server", "--model", str(tiny_repo.sst2_teacher),
         "--task", "sst2", "--port", str(port)], f"http://127.0.0.1:{port}/readyz",
        tmp_path / "baseline.log", timeout=120)
    try:
        response = httpx.post(f"http://127.0.0.1:{port}/v1/classify/sst2",
                              json={"inputs": ["a wonderful film", "dull and tedious"]})
    finally:
        serving.stop(process)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["label"] for r in results] == ["positive", "negative"]


def test_server_cpu_lists_accept_single_cores_lists_and_ranges() -> None:
    from bench.peers import _cpu_list

    assert _cpu_list("0") == {0}
    assert _cpu_list("0,2") == {0, 2}
    assert _cpu_list("0-3,6") == {0, 1, 2, 3, 6}


def test_pinned_servers_run_under_taskset_with_one_thread_per_core() -> None:
    import os
    import subprocess
    import sys

    from bench.peers import pinned

    command, env = pinned([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)),"
                           " os.environ['OMP_NUM_THREADS'])"], {}, "0")
    result = subprocess.run(command, env={**os.environ, **env}, capture_output=True,
                            text=True, check=True, timeout=30)
    assert result.stdout.strip() == "[0] 1"
    assert pinned(["server"], {"A": "1"}, None) == (["server"], {"A": "1"})


def test_pair_tasks_and_tab_separated_lines_become_pair_inputs(tiny_repo: TinyRepo,
                                                               tmp_path: Path) -> None:
    from loadtest.workload import file_requests, task_requests

    rte = task_requests("rte", tiny_repo.data_dir, inputs_per_request=2)
    assert rte[0].path == "/v1/classify/rte"
    assert len(rte[0].body["inputs"]) == 2  # type: ignore[arg-type]
    assert all(isinstance(x, list) and len(x) == 2 for x in rte[0].body["inputs"])  # type: ignore[attr-defined]
    lines = tmp_path / "pairs.txt"
    lines.write_text("a premise\ta hypothesis\na single text\n", encoding="utf-8")
    bodies = [r.body["inputs"] for r in file_requests("rte", lines)]
    assert bodies == [[["a premise", "a hypothesis"]], ["a single text"]]
