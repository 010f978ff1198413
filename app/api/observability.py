"""Request IDs and structured logs. Log lines carry counts and ids, never input text (unless
`log_payloads` is switched on for debugging)."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.tracing import current_trace

REQUEST_ID_HEADER = "x-request-id"
request_id: ContextVar[str] = ContextVar("request_id", default="-")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_for(headers: dict[bytes, bytes]) -> str:
    """The client's X-Request-Id when it is sane, else a fresh one."""
    given = headers.get(b"x-request-id", b"").decode("latin-1")
    return given if _SAFE_ID.match(given) else os.urandom(16).hex()  # uuid4's entropy, cheaper


class RequestId:
    """Give every HTTP request an id (the client's X-Request-Id when sane), echo it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_for(dict(scope["headers"]))
        token = request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (REQUEST_ID_HEADER.encode(), rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and any extras."""

    # "trace": the text format's field (RequestIdFilter); JSON has trace_id instead.
    RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "trace"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id.get(),
        }
        trace = current_trace.get()
        if trace is not None:
            entry["trace_id"] = trace.trace_id
        entry.update({k: v for k, v in record.__dict__.items() if k not in self.RESERVED})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def logging_config(level: str, log_format: str) -> dict[str, Any]:
    """dictConfig for the app and uvicorn's own loggers, in one format."""
    formatter = {"()": JsonFormatter} if log_format == "json" else {
        "format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s%(trace)s] %(message)s"}
    handler = {"class": "logging.StreamHandler", "formatter": "default",
               "filters": ["request_id"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {name: {"handlers": [], "propagate": True, "level": level.upper()}
                    for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
    }


class RequestIdFilter(logging.Filter):
    """Adds `request_id` (and, for a traced request, its trace id) to every record, for the text
    format."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        trace = current_trace.get()
        record.trace = "" if trace is None else f" trace={trace.trace_id}"
        return True
