"""Request guards that run before any handler: API keys, and a cap on body size while the body
streams in."""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.schemas import error_payload
from app.core.errors import InputTooLarge
from app.settings import AuthSettings

HEALTH_PATHS = ("/healthz", "/readyz", "/health", "/v2/health/live", "/v2/health/ready")
METRICS_PATHS = ("/metrics",)
ADMIN_PREFIX = "/v2/repository/"  # loads and unloads models: admin keys when configured


class AuthPolicy:
    """Which requests need `Authorization: Bearer <key>` and whether they carry a valid one.

    Health and metrics paths stay open unless configured otherwise (probes and scrapers usually
    carry no key). Keys are compared in constant time, against every key, so neither a key's
    content nor which key matched shows in the timing. No keys configured: everything is open.
    """

    MESSAGE = "missing or invalid API key: send 'Authorization: Bearer <key>'"

    def __init__(self, keys: list[bytes], protect_health: bool, protect_metrics: bool,
                 admin_keys: list[bytes] | None = None) -> None:
        self.keys = keys
        self.admin_keys = admin_keys or []
        self.open_paths = (() if protect_health else HEALTH_PATHS) + \
            (() if protect_metrics else METRICS_PATHS)

    @classmethod
    def from_settings(cls, auth: AuthSettings, admin: bool = False) -> AuthPolicy:
        """The policy of these settings (reads the keys file once); `admin`: with the admin
        keys, for a door that also serves the repository calls (gRPC)."""
        return cls(auth.keys(), auth.protect_health, auth.protect_metrics,
                   auth.admin_keys() if admin else None)

    def allows(self, path: str, headers: dict[bytes, bytes]) -> bool:
        if self.admin_keys and path.startswith(ADMIN_PREFIX):  # admin keys only
            return _carries(headers, self.admin_keys)
        if not self.keys or path in self.open_paths:
            return True
        return _carries(headers, self.keys)


def _carries(headers: dict[bytes, bytes], keys: list[bytes]) -> bool:
    scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token.strip(), key)
    return matched and scheme.lower() == b"bearer"


class ApiKeyAuth:
    """AuthPolicy as middleware for the cold endpoints (the hot routes check it inline)."""

    def __init__(self, app: ASGIApp, keys: list[bytes], protect_health: bool,
                 protect_metrics: bool, admin_keys: list[bytes] | None = None) -> None:
        self.app = app
        self.policy = AuthPolicy(keys, protect_health, protect_metrics, admin_keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or \
                self.policy.allows(scope["path"], dict(scope["headers"])):
            await self.app(scope, receive, send)
            return
        body = json.dumps(error_payload(scope["path"], 401, AuthPolicy.MESSAGE)).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse request bodies over `max_bytes` (413) without reading more than that.

    The check is in `receive`: a handler reading the body gets InputTooLarge, which each protocol
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

    def _error(self, size: int) -> InputTooLarge:
        return body_too_big(size, self.max_bytes)


def body_too_big(size: int, limit: int) -> InputTooLarge:
    """The refusal of a body over limits.max_body_bytes (middleware and hot routes alike)."""
    return InputTooLarge(f"request body of {size} bytes or more is over the limit of "
                         f"{limit} bytes (limits.max_body_bytes)")
