"""What the core says when it will not or cannot answer: one class per reason, no protocol in
sight. Each protocol door (app/api/errors.py) maps these to its own codes and bodies."""

from __future__ import annotations


class ServingError(Exception):
    """A refusal or failure a client is told about; `message` says why and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ServingError):
    """The request is malformed: a header, parameter or framing the protocol does not allow."""


class InvalidInput(ServingError):
    """The request is well-formed but its inputs are not what the model takes."""


class NoInputs(InvalidInput):
    """The request carries no input to classify."""


class InputTooLarge(InvalidInput):
    """The request or one of its inputs is over a configured limit (body, inputs, characters,
    tokens, windows)."""


class UnknownModel(ServingError):
    """No model of that name is in the repository (or, for an unload, loaded)."""


class UnknownVersion(ServingError):
    """The model exists but does not serve the version asked for."""


class ModelUnavailable(ServingError):
    """The model is known but no version of it can answer now (failed, unloaded, not ready)."""


class Overloaded(ServingError):
    """The queue has no room for the request; retrying after `retry_after_s` may succeed."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlinePassed(ServingError):
    """The request's deadline passed before its answer; its rows were dropped."""


class ClientGone(ServingError):
    """The client left before its answer; nobody reads the reply."""


class WorkerFailed(ServingError):
    """The model worker that ran the request's rows failed; a retry may succeed."""


class LoadRefused(ServingError):
    """A load or unload call that could not be done (broken artifact, no room, missing pool)."""


class Conflict(ServingError):
    """A call this server's current set-up cannot take (e.g. a load call with several API
    processes, each holding its own models)."""
