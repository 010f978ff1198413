"""The hot path of both protocols: one `handle()` from request to reply, and the ASGI router that
sends the two classify routes there and everything else to FastAPI.

Per request: headers read once into a dict, API keys and the body limit checked inline (no
middleware layers), a full queue refused before the body is parsed or tokenized, one watcher for a
client that leaves, one timer for the deadline (in core/inference.py), and the answer encoded once.
FastAPI keeps the cold endpoints (/v1/models, /metrics, health, /docs) and the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import CLIENT_CLOSED, UnsupportedMediaType, http_error
from app.api.guards import AuthPolicy, body_too_big
from app.api.observability import request_id, request_id_for
from app.core.errors import ClientGone, Overloaded, ServingError
from app.core.inference import priority_level
from app.core.service import Service
from app.core.tracing import RequestTrace, current_trace

log = logging.getLogger(__name__)
JSON = b"application/json"
VERSION_HEADER = "X-Model-Version"  # on every answer: the version of the model that answered


class Wire(Protocol):
    """What a protocol module provides to the shared handler."""

    name: str  # the door: "v1", "v2", "hf" or "tei" (app/api/errors.py maps its errors)

    def model_of(self, path: str) -> tuple[str, str | None] | None: ...

    @staticmethod
    def answer(service: Service, name: str, version: str | None, body: bytes,
               headers: dict[bytes, bytes], started: float,
               gone: asyncio.Future[None] | None) -> Awaitable[tuple[bytes, bytes, dict[str, str]]]:
        ...

    @staticmethod
    def error(status: int, message: str) -> bytes: ...


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: bytes
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def model_in_path(path: str, prefix: str, suffix: str = "") -> tuple[str, str | None] | None:
    """(name, None) when `path` is `prefix` + a model name (+ `suffix`, optional)."""
    if not path.startswith(prefix):
        return None
    name = path[len(prefix):].removesuffix(suffix)
    return None if not name or "/" in name else (name, None)


def timeout_header(headers: dict[bytes, bytes]) -> str | None:
    """The client's X-Request-Timeout-Ms header, if sent."""
    value = headers.get(b"x-request-timeout-ms")
    return None if value is None else value.decode("latin-1")


