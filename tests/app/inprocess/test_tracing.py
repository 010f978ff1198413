"""OpenTelemetry traces of classify requests, read from the SDK's in-memory exporter: one trace per
request with validate, queue, batch and respond spans, a client's traceparent continued, the trace
id in the logs, sampling, and nothing at all when tracing is off (the default)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from app.api.app import create_app
from app.api.observability import JsonFormatter
from app.core.service import prepare_service, start_service, stop_service
from app.core.tracing import Tracing, tracing_from_settings
from app.settings import TracingSettings, load_settings
from tests.fakes import fake_pools

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@asynccontextmanager
async def traced(repo: Path, sampler: Any = None) \
        -> AsyncIterator[tuple[httpx.AsyncClient, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(**({"sampler": sampler} if sampler is not None else {}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    service = prepare_service(load_settings(model_repository=repo))
    service.tracing = Tracing(provider)
    await start_service(service, fake_pools()[1])
    try:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, exporter
    finally:
        await stop_service(service)


def _classify(repo: Path, headers: dict[str, str] | None = None, sampler: Any = None) \
        -> tuple[httpx.Response, list[ReadableSpan]]:
    async def scenario() -> tuple[httpx.Response, list[ReadableSpan]]:
        async with traced(repo, sampler) as (client, exporter):
            response = await client.post("/v1/classify/sst2", headers=headers or {},
                                         json={"inputs": ["a fine film", "dull"]})
            return response, list(exporter.get_finished_spans())

    return asyncio.run(scenario())


def test_a_request_is_one_trace_of_validate_queue_batch_and_respond(fast_repo: Path) -> None:
    response, spans = _classify(fast_repo)
    assert response.status_code == 200
    by_name = {span.name: span for span in spans}
    assert sorted(by_name) == ["batch", "classify", "queue", "respond", "validate"]
    root = by_name["classify"]
    assert root.attributes is not None and root.attributes["http.response.status_code"] == 200
    assert root.attributes["ffs.task"] == "sst2"
    for child in spans:
        if child is not root:
            assert child.parent is not None and child.parent.span_id == root.context.span_id
            assert child.context.trace_id == root.context.trace_id
            assert root.start_time <= child.start_time <= child.end_time <= root.end_time  # type: ignore[operator]
    # Two idle workers share the two rows: a batch (and a queue wait) per worker.
    batches = [span.attributes or {} for span in spans if span.name == "batch"]
    queues = [span for span in spans if span.name == "queue"]
    assert sum(int(b["ffs.batch.size"]) for b in batches) == 2  # type: ignore[call-overload]
    assert len(queues) == len(batches)
    assert {b["ffs.pool"] for b in batches} == {"cpu"}
    assert all(int(b["ffs.batch.padded_length"]) > 0 for b in batches)  # type: ignore[call-overload]
    assert {b["ffs.worker.index"] for b in batches} <= {0, 1}


def test_a_clients_traceparent_continues_its_trace(fast_repo: Path) -> None:
    header = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
    _, spans = _classify(fast_repo, header)
    root = next(span for span in spans if span.name == "classify")
    assert format(root.context.trace_id, "032x") == CLIENT_TRACE
    assert root.parent is not None and format(root.parent.span_id, "016x") == CLIENT_SPAN


def test_the_trace_id_is_logged_beside_the_request_id(
        fast_repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    header = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", "X-Request-Id": "req-42"}
    formatter = JsonFormatter()
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(formatter.format(record))

    logger = logging.getLogger("app.api.handle")
    handler = Keep(level=logging.DEBUG)
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.DEBUG, logger="app.api.handle"):
            _classify(fast_repo, header)
    finally:
        logger.removeHandler(handler)
    request_lines = [line for line in lines if "classify sst2 -> 200" in line]
    assert request_lines
    assert f'"trace_id": "{CLIENT_TRACE}"' in request_lines[0]
    assert '"request_id": "req-42"' in request_lines[0]


def test_a_sample_ratio_of_zero_traces_nothing_and_still_answers(fast_repo: Path) -> None:
    response, spans = _classify(fast_repo, sampler=TraceIdRatioBased(0.0))
    assert response.status_code == 200
    assert spans == []


def test_tracing_is_off_by_default(fast_repo: Path) -> None:
    assert prepare_service(load_settings(model_repository=fast_repo)).tracing is None


def test_enabled_tracing_exports_over_otlp_http_with_the_service_name() -> None:
    tracing = tracing_from_settings(TracingSettings(enabled=True, service_name="tickets-api",
                                                    otlp_endpoint="http://127.0.0.1:9/v1/traces"))
    assert tracing is not None
    try:
        assert tracing.provider.resource.attributes["service.name"] == "tickets-api"
    finally:
        tracing.provider.shutdown()
