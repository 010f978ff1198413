"""The native protocol: POST /v1/classify/{name} with {"inputs": [...]}, answered in one encode.

The body is parsed by pydantic-core straight from bytes (precise 422 messages) and the answer is a
plain dict encoded once by orjson: the same JSON the ClassifyResponse model documents, without
building and validating a model per result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import ValidationError

from app.api.handle import (
    VERSION_HEADER,
    header_priority,
    model_in_path,
    require_json,
    timeout_header,
)
from app.api.schemas import ClassifyRequest, error_payload
from app.core.answers import ScoreOptions, predicted, ranked, score_options
from app.core.errors import InvalidInput
from app.core.inference import Classified, classify, deadline_for
from app.core.service import Service

PREFIX = "/v1/classify/"
JSON = b"application/json"


def validation_message(errors: Sequence[Any]) -> str:
    """One readable 422 message from pydantic's errors."""
    parts = []
    for error in errors:
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            parts.append(f"the body is not valid JSON ({reason})".replace(" ()", ""))
            continue
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts) + \
        '; expected {"inputs": ["text", ...]} or {"inputs": [["text_a", "text_b"], ...]}'


def parse_body(body: bytes, content_type: bytes | None) -> ClassifyRequest:
    require_json(content_type)
    try:
        return ClassifyRequest.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc.errors())) from None


def predictions(result: Classified, options: ScoreOptions, all_scores: bool) \
        -> list[dict[str, Any]]:
    """The `results` list of a ClassifyResponse (fields that would be null are left out)."""
    out = []
    for index, (probs, (label, score)) in enumerate(zip(result.probabilities, result.best(),
                                                        strict=True)):
        item: dict[str, Any] = {"label": label, "score": score}
        listed: list[tuple[str, float]] | None = None
        if result.problem_type == "multi_label":
            listed = predicted(probs, result.labels, options)
        elif options.top_k is not None:
            listed = ranked(probs, result.labels, options.top_k)
        if listed is not None:
            item["labels"] = [{"label": name, "score": value} for name, value in listed]
        if all_scores:
            item["scores"] = dict(zip(result.labels, map(float, probs), strict=True))
        item["truncated"] = result.truncated[index]
        if result.chunks is not None:
            item["chunks"] = result.chunks[index]
        if result.variants is not None:
            item["variant"] = result.variants[index]
        out.append(item)
    return out


class V1:
    """How /v1 reads a request and writes its answer and its errors."""

    name = "v1"

    @staticmethod
    def model_of(path: str) -> tuple[str, str | None] | None:
        """(model name, version) when `path` is this protocol's classify route."""
        return model_in_path(path, PREFIX)

    @staticmethod
    async def answer(service: Service, name: str, version: str | None, body: bytes,
                     headers: dict[bytes, bytes], started: float,
                     gone: asyncio.Future[None] | None) -> tuple[bytes, bytes, dict[str, str]]:
        """(content type, body, extra headers) of a successful answer; raises the core's
        errors."""
        deadline = deadline_for(service, started, timeout_header(headers))
        request = parse_body(body, headers.get(b"content-type"))
        with service.registry.lease(name, version) as loaded:
            options = score_options(loaded.model.manifest, request.threshold, request.top_k)
            result = await classify(service, loaded, request.inputs, deadline, gone,
                                    priority=header_priority(service, headers))
        # "task" is the response field's documented name; it carries the model's name.
        answer = {"task": name, "version": str(result.version), "variant": result.variant,
                  "results": predictions(result, options, request.return_all_scores)}
        return JSON, orjson.dumps(answer), {VERSION_HEADER: str(result.version)}

    @staticmethod
    def error(status: int, message: str) -> bytes:
        return orjson.dumps(error_payload("/v1", status, message))
