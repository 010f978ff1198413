"""Request guards that run before any handler: a cap on body size while the body streams in."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.schemas import ClientError


class BodyLimit:
    """Refuse request bodies over `max_bytes` (413) without reading more than that.

    The check is in `receive`: a handler reading the body gets a ClientError, which each protocol
    answers in its own error format. The declared Content-Length is checked before any byte.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > self.max_bytes
        received = 0

        async def limited() -> Message:
            nonlocal received
            if too_big:
                raise self._error(int(declared or 0))
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._error(received)
            return message

        await self.app(scope, limited, send)

    def _error(self, size: int) -> ClientError:
        return ClientError(413, f"request body of {size} bytes or more is over the limit of "
                                f"{self.max_bytes} bytes (limits.max_body_bytes)")
