"""Bad days through the real server: overload, deadlines, clients that leave.

Workers are frozen with SIGSTOP to make "the model is busy" deterministic: a batch sent to a frozen
worker is surely running when the test acts, and SIGCONT lets it finish.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer, TinyRepo, free_port, start_server, stop_server
from tests.metrics_text import sample

QUEUE_ROWS = 8


@pytest.fixture(scope="module")
def busy_server(tiny_repo: TinyRepo, tmp_path_factory: pytest.TempPathFactory) \
        -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("busy") / "server.log"
    server = start_server(tiny_repo.root, log, FFS_CPU_POOL__WORKERS="2",
                          FFS_BATCHING__MAX_QUEUE_ROWS=str(QUEUE_ROWS),
                          FFS_LIMITS__REQUEST_TIMEOUT_S="20", FFS_GRPC_PORT=str(free_port()))
    yield server
    stop_server(server)


@pytest.fixture
def http(busy_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=busy_server.url, timeout=30.0) as client:
        yield client


def _worker_pids(http: httpx.Client) -> list[int]:
    return [int(w["pid"]) for w in http.get("/v1/pools").json()["pools"][0]["workers"]]


@contextmanager
def frozen_workers(http: httpx.Client) -> Iterator[list[int]]:
    """Workers stopped for the block; a test may thaw them earlier with _thaw(pids)."""
    pids = _worker_pids(http)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield pids
    finally:
        _thaw(pids)


def _wait_for(condition: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


async def _post(client: httpx.AsyncClient, text: str, delay: float = 0.0,
                **headers: str) -> httpx.Response | Exception:
    await asyncio.sleep(delay)
    try:
        return await client.post("/v1/classify/sst2", json={"inputs": [text]}, headers=headers)
    except httpx.HTTPError as exc:
        return exc


def test_a_deadline_fires_while_its_batch_is_still_running(http: httpx.Client) -> None:
    with frozen_workers(http):
        started = time.monotonic()
        response = http.post("/v1/classify/sst2", json={"inputs": ["good"]},
                             headers={"X-Request-Timeout-Ms": "300"})
        elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert "deadline" in response.json()["error"]["message"]
    assert elapsed < 5  # answered at its deadline, not when the frozen batch ends


def test_expired_requests_are_dropped_before_they_take_a_batch_slot(
        busy_server: RunningServer, http: httpx.Client) -> None:
    rows_before = sample(http, "ffs_batch_size_sum", pool="cpu")
    dropped_before = sample(http, "ffs_rows_dropped_total", pool="cpu")

    async def scenario() -> list[httpx.Response | Exception]:
        async with httpx.AsyncClient(base_url=busy_server.url, timeout=30.0) as client:
            timeout = {"X-Request-Timeout-Ms": "400"}
            return await asyncio.gather(  # two occupy the frozen workers, the third waits
                _post(client, "good", 0.0, **timeout), _post(client, "bad", 0.1, **timeout),
                _post(client, "fun", 0.2, **timeout))

    with frozen_workers(http):
        responses = asyncio.run(scenario())
    assert [getattr(r, "status_code", r) for r in responses] == [504, 504, 504]
    assert _wait_for(lambda: sample(http, "ffs_rows_dropped_total", pool="cpu")
                     == dropped_before + 1)
    assert _wait_for(lambda: sample(http, "ffs_batch_size_sum", pool="cpu") == rows_before + 2)


def _grpc_text(text: str) -> grpcaio.InferInput:
    tensor = grpcaio.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
    return tensor


def _rows_dropped_and_run(busy_server: RunningServer, http: httpx.Client,
                          grpc_call: Callable[[grpcaio.InferenceServerClient], Awaitable[object]]) \
        -> tuple[object, float, float]:
    """With the workers frozen and both busy with an HTTP request each, make one gRPC call:
    its outcome, and how many rows were dropped and run meanwhile (after the thaw)."""
    rows_before = sample(http, "ffs_batch_size_sum", pool="cpu")
    dropped_before = sample(http, "ffs_rows_dropped_total", pool="cpu")

    async def scenario() -> object:
        assert busy_server.grpc is not None
        client = grpcaio.InferenceServerClient(busy_server.grpc)
        async with httpx.AsyncClient(base_url=busy_server.url, timeout=30.0) as http_client:
            timeout = {"X-Request-Timeout-Ms": "600"}
            busy = [asyncio.ensure_future(_post(http_client, text, 0.0, **timeout))
                    for text in ("good", "bad")]
            await asyncio.sleep(0.2)  # both workers hold a frozen batch
            try:
                return await grpc_call(client)
            except Exception as exc:
                return exc
            finally:
                await asyncio.gather(*busy)
                await client.close()

    with frozen_workers(http):
        outcome = asyncio.run(scenario())
    _wait_for(lambda: sample(http, "ffs_batch_size_sum", pool="cpu") >= rows_before + 2)
    time.sleep(0.3)  # a row that was wrongly kept would run now
    return (outcome, sample(http, "ffs_rows_dropped_total", pool="cpu") - dropped_before,
            sample(http, "ffs_batch_size_sum", pool="cpu") - rows_before)


def test_a_grpc_deadline_shorter_than_the_queue_wait_drops_the_row(
        busy_server: RunningServer, http: httpx.Client) -> None:
    async def call(client: grpcaio.InferenceServerClient) -> object:
        return await client.infer("sst2", [_grpc_text("fun")], client_timeout=0.3)

    outcome, dropped, ran = _rows_dropped_and_run(busy_server, http, call)
    assert isinstance(outcome, InferenceServerException)
    assert outcome.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert (dropped, ran) == (1, 2)  # the two HTTP rows ran; the gRPC row never did


def test_a_cancelled_grpc_call_drops_its_row(busy_server: RunningServer,
                                            http: httpx.Client) -> None:
    async def call(client: grpcaio.InferenceServerClient) -> object:
        task = asyncio.ensure_future(client.infer("sst2", [_grpc_text("fun")]))
        await asyncio.sleep(0.2)  # queued behind the frozen batches
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        return task

    _, dropped, ran = _rows_dropped_and_run(busy_server, http, call)
    assert (dropped, ran) == (1, 2)


def test_a_full_queue_answers_grpc_unavailable_with_the_reason(busy_server: RunningServer,
                                                              http: httpx.Client) -> None:
    async def scenario() -> object:
        assert busy_server.grpc is not None
        client = grpcaio.InferenceServerClient(busy_server.grpc)
        async with httpx.AsyncClient(base_url=busy_server.url, timeout=30.0) as http_client:
            filling = [asyncio.ensure_future(_post(http_client, f"text {i}", 0.01 * i))
                       for i in range(2 + QUEUE_ROWS)]  # two running, the queue full
            await asyncio.sleep(0.01 * (2 + QUEUE_ROWS) + 0.3)
            try:
                return await client.infer("sst2", [_grpc_text("fun")], client_timeout=10)
            except InferenceServerException as exc:
                return exc
            finally:
                _thaw(pids)
                await asyncio.gather(*filling)
                await client.close()

    with frozen_workers(http) as pids:
        outcome = asyncio.run(scenario())
    assert isinstance(outcome, InferenceServerException)
    assert outcome.status() == "StatusCode.UNAVAILABLE"
    assert "capacity" in (outcome.message() or "")


def test_a_client_that_leaves_does_not_break_the_batch_or_the_worker(
        busy_server: RunningServer, http: httpx.Client) -> None:
    restarts_before = sample(http, "ffs_worker_restarts_total", pool="cpu")
    disconnects_before = sample(http, "ffs_client_disconnects_total", task="sst2")
    dropped_before = sample(http, "ffs_rows_dropped_total", pool="cpu")

    async def scenario() -> list[httpx.Response | Exception]:
        async with httpx.AsyncClient(base_url=busy_server.url, timeout=30.0) as patient, \
                httpx.AsyncClient(base_url=busy_server.url, timeout=0.5) as impatient:
            occupied = asyncio.gather(_post(patient, "good"), _post(patient, "bad", 0.1))
            leaver = await _post(impatient, "fun", 0.2)  # gives up after 0.5 s and hangs up
            await asyncio.sleep(0.3)
            _thaw(pids)
            return [*(await occupied), leaver]

    with frozen_workers(http) as pids:
        responses = asyncio.run(scenario())
    assert [getattr(r, "status_code", None) for r in responses[:2]] == [200, 200]
    assert isinstance(responses[2], httpx.TimeoutException)
    assert _wait_for(lambda: sample(http, "ffs_client_disconnects_total", task="sst2")
                     == disconnects_before + 1)
    assert _wait_for(lambda: sample(http, "ffs_rows_dropped_total", pool="cpu")
                     == dropped_before + 1)
    assert sample(http, "ffs_worker_restarts_total", pool="cpu") == restarts_before
    assert http.post("/v1/classify/sst2", json={"inputs": ["good"]}).status_code == 200


def _thaw(pids: list[int]) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):  # it may have exited (shutdown) or been replaced
            os.kill(pid, signal.SIGCONT)


def test_overload_is_refused_fast_with_retry_after_and_nothing_accepted_is_lost(
        busy_server: RunningServer, http: httpx.Client) -> None:
    ok_before = sample(http, "ffs_requests_total", task="sst2", status="200")
    busy_before = sample(http, "ffs_requests_total", task="sst2", status="429")
    offered = 3 * (QUEUE_ROWS + 2)  # ~3x what two busy workers and the queue can hold

    thawed_at: list[float] = []

    async def scenario() -> list[tuple[httpx.Response | Exception, float]]:
        async with httpx.AsyncClient(base_url=busy_server.url, timeout=30.0) as client:

            async def finished_at(index: int) -> tuple[httpx.Response | Exception, float]:
                result = await _post(client, "the film was good", 0.01 * index)
                return result, time.monotonic()

            tasks = [asyncio.ensure_future(finished_at(i)) for i in range(offered)]
            await asyncio.sleep(0.01 * offered + 0.5)
            thawed_at.append(time.monotonic())
            _thaw(pids)  # capacity comes back: everything accepted must now be answered
            return list(await asyncio.gather(*tasks))

    with frozen_workers(http) as pids:
        results = asyncio.run(scenario())
    statuses = [getattr(r, "status_code", repr(r)) for r, _ in results]
    accepted = [when for r, when in results if getattr(r, "status_code", None) == 200]
    rejected = [(r, when) for r, when in results if getattr(r, "status_code", None) == 429]
    assert set(statuses) == {200, 429}, statuses  # no 5xx, no timeouts, no hung connections
    assert len(accepted) + len(rejected) == offered
    assert len(accepted) >= QUEUE_ROWS  # the queue was used, not refused early
    assert all(r.headers.get("Retry-After") == "1" for r, _ in rejected)  # type: ignore[union-attr]
    # Refusals did not wait for model capacity; accepted requests did, and all were answered.
    assert all(when < thawed_at[0] for _, when in rejected)
    assert all(when > thawed_at[0] for when in accepted)
    assert sample(http, "ffs_requests_total", task="sst2", status="200") == ok_before + len(accepted)
    assert sample(http, "ffs_requests_total", task="sst2", status="429") == \
        busy_before + len(rejected)


def test_the_server_keeps_serving_after_all_of_it(http: httpx.Client, tmp_path: Path) -> None:
    del tmp_path
    assert http.get("/readyz").status_code == 200
    assert http.post("/v1/classify/sst2", json={"inputs": ["lovely"]}).json()["results"][0][
        "label"] == "positive"


def _replace_worker(http: httpx.Client, index: int) -> float:
    """Kill worker `index` and return the seconds until a new process serves in its place."""
    victim = _worker_pids(http)[index]
    os.kill(victim, signal.SIGKILL)
    started = time.monotonic()
    while time.monotonic() - started < 60:
        worker = http.get("/v1/pools").json()["pools"][0]["workers"][index]
        if worker["pid"] not in (None, victim) and worker["alive"]:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"worker {index} was not replaced within 60 s")


def test_a_crashed_worker_is_back_within_two_seconds(http: httpx.Client) -> None:
    assert _replace_worker(http, 1) < 2.0


def test_a_worker_that_keeps_crashing_is_restarted_with_growing_delays(
        http: httpx.Client) -> None:
    times = [_replace_worker(http, 0) for _ in range(5)]
    # Three restarts in the window are immediate; then 1 s, then 2 s of back-off (at least).
    assert times[3] >= 1.0
    assert times[4] >= 2.0
    assert times[4] > times[3]
    assert http.post("/v1/classify/sst2", json={"inputs": ["good"]}).status_code == 200


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_fails_readiness_drains_in_flight_requests_and_exits_zero(
        tiny_repo: TinyRepo, tmp_path: Path) -> None:
    server = start_server(tiny_repo.root, tmp_path / "server.log", FFS_CPU_POOL__WORKERS="2",
                          FFS_DRAIN_DELAY_S="0.8")
    try:

        async def scenario(pids: list[int]) -> tuple[int, object, list[httpx.Response | Exception]]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
                in_flight = [asyncio.ensure_future(_post(client, text, 0.02 * i))
                             for i, text in enumerate(["good", "bad", "fun", "dull"])]
                await asyncio.sleep(0.3)
                server.process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.2)
                readiness = (await client.get("/readyz")).status_code  # still serving, not ready
                await asyncio.sleep(1.0)  # past the drain delay: the socket is closed
                async with httpx.AsyncClient(base_url=server.url, timeout=5.0) as newcomer:
                    late = await _post(newcomer, "late")
                _thaw(pids)
                return readiness, late, list(await asyncio.gather(*in_flight))

        with httpx.Client(base_url=server.url, timeout=30.0) as http, \
                frozen_workers(http) as pids:
            readiness, late, answered = asyncio.run(scenario(pids))
        assert readiness == 503
        assert isinstance(late, httpx.ConnectError)  # not accepted once draining has begun
        assert [getattr(r, "status_code", r) for r in answered] == [200, 200, 200, 200]
        assert server.process.wait(timeout=30) == 0
        assert _wait_for(lambda: not any(_running(pid) for pid in pids))
    finally:
        if server.process.poll() is None:
            stop_server(server)