def require_json(content_type: bytes | None) -> None:
    """Refuse (415) a body whose declared media type is not JSON (none declared: JSON)."""
    media = (content_type or JSON).split(b";")[0].strip().lower().decode("latin-1")
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {media}")


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The whole body, refusing (413) a declared or actual size over `limit` without reading on."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise body_too_big(int(declared), limit)
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone("the client disconnected before sending its body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise body_too_big(size, limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _watch_disconnect(receive: Receive) -> None:
    """Return when the client disconnects (uvicorn also answers receive() with a disconnect once
    the response is complete; nothing waits on the watcher by then)."""
    while (await receive())["type"] != "http.disconnect":
        continue


async def hold_refusal(service: Service) -> None:
    """Answer a refusal late (batching.refusal_delay_ms): a client that retries at once then
    retries at that pace instead of in a busy loop; the wait costs a timer, not CPU."""
    delay = service.settings.batching.refusal_delay_ms
    if delay > 0:
        await asyncio.sleep(delay / 1000)


def queue_full(service: Service, name: str, level: int = 1) -> bool:
    """Whether a one-row request of priority `level` would find the model's queue full."""
    route = service.registry.default_route(name)  # every version of a model takes the same
    if route is None or not route.single_pool:  # the dispatcher decides (it may spill)
        return False
    batcher = service.batchers.get(route.pool)
    return batcher is not None and batcher.full(1, level)


def header_priority(service: Service, headers: dict[bytes, bytes]) -> int:
    """The priority level of the X-Priority header (1 highest; none: the default)."""
    value = headers.get(b"x-priority")
    return priority_level(service, None if value is None else value.decode("latin-1"))


async def handle(service: Service, wire: Wire, name: str, version: str | None, path: str,
                 headers: dict[bytes, bytes], receive: Receive, auth: AuthPolicy) -> Reply:
    """One classify request of either protocol, from its headers and body to its reply."""
    started = time.perf_counter()
    if not auth.allows(path, headers):
        return Reply(401, JSON, wire.error(401, auth.MESSAGE), {"WWW-Authenticate": "Bearer"})
    trace = None if service.tracing is None else \
        service.tracing.begin(wire.name, name, path, headers, started, request_id.get())
    token = None if trace is None else current_trace.set(trace)
    try:
        reply = await _answer(service, wire, name, version, headers, receive, started)
    except ServingError as exc:
        if isinstance(exc, Overloaded):  # the queue is full (checked early, or at queueing)
            await hold_refusal(service)
        error = http_error(exc, wire.name)
        reply = Reply(error.status, JSON, wire.error(error.status, error.message), error.headers)
    except Exception as exc:
        log.exception("classify %s failed", name)
        reply = Reply(500, JSON, wire.error(500, f"internal error ({type(exc).__name__}); see "
                                                 "the server log"))
    record(service, name, reply.status, started, reply.headers.get(VERSION_HEADER, ""))
    if trace is not None:
        end_trace(trace, reply.status)
        current_trace.reset(token)  # type: ignore[arg-type]
    return reply


def end_trace(trace: RequestTrace, status: int) -> None:
    """Close a request's span with its final status."""
    now = time.perf_counter()
    if trace.answered is not None:
        trace.child("respond", trace.answered, now, {})
    trace.end(status, now, failed=status >= 500)


async def _answer(service: Service, wire: Wire, name: str, version: str | None,
                  headers: dict[bytes, bytes], receive: Receive, started: float) -> Reply:
    if queue_full(service, name, header_priority(service, headers)):  # before parsing: cheap
        service.metrics.rejected.labels(name, "queue_full").inc()
        raise Overloaded("server is at capacity (its queue is full); retry shortly")
    body = await read_body(receive, headers, service.settings.limits.max_body_bytes)
    gone = asyncio.ensure_future(_watch_disconnect(receive))
    content_type, data, extra = await wire.answer(service, name, version, body, headers,
                                                  started, gone)
    return Reply(200, content_type, data, extra)


def record(service: Service, name: str, status: int, started: float, version: str = "") -> None:
    """Count a classify request by model, version (when one answered) and final status, time
    the successful ones, log it."""
    known = name if service.registry.knows(name) else "_unknown"
    seconds = time.perf_counter() - started
    # Counts and ids only: the input text never reaches the logs (see log_payloads). Refusals
    # (4xx) at debug: under overload they come by the thousand, and logging each one would spend
    # the CPU the workers need; 5xx are the server's fault and stay visible.
    level = logging.DEBUG if status < 500 else logging.WARNING
    if log.isEnabledFor(level):
        log.log(level, "classify %s -> %d", known, status,
                extra={"task": known, "version": version, "status": status,
                       "latency_ms": round(1000 * seconds, 2)})
    if status == CLIENT_CLOSED:
        service.metrics.disconnects.labels(known).inc()
    service.observe_request(known, version, status, seconds)


async def send_reply(send: Send, reply: Reply, rid: str) -> None:
    headers = [(b"content-type", reply.content_type),
               (b"content-length", str(len(reply.body)).encode()),
               (b"x-request-id", rid.encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in reply.headers.items()]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


class HotRoutes:
    """ASGI entry point: POST classify requests of both protocols go to `handle`, the rest to
    `app` (FastAPI, with its middleware for the cold endpoints)."""

    def __init__(self, app: ASGIApp, service: Service, wires: tuple[Wire, ...]) -> None:
        self.app = app
        self.service = service
        self.wires = wires
        self.auth = AuthPolicy.from_settings(service.settings.auth)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.service.draining and scope["type"] == "http":
            send = _closing(send)
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            for wire in self.wires:
                found = wire.model_of(path)
                if found is not None:
                    if found[1] is None and scope["query_string"]:
                        found = (found[0], query_version(scope["query_string"]))
                    await self._serve(wire, found, path, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(self, wire: Wire, found: tuple[str, str | None], path: str, scope: Scope,
                     receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        rid = request_id_for(headers)
        token = request_id.set(rid)
        try:
            reply = await handle(self.service, wire, found[0], found[1], path, headers, receive,
                                 self.auth)
            await send_reply(send, reply, rid)
        finally:
            request_id.reset(token)


def _closing(send: Send) -> Send:
    """`send` that adds `Connection: close` to the response (the server is draining: the client
    should not send its next request on this connection)."""

    async def closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []),
                                               (b"connection", b"close")]}
        await send(message)

    return closing


def query_version(query: bytes) -> str | None:
    """`version` from a query string (/v1/classify/{name}?version=2)."""
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if name == b"version" and value:
            return value.decode("latin-1")
    return None


async def handle_request(service: Service, wire: Wire, name: str, version: str | None,
                         request: Request, auth: AuthPolicy) -> Response:
    """The same handler behind a FastAPI route (the OpenAPI document's classify operations)."""
    if version is None:
        version = query_version(request.scope["query_string"])
    reply = await handle(service, wire, name, version, request.url.path,
                         dict(request.scope["headers"]), request.receive, auth)
    return Response(reply.body, reply.status, reply.headers, reply.content_type.decode())
