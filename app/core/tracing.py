"""OpenTelemetry traces of classify requests (settings.tracing; off by default).

One server span per request (a client's W3C `traceparent` continues its trace) with child spans
`validate` (parse, limits, tokenize or estimate lengths), `queue` (a batch's rows waiting for it),
`batch` (the batch on a worker: size, padded length, worker index, pool) and `respond` (encode and
send). Queue and batch times are measured by the batcher anyway; a traced request only has them
written down (Pending.batches), so an untraced request costs one `is None` check per step.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from app.settings import TracingSettings

# The trace of the request being handled (for child spans and for the logs).
current_trace: ContextVar[RequestTrace | None] = ContextVar("current_trace", default=None)


@dataclass(frozen=True)
class BatchTiming:
    """One batch that ran rows of a traced request (perf_counter seconds)."""

    enqueued: float  # when the request's first row in this batch was queued
    started: float
    finished: float
    rows: int
    padded_length: int
    worker: int
    pool: str


class RequestTrace:
    """The spans of one request; only made for a sampled request."""

    def __init__(self, tracing: Tracing, span: Any) -> None:
        self._tracing = tracing
        self.span = span
        self.trace_id = format(span.get_span_context().trace_id, "032x")
        self._context = tracing.set_span_in_context(span)
        self.answered: float | None = None  # when the scores were ready (perf_counter)

    def child(self, name: str, start: float, end: float, attributes: dict[str, Any]) -> None:
        """A finished child span from `start` to `end` (perf_counter seconds)."""
        span = self._tracing.tracer.start_span(name, context=self._context,
                                               start_time=self._tracing.ns(start),
                                               attributes=attributes)
        span.end(end_time=self._tracing.ns(end))

    def batches(self, timings: list[BatchTiming]) -> None:
        for t in timings:
            self.child("queue", t.enqueued, t.started, {"ffs.pool": t.pool})
            self.child("batch", t.started, t.finished,
                       {"ffs.batch.size": t.rows, "ffs.batch.padded_length": t.padded_length,
                        "ffs.worker.index": t.worker, "ffs.pool": t.pool})

    def end(self, status: int, end: float, failed: bool) -> None:
        """Close the request's span with the status its door answered; `failed`: the server's
        fault (the door decides what that is)."""
        self.span.set_attribute("http.response.status_code", status)
        if failed:
            from opentelemetry.trace import Status, StatusCode

            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end(end_time=self._tracing.ns(end))


class Tracing:
    """A tracer of this service's own (no global provider), and what a request span needs."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import propagate, trace

        self.provider = provider
        self.tracer = provider.get_tracer("fastformers-serve")
        self._extract = propagate.extract
        self.set_span_in_context = trace.set_span_in_context
        self._server = trace.SpanKind.SERVER
        # perf_counter -> epoch nanoseconds, for spans whose times the batcher measured.
        self._offset = time.time_ns() - time.perf_counter_ns()

    def ns(self, perf_seconds: float) -> int:
        return int(perf_seconds * 1e9) + self._offset

    def begin(self, protocol: str, name: str, path: str, headers: dict[bytes, bytes],
              started: float, request_id: str) -> RequestTrace | None:
        """The request's span (continuing a client's `traceparent`), or None when not sampled."""
        carrier = {name: headers[key].decode("latin-1")
                   for name, key in (("traceparent", b"traceparent"),
                                     ("tracestate", b"tracestate")) if key in headers}
        span = self.tracer.start_span(
            "classify", context=self._extract(carrier) if carrier else None, kind=self._server,
            start_time=self.ns(started),
            attributes={"http.request.method": "POST", "url.path": path, "ffs.task": name,
                        "ffs.protocol": protocol, "ffs.request_id": request_id})
        if not span.is_recording():
            return None
        return RequestTrace(self, span)

    def shutdown(self) -> None:
        self.provider.shutdown()


def tracing_from_settings(settings: TracingSettings) -> Tracing | None:
    """The OTLP/HTTP exporting tracer the settings ask for, or None when tracing is off."""
    if not settings.enabled:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}),
                              sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
        endpoint=settings.otlp_endpoint)))
    return Tracing(provider)
