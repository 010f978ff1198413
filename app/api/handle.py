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

from app.api.guards import AuthPolicy, body_too_big
from app.api.observability import request_id, request_id_for
from app.core.inference import record
from app.core.inputs import ClientError
from app.core.service import Service
from app.core.tracing import RequestTrace, current_trace

log = logging.getLogger(__name__)
JSON = b"application/json"
VERSION_HEADER = "X-Model-Version"  # on every answer: the version of the model that answered


class Wire(Protocol):
    """What a protocol module provides to the shared handler."""

    name: str

    @staticmethod
    def task_of(path: str) -> tuple[str, str | None] | None: ...

    @staticmethod
    def answer(service: Service, task: str, version: str | None, body: bytes,
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
            raise ClientError(499, "the client disconnected before sending its body")
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


async def _hold_refusal(service: Service) -> None:
    """Answer a refusal late (batching.refusal_delay_ms): a client that retries at once then
    retries at that pace instead of in a busy loop; the wait costs a timer, not CPU."""
    delay = service.settings.batching.refusal_delay_ms
    if delay > 0:
        await asyncio.sleep(delay / 1000)


def _queue_full(service: Service, task: str) -> bool:
    choice = service.catalog.get(task)  # every version of a model takes the same route
    route = None if choice is None else service.routes.get(choice.default)
    if route is None or not route.single_pool:  # the dispatcher decides (it may spill)
        return False
    batcher = service.batchers.get(route.pool)
    return batcher is not None and batcher.full()


async def handle(service: Service, wire: Wire, task: str, version: str | None, path: str,
                 headers: dict[bytes, bytes], receive: Receive, auth: AuthPolicy) -> Reply:
    """One classify request of either protocol, from its headers and body to its reply."""
    started = time.perf_counter()
    if not auth.allows(path, headers):
        return Reply(401, JSON, wire.error(401, auth.MESSAGE), {"WWW-Authenticate": "Bearer"})
    trace = None if service.tracing is None else \
        service.tracing.begin(wire.name, task, path, headers, started, request_id.get())
    token = None if trace is None else current_trace.set(trace)
    try:
        reply = await _answer(service, wire, task, version, headers, receive, started)
    except ClientError as exc:
        if exc.status == 429:  # the queue is full (checked early, or when the rows queue)
            await _hold_refusal(service)
        reply = Reply(exc.status, JSON, wire.error(exc.status, exc.message), exc.headers)
    except Exception as exc:
        log.exception("classify %s failed", task)
        reply = Reply(500, JSON, wire.error(500, f"internal error ({type(exc).__name__}); see "
                                                 "the server log"))
    record(service, task, reply.status, started, reply.headers.get(VERSION_HEADER, ""))
    if trace is not None:
        _end_trace(trace, reply.status)
        current_trace.reset(token)  # type: ignore[arg-type]
    return reply


def _end_trace(trace: RequestTrace, status: int) -> None:
    now = time.perf_counter()
    if trace.answered is not None:
        trace.child("respond", trace.answered, now, {})
    trace.end(status, now)


async def _answer(service: Service, wire: Wire, task: str, version: str | None,
                  headers: dict[bytes, bytes], receive: Receive, started: float) -> Reply:
    if _queue_full(service, task):  # before the body is parsed or tokenized: cheap
        service.metrics.rejected.labels(task, "queue_full").inc()
        raise ClientError(429, "server is at capacity (its queue is full); retry shortly",
                          {"Retry-After": "1"})
    body = await read_body(receive, headers, service.settings.limits.max_body_bytes)
    gone = asyncio.ensure_future(_watch_disconnect(receive))
    content_type, data, extra = await wire.answer(service, task, version, body, headers,
                                                  started, gone)
    return Reply(200, content_type, data, extra)


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
        settings = service.settings
        self.auth = AuthPolicy(settings.auth.keys(), settings.auth.protect_health,
                               settings.auth.protect_metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.service.draining and scope["type"] == "http":
            send = _closing(send)
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            for wire in self.wires:
                found = wire.task_of(path)
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


async def handle_request(service: Service, wire: Wire, task: str, version: str | None,
                         request: Request) -> Response:
    """The same handler behind a FastAPI route (the OpenAPI document's classify operations)."""
    settings = service.settings
    auth = AuthPolicy(settings.auth.keys(), settings.auth.protect_health,
                      settings.auth.protect_metrics)
    if version is None:
        version = query_version(request.scope["query_string"])
    reply = await handle(service, wire, task, version, request.url.path,
                         dict(request.scope["headers"]), request.receive, auth)
    return Response(reply.body, reply.status, reply.headers, reply.content_type.decode())
