"""What a request may ask for: input checks shared by every protocol."""

from __future__ import annotations

from typing import Any

from app.core.errors import InputTooLarge, InvalidInput, NoInputs
from app.settings import LimitSettings
from contract.artifact import InputKind
from contract.encoding import TextInput


def _describe(value: Any) -> str:
    return type(value).__name__ if value is not None else "null"


def _check_single(index: int, item: Any, name: str) -> str:
    if not isinstance(item, str):
        hint = " (a pair? this task takes single texts)" if isinstance(item, list) else ""
        raise InvalidInput(f"inputs[{index}]: model {name} expects a string, got "
                           f"{_describe(item)}{hint}")
    return item


def _check_pair(index: int, item: Any, name: str) -> tuple[str, str]:
    if not (isinstance(item, list) and len(item) == 2 and all(isinstance(t, str) for t in item)):
        raise InvalidInput(f"inputs[{index}]: model {name} expects a pair of strings "
                           f"[text_a, text_b], got {_describe(item)}"
                           + (f" of length {len(item)}" if isinstance(item, list) else ""))
    return (item[0], item[1])


def parse_inputs(
    raw: list[Any], kind: InputKind, name: str, limits: LimitSettings
) -> list[TextInput]:
    """Check a request's inputs against the model's input kind and the server's limits."""
    if not raw:
        raise NoInputs("inputs is empty: send at least one text")
    if len(raw) > limits.max_inputs_per_request:
        raise InputTooLarge(f"{len(raw)} inputs in one request; the limit is "
                            f"{limits.max_inputs_per_request} (split the request)")
    inputs: list[TextInput] = []
    for index, item in enumerate(raw):
        parsed = (_check_single if kind == "single" else _check_pair)(index, item, name)
        texts = [parsed] if isinstance(parsed, str) else list(parsed)
        for text in texts:
            if not text.strip():
                raise InvalidInput(f"inputs[{index}]: text is empty")
            if "\x00" in text:
                raise InvalidInput(f"inputs[{index}]: text contains a NUL character")
            if len(text) > limits.max_text_chars:
                raise InputTooLarge(f"inputs[{index}]: text has {len(text)} characters; the "
                                    f"limit is {limits.max_text_chars}")
        inputs.append(parsed)
    return inputs
