"""What a request may ask for: input checks shared by both protocols, and the error that carries
the HTTP status of a refusal."""

from __future__ import annotations

from typing import Any

from app.settings import LimitSettings
from contract.artifact import InputKind
from contract.encoding import TextInput


class ClientError(Exception):
    """A request the server will not run; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _describe(value: Any) -> str:
    return type(value).__name__ if value is not None else "null"


def _check_single(index: int, item: Any, task: str) -> str:
    if not isinstance(item, str):
        hint = " (a pair? this task takes single texts)" if isinstance(item, list) else ""
        raise ClientError(422, f"inputs[{index}]: task {task} expects a string, got "
                               f"{_describe(item)}{hint}")
    return item


def _check_pair(index: int, item: Any, task: str) -> tuple[str, str]:
    if not (isinstance(item, list) and len(item) == 2 and all(isinstance(t, str) for t in item)):
        raise ClientError(422, f"inputs[{index}]: task {task} expects a pair of strings "
                               f"[text_a, text_b], got {_describe(item)}"
                               + (f" of length {len(item)}" if isinstance(item, list) else ""))
    return (item[0], item[1])


def parse_inputs(
    raw: list[Any], kind: InputKind, task: str, limits: LimitSettings
) -> list[TextInput]:
    """Check a request's inputs against the task's input kind and the server's limits."""
    if not raw:
        raise ClientError(422, "inputs is empty: send at least one text")
    if len(raw) > limits.max_inputs_per_request:
        raise ClientError(413, f"{len(raw)} inputs in one request; the limit is "
                               f"{limits.max_inputs_per_request} (split the request)")
    inputs: list[TextInput] = []
    for index, item in enumerate(raw):
        parsed = (_check_single if kind == "single" else _check_pair)(index, item, task)
        texts = [parsed] if isinstance(parsed, str) else list(parsed)
        for text in texts:
            if not text.strip():
                raise ClientError(422, f"inputs[{index}]: text is empty")
            if "\x00" in text:
                raise ClientError(422, f"inputs[{index}]: text contains a NUL character")
            if len(text) > limits.max_text_chars:
                raise ClientError(413, f"inputs[{index}]: text has {len(text)} characters; the "
                                       f"limit is {limits.max_text_chars}")
        inputs.append(parsed)
    return inputs
