"""POST /v1/classify/{name}/bulk: a bulk job on the same replicas as interactive traffic.

Newline-delimited JSON in (one input a line: a text, or a [text, text] pair), newline-delimited
JSON out, streamed as answers come, one line per input line in input order:
`{"line": n, "version": "1", "label": ..., "score": ..., ...}` (the fields of a /v1 result), or
`{"line": n, "error": "..."}` for a line that cannot be classified. The job runs at the lowest
priority level, keeps at most `priorities.bulk_window_rows` rows queued or running, and reads
more input only as they are answered: it never gets a 429 (a full queue or a passed deadline is
waited out and retried). After a dropped connection, send the same input again with
`?start=N` (N: the first line not answered) to resume there. A client must read the answers while
it sends (curl and aiohttp do): the server stops reading input while its answers are unread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from app.api.errors import http_error
from app.api.guards import AuthPolicy
from app.api.handle import _watch_disconnect, query_version
from app.api.schemas import error_payload
from app.api.v1 import PREFIX, predictions
from app.core.answers import score_options
from app.core.errors import (
    ClientGone,
    DeadlinePassed,
    InvalidInput,
    InvalidRequest,
    Overloaded,
    ServingError,
    WorkerFailed,
)
from app.core.inference import classify
from app.core.inputs import parse_inputs
from app.core.service import Service

log = logging.getLogger(__name__)
SUFFIX = "/bulk"
NDJSON = b"application/x-ndjson"
RETRY_S = 0.05  # the wait before a chunk that found the queue full is offered again
WORKER_TRIES = 3  # a chunk whose worker fails this often is answered with the error


def bulk_model(path: str) -> str | None:
    """The model name when `path` is /v1/classify/{name}/bulk."""
    if not (path.startswith(PREFIX) and path.endswith(SUFFIX)):
        return None
    name = path[len(PREFIX):-len(SUFFIX)]
    return name if name and "/" not in name else None


@dataclass
class Line:
    number: int
    raw: Any = None  # the parsed input, when it parsed
    answer: dict[str, Any] | None = None


async def _lines(receive: Any, start: int) -> AsyncIterator[Line]:
    """The body's lines from `start` on, parsed, as the body arrives (blank lines skipped and
    not numbered)."""
    number = 0
    rest = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone("the client left")
        rest += message.get("body", b"")
        more = message.get("more_body", False)
        *complete, rest = rest.split(b"\n")
        if not more:
            complete.append(rest)
        for raw in complete:
            if not raw.strip():
                continue
            if number >= start:
                yield _parsed(number, raw)
            number += 1
        if not more:
            return


def _parsed(number: int, raw: bytes) -> Line:
    try:
        return Line(number, orjson.loads(raw))
    except orjson.JSONDecodeError:
        return Line(number, answer={"line": number, "error": "the line is not JSON: send one "
                                    "text (a JSON string) or [text, text] per line"})


class BulkJob:
    """One bulk request: its lines classified chunk by chunk, at the lowest priority."""

    def __init__(self, service: Service, name: str, version: str | None) -> None:
        self.service = service
        self.name = name
        self.version = version
        self.priority = service.settings.priorities.levels
        window = service.settings.priorities.bulk_window_rows
        self.chunk_rows = max(1, window // 2)  # two chunks in flight: one runs, one waits

    async def answer(self, lines: list[Line]) -> list[Line]:
        """Every line answered (an error line for those that cannot be classified)."""
        valid = [line for line in lines if line.answer is None and self._check(line)]
        if valid:
            try:
                await self._classify(valid)
            except InvalidInput:  # one input the checks could not see (e.g. too many tokens)
                for line in valid:
                    await self._one(line)
            except ServingError as exc:
                for line in valid:
                    line.answer = {"line": line.number, "error": exc.message}
        errors = sum("error" in (line.answer or {}) for line in lines)
        metrics = self.service.metrics.bulk_lines
        metrics.labels(self.name, "answered").inc(len(lines) - errors)
        metrics.labels(self.name, "error").inc(errors)
        return lines

    def _check(self, line: Line) -> bool:
        """Whether the line's input is one the model takes (else its answer is the error; so
        too when the model stopped serving mid-job)."""
        try:
            model = self.service.registry.find(self.name, self.version).model
            parse_inputs([line.raw], model.manifest.input_kind, self.name,
                         self.service.settings.limits)
        except ServingError as exc:
            line.answer = {"line": line.number, "error": exc.message.replace("inputs[0]: ", "")}
            return False
        return True

    async def _one(self, line: Line) -> None:
        try:
            await self._classify([line])
        except ServingError as exc:
            line.answer = {"line": line.number, "error": exc.message}

    async def _classify(self, lines: list[Line]) -> None:
        """Classify the lines, waiting out a full queue or a passed deadline (never refused);
        a failing worker is retried a few times, then the lines get its error."""
        failures = 0
        while True:
            try:
                with self.service.registry.lease(self.name, self.version) as loaded:
                    options = score_options(loaded.model.manifest, None, None)
                    result = await classify(self.service, loaded, [line.raw for line in lines],
                                            priority=self.priority)
            except (Overloaded, DeadlinePassed):
                await asyncio.sleep(RETRY_S)
                continue
            except WorkerFailed:
                failures += 1
                if failures >= WORKER_TRIES:
                    raise
                await asyncio.sleep(RETRY_S)
                continue
            version = str(result.version)
            for line, item in zip(lines, predictions(result, options, False), strict=True):
                line.answer = {"line": line.number, "version": version, **item}
            return


async def serve_bulk(service: Service, name: str, scope: Any, receive: Any, send: Any,
                     auth: AuthPolicy) -> None:
    """The bulk route, streamed: refusals before the first byte of the answer, then a line per
    input line."""
    started = time.perf_counter()
    headers = dict(scope["headers"])
    try:
        if not auth.allows(scope["path"], headers):
            await _refuse(send, 401, AuthPolicy.MESSAGE, {"WWW-Authenticate": "Bearer"})
            return
        version = query_version(scope["query_string"])
        start = _start(scope["query_string"])
        service.registry.find(name, version)  # unknown model or version: refused up front
    except ServingError as exc:
        error = http_error(exc)
        await _refuse(send, error.status, error.message, error.headers)
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", NDJSON)]})
    job = BulkJob(service, name, version)
    answered = 0
    try:
        answered = await _stream(job, _lines(receive, start), send, receive)
    except ClientGone:
        log.info("bulk %s: the client left", name)
    except Exception as exc:  # the answer has begun: say so in its last line
        log.exception("bulk %s failed", name)
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "more_body": True,
                        "body": orjson.dumps({"error": f"internal error ({type(exc).__name__})"
                                              "; see the server log"}) + b"\n"})
    finally:
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        log.info("bulk %s: %d lines in %.1f s", name, answered, time.perf_counter() - started)


async def _stream(job: BulkJob, lines: AsyncIterator[Line], send: Any, receive: Any) -> int:
    """Read, classify and write in order, with two chunks in flight at most."""
    in_flight: deque[asyncio.Task[list[Line]]] = deque()
    chunk: list[Line] = []
    written = 0

    async def write_oldest() -> None:
        nonlocal written
        done = await in_flight.popleft()
        body = b"".join(orjson.dumps(line.answer) + b"\n" for line in done)
        await send({"type": "http.response.body", "body": body, "more_body": True})
        written += len(done)

    try:
        async for line in lines:
            chunk.append(line)
            if len(chunk) >= job.chunk_rows:
                in_flight.append(asyncio.ensure_future(job.answer(chunk)))
                chunk = []
                while len(in_flight) >= 2:
                    await write_oldest()
        if chunk:
            in_flight.append(asyncio.ensure_future(job.answer(chunk)))
        gone = asyncio.ensure_future(_watch_disconnect(receive))
        try:
            while in_flight:
                if gone.done():
                    raise ClientGone("the client left")
                await write_oldest()
        finally:
            gone.cancel()
    finally:
        for task in in_flight:  # the client left: rows not yet run are dropped
            task.cancel()
    return written


def _start(query: bytes) -> int:
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if key == b"start":
            if not value.isdigit():
                raise InvalidRequest(f"start must be a line number (0 or more), got "
                                     f"{value.decode('latin-1')!r}")
            return int(value)
    return 0


async def _refuse(send: Any, status: int, message: str, headers: dict[str, str]) -> None:
    body = orjson.dumps(error_payload(PREFIX, status, message))
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            *[(k.lower().encode(), v.encode()) for k, v in headers.items()]]})
    await send({"type": "http.response.body", "body": body})


class BulkRoutes:
    """ASGI: POST /v1/classify/{name}/bulk to `serve_bulk`, everything else to `app`."""

    def __init__(self, app: Any, service: Service) -> None:
        self.app = app
        self.service = service
        self.auth = AuthPolicy.from_settings(service.settings.auth)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        name = bulk_model(scope["path"]) if scope["type"] == "http" and \
            scope["method"] == "POST" else None
        if name is None:
            await self.app(scope, receive, send)
            return
        await serve_bulk(self.service, name, scope, receive, send, self.auth)
