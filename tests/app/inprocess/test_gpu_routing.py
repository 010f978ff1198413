"""The GPU pool's routing in-process, against fake pools: per task, by length (hybrid), spill-over
to the CPU pool when the GPU pool is down or saturated, and what start-up does without CUDA.
tests/app/served/test_gpu_pool.py runs the same pool for real (worker processes on the CPU provider)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api.app import create_app
from app.core.service import (
    Pool,
    Service,
    _core_split,
    cuda_providers,
    prepare_service,
    start_service,
    stop_service,
)
from app.runtime.workers import WorkerError, WorkerSpec
from app.settings import ConfigError, GpuPoolSettings, load_settings
from tests.fakes import FakePool, fake_pools
from tests.metrics_text import sample_value

ON_CPU = {"providers": ["CPUExecutionProvider"]}
SHORT = "a fine film"
LONG = " ".join(["a long and winding review of a film that goes on"] * 4)  # ~50 tokens


def _settings(repo: Path, gpu: dict[str, Any] | None = None, **more: Any) -> Any:
    return load_settings(model_repository=repo, gpu_pool={**ON_CPU, **(gpu or {})}, **more)


@asynccontextmanager
async def served(repo: Path, gpu: dict[str, Any] | None = None, **more: Any) \
        -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, FakePool], Service]]:
    service = prepare_service(_settings(repo, gpu, **more))
    made, make = fake_pools()
    await start_service(service, make)
    transport = httpx.ASGITransport(app=create_app(service))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, made, service
    finally:
        await stop_service(service)


def _texts(pool: FakePool) -> list[str]:
    return [text for batch in pool.batches for text in batch]  # type: ignore[misc]


def test_a_gpu_routed_task_runs_on_the_gpu_pool_with_the_fp16_variant(fast_repo: Path) -> None:
    async def scenario() -> tuple[httpx.Response, dict[str, FakePool]]:
        async with served(fast_repo, routing={"sst2": "gpu"}) as (client, pools, _):
            return await client.post("/v1/classify/sst2", json={"inputs": [SHORT]}), pools

    response, pools = asyncio.run(scenario())
    assert response.json()["variant"] == "gpu-fp16"
    assert _texts(pools["gpu"]) == [SHORT]
    assert _texts(pools["cpu"]) == []  # loaded for spill-over, given nothing


def test_the_gpu_pool_can_serve_the_fp32_variant(fast_repo: Path) -> None:
    async def scenario() -> dict[str, Any]:
        async with served(fast_repo, {"variant": "fp32"}, routing={"sst2": "gpu"}) as (c, _, _):
            return (await c.post("/v1/classify/sst2", json={"inputs": [SHORT]})).json()

    assert asyncio.run(scenario())["variant"] == "fp32"


def test_a_hybrid_task_sends_long_inputs_to_the_gpu_and_short_ones_to_the_cpu(
        fast_repo: Path) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, FakePool]]:
        async with served(fast_repo, {"min_length": 20}, routing={"sst2": "hybrid"}) \
                as (client, pools, _):
            response = await client.post("/v1/classify/sst2", json={"inputs": [SHORT, LONG]})
            return response.json(), pools

    body, pools = asyncio.run(scenario())
    assert _texts(pools["cpu"]) == [SHORT]
    assert _texts(pools["gpu"]) == [LONG]
    assert body["variant"] == "mixed"
    assert [r["variant"] for r in body["results"]] == ["cpu-int8", "gpu-fp16"]


def test_one_variant_answering_a_hybrid_request_is_named_once(fast_repo: Path) -> None:
    async def scenario() -> dict[str, Any]:
        async with served(fast_repo, {"min_length": 20}, routing={"sst2": "hybrid"}) as (c, _, _):
            return (await c.post("/v1/classify/sst2", json={"inputs": [LONG, LONG]})).json()

    body = asyncio.run(scenario())
    assert body["variant"] == "gpu-fp16"
    assert all("variant" not in result for result in body["results"])


def test_rows_spill_to_the_cpu_pool_while_the_gpu_pool_is_down(fast_repo: Path) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], str]:
        async with served(fast_repo, routing={"sst2": "gpu"}) as (client, pools, service):
            pools["gpu"].up = False
            body = (await client.post("/v1/classify/sst2", json={"inputs": [SHORT]})).json()
            listed = (await client.get("/v1/pools")).json()
            return body, listed, service.metrics.exposition().decode()

    body, listed, metrics = asyncio.run(scenario())
    assert body["variant"] == "cpu-int8"
    gpu = next(p for p in listed["pools"] if p["name"] == "gpu")
    assert (gpu["ready"], gpu["spilled_rows"]) == (False, {"down": 1})
    labels = {"task": "sst2", "from_pool": "gpu", "to_pool": "cpu", "reason": "down"}
    assert sample_value(metrics, "ffs_rows_spilled_total", labels) == 1


def test_rows_spill_when_the_gpu_queue_passes_its_spill_mark(fast_repo: Path) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with served(fast_repo, {"spill_queue_rows": 2}, routing={"sst2": "gpu"}) \
                as (client, _, _):
            small = await client.post("/v1/classify/sst2", json={"inputs": [SHORT] * 2})
            big = await client.post("/v1/classify/sst2", json={"inputs": [SHORT] * 3})
            return [small.json(), big.json()]

    small, big = asyncio.run(scenario())
    assert (small["variant"], big["variant"]) == ("gpu-fp16", "cpu-int8")


def test_with_spill_off_rows_wait_for_the_gpu_pool(fast_repo: Path) -> None:
    async def scenario() -> tuple[bool, dict[str, FakePool], httpx.Response]:
        async with served(fast_repo, {"spill": "off"}, routing={"sst2": "gpu"}) \
                as (client, pools, service):
            pools["gpu"].up = False
            ready = service.ready()
            pools["gpu"].up = True
            return ready, pools, await client.post("/v1/classify/sst2", json={"inputs": [SHORT]})

    ready, pools, response = asyncio.run(scenario())
    assert not ready
    assert "cpu" not in pools  # nothing to spill to: no CPU pool is started for the task
    assert response.json()["variant"] == "gpu-fp16"


def test_a_down_gpu_pool_that_can_spill_leaves_the_service_ready(fast_repo: Path) -> None:
    async def scenario() -> bool:
        async with served(fast_repo, routing={"sst2": "gpu"}) as (_, pools, service):
            pools["gpu"].up = False
            return service.ready() and service.route_ready(service.registry.route("sst2:1"))

    assert asyncio.run(scenario())


def test_rows_waiting_for_a_gpu_pool_that_goes_down_move_to_the_cpu_pool(
        fast_repo: Path) -> None:
    async def scenario() -> dict[str, Any]:
        async with served(fast_repo, {"instances_per_device": 1}, routing={"sst2": "gpu"}) \
                as (client, pools, _):
            gpu = pools["gpu"]
            gpu.delay = 0.3
            first = asyncio.create_task(client.post("/v1/classify/sst2", json={"inputs": [LONG]}))
            await asyncio.sleep(0.05)  # the only GPU worker is busy with `first`
            second = asyncio.create_task(client.post("/v1/classify/sst2",
                                                     json={"inputs": [SHORT]}))
            await asyncio.sleep(0.05)
            gpu.up = False  # its worker "died" while `second` waits
            await first
            return (await second).json()

    assert asyncio.run(scenario())["variant"] == "cpu-int8"


def test_models_show_each_tasks_pools_and_route(fast_repo: Path) -> None:
    async def scenario() -> dict[str, Any]:
        async with served(fast_repo, {"min_length": 20}, routing={"sst2": "hybrid"}) as (c, _, _):
            return (await c.get("/v1/models")).json()["models"][0]

    card = asyncio.run(scenario())
    assert card["pools"] == {"cpu": "cpu-int8", "gpu": "gpu-fp16"}
    assert (card["requested_pool"], card["pool"], card["long_pool"], card["long_length"],
            card["spill_pool"]) == ("hybrid", "cpu", "gpu", 20, "cpu")


def test_a_missing_cuda_provider_falls_back_to_cpu_and_says_how_to_fix_it(
        fast_repo: Path) -> None:
    settings = load_settings(model_repository=fast_repo, routing={"sst2": "gpu"})
    route = prepare_service(settings).registry.route("sst2:1")
    assert (route.requested_pool, route.pool, route.variant) == ("gpu", "cpu", "cpu-int8")
    assert route.fallback_reason is not None
    assert "no CUDAExecutionProvider" in route.fallback_reason
    assert "onnxruntime-gpu" in route.fallback_reason


def test_a_missing_cuda_provider_with_gpu_fallback_fail_refuses_to_start(
        fast_repo: Path) -> None:
    settings = load_settings(model_repository=fast_repo, routing={"sst2": "hybrid"},
                             gpu_fallback="fail")
    with pytest.raises(ConfigError, match=r"routed to the gpu pool \(hybrid\) but this onnxruntime"):
        prepare_service(settings)


def test_gpu_workers_that_fail_to_start_leave_the_task_on_the_cpu_pool(fast_repo: Path) -> None:
    _, make = fake_pools()

    def failing_gpu(name: str, specs: list[WorkerSpec], service: Service) -> Pool:
        if name == "gpu":
            raise WorkerError("worker 0 failed to start: CUDAExecutionProvider could not be "
                              "initialised")
        return make(name, specs, service)  # type: ignore[no-any-return]

    async def scenario() -> tuple[Service, dict[str, Any]]:
        service = prepare_service(_settings(fast_repo, routing={"sst2": "gpu"}))
        await start_service(service, failing_gpu)
        try:
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service)),
                                       base_url="http://test")
            async with client:
                return service, (await client.post("/v1/classify/sst2",
                                                   json={"inputs": [SHORT]})).json()
        finally:
            await stop_service(service)

    service, body = asyncio.run(scenario())
    assert body["variant"] == "cpu-int8"
    assert list(service.pools) == ["cpu"]
    reason = service.registry.route("sst2:1").fallback_reason
    assert reason is not None and "could not be initialised" in reason


def test_gpu_workers_failing_with_gpu_fallback_fail_stop_start_up(fast_repo: Path) -> None:
    def failing(name: str, specs: list[WorkerSpec], service: Service) -> Pool:
        raise WorkerError("no GPU")

    service = prepare_service(_settings(fast_repo, routing={"sst2": "gpu"}, gpu_fallback="fail"))
    with pytest.raises(WorkerError, match="no GPU"):
        asyncio.run(start_service(service, failing))


def test_each_gpu_worker_takes_a_core_from_the_cpu_pool(
        monkeypatch: pytest.MonkeyPatch, fast_repo: Path) -> None:
    monkeypatch.setattr("app.core.service.usable_cores", lambda: [0, 1, 2, 3])
    assert _core_split(load_settings(model_repository=fast_repo), 2) == ([0, 1], [2, 3])
    assert _core_split(load_settings(model_repository=fast_repo), 0) == ([0, 1, 2, 3], [])
    assert _core_split(load_settings(model_repository=fast_repo), 9) == ([0], [1, 2, 3])


def test_one_usable_core_is_shared_by_both_pools(
        monkeypatch: pytest.MonkeyPatch, fast_repo: Path) -> None:
    monkeypatch.setattr("app.core.service.usable_cores", lambda: [5])
    assert _core_split(load_settings(model_repository=fast_repo), 1) == ([5], [5])


def test_cuda_options_come_from_the_settings() -> None:
    gpu = GpuPoolSettings(providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
                          gpu_mem_limit_mb=512, copy_in_default_stream=False)
    name, options = cuda_providers(gpu, 3)[0]  # type: ignore[misc]
    assert name == "CUDAExecutionProvider"
    assert options == {"device_id": "3", "arena_extend_strategy": "kSameAsRequested",
                       "do_copy_in_default_stream": "0", "gpu_mem_limit": str(512 * 2**20)}
    assert cuda_providers(gpu, 3)[1] == "CPUExecutionProvider"


def test_more_api_processes_than_gpu_workers_is_a_configuration_error(fast_repo: Path) -> None:
    settings = _settings(fast_repo, routing={"sst2": "gpu"}, api_processes=2)
    with pytest.raises(ConfigError, match="each API process needs one"):
        prepare_service(settings)
