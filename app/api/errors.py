"""The one place the core's typed errors (app/core/errors.py) become HTTP statuses, for each
protocol door. A new door (gRPC, ...) adds its own table here; the core never names a status."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.core.errors import (
    ClientGone,
    Conflict,
    DeadlinePassed,
    InputTooLarge,
    InvalidInput,
    InvalidRequest,
    LoadRefused,
    ModelUnavailable,
    NoInputs,
    Overloaded,
    ServingError,
    UnknownModel,
    UnknownVersion,
    WorkerFailed,
)

Door = str  # "v1", "v2", "tei" or "hf": the protocol whose codes an error gets
# nginx's code for a client that closed the connection: nobody sees it, the metrics count it.
CLIENT_CLOSED = 499


class UnsupportedMediaType(InvalidRequest):
    """The body is not in a media type the door reads."""


# Checked in order: the first class the error is an instance of decides (subclasses first).
_STATUS: tuple[tuple[type[ServingError], int], ...] = (
    (UnsupportedMediaType, 415),
    (InputTooLarge, 413),
    (InvalidInput, 422),
    (InvalidRequest, 400),
    (UnknownModel, 404),
    (UnknownVersion, 404),
    (ModelUnavailable, 503),
    (Overloaded, 429),
    (DeadlinePassed, 504),
    (ClientGone, CLIENT_CLOSED),
    (WorkerFailed, 503),
    (LoadRefused, 400),
    (Conflict, 409),
)
# The v2 protocol answers input it cannot use with 400 (it has no 422).
_V2_STATUS = {422: 400}
# Hugging Face's doors answer as TEI does (its OpenAPI document): no inputs 400, a failed backend
# 424; the rest as /v1.
_TEI_STATUS: tuple[tuple[type[ServingError], int], ...] = ((NoInputs, 400), (WorkerFailed, 424))
_DOOR_STATUS = {"tei": _TEI_STATUS, "hf": _TEI_STATUS}


# gRPC's status code names (grpc.StatusCode) per error, for the v2 gRPC door; checked in order.
_GRPC_CODES: tuple[tuple[type[ServingError], str], ...] = (
    (InvalidInput, "INVALID_ARGUMENT"),
    (InvalidRequest, "INVALID_ARGUMENT"),
    (UnknownModel, "NOT_FOUND"),
    (UnknownVersion, "NOT_FOUND"),
    (ModelUnavailable, "UNAVAILABLE"),
    (Overloaded, "UNAVAILABLE"),  # retryable, as gRPC's retry policies read it
    (DeadlinePassed, "DEADLINE_EXCEEDED"),
    (ClientGone, "CANCELLED"),
    (WorkerFailed, "UNAVAILABLE"),
    (LoadRefused, "FAILED_PRECONDITION"),
    (Conflict, "FAILED_PRECONDITION"),
)


@dataclass(frozen=True)
class HttpError:
    """How one door answers one error."""

    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)


def http_error(error: ServingError, door: Door = "v1") -> HttpError:
    """The status, message and headers `door` answers `error` with."""
    table = _DOOR_STATUS.get(door, ()) + _STATUS
    status = next((code for kind, code in table if isinstance(error, kind)), 500)
    if door == "v2":
        status = _V2_STATUS.get(status, status)
    headers = {}
    if isinstance(error, Overloaded):
        headers["Retry-After"] = f"{error.retry_after_s:g}"
    return HttpError(status, error.message, headers)


def grpc_code(error: ServingError) -> Any:
    """The grpc.StatusCode the gRPC door answers `error` with."""
    import grpc  # the gRPC door's dependency (the `grpc` extra), needed only where it runs

    name = next((code for kind, code in _GRPC_CODES if isinstance(error, kind)), "INTERNAL")
    return grpc.StatusCode[name]
