"""Hugging Face's doors, for the clients teams already hold.

- The Inference API's text-classification task: `POST /models/{name}` (also
  `/models/{name}/pipeline/text-classification`), what `huggingface_hub.InferenceClient`'s
  `text_classification` sends: `{"inputs": text | [text, ...] | {"text", "text_pair"},
  "parameters": {"top_k", "function_to_apply"}}`, answered `[[{"label", "score"}, ...], ...]`.
- text-embeddings-inference (TEI)'s classifier routes for the default model (settings
  `default_model`): `POST /predict` and `POST /` (`inputs`: a text, a [text, text] pair, or a
  batch of [text] / [text, text] lists; `raw_scores`, `truncate`, `truncation_direction`), answered
  with a list of {label, score} best first (a batch: a list of such lists); `GET /info`,
  `GET /health`. Errors use TEI's body `{"error", "error_type"}` and statuses (413, 422, 424, 429).

Scores are the model's own: softmax for single-label models, a sigmoid per label for multi-label
ones (TEI applies softmax to every classifier); `raw_scores` / `function_to_apply: none` give the
logits.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.api.errors import http_error
from app.api.guards import AuthPolicy
from app.api.handle import (
    VERSION_HEADER,
    handle_request,
    header_priority,
    model_in_path,
    require_json,
    timeout_header,
)
from app.api.schemas import HF_PREFIX, tei_error
from app.core.answers import ranked
from app.core.errors import InvalidInput, NoInputs, ServingError, UnknownModel
from app.core.inference import Classified, Truncation, classify, deadline_for
from app.core.service import Service
from contract.encoding import probabilities

JSON = b"application/json"
MODELS_PREFIX = HF_PREFIX
PIPELINE_SUFFIX = "/pipeline/text-classification"
TEI_PATHS = ("/predict", "/")
_DTYPES = {"int8": "int8", "fp16": "float16", "fp32": "float32"}


# -- bodies -----------------------------------------------------------------------------------

class TextPair(BaseModel):
    """The Inference API's pair input."""

    text: str
    text_pair: str | None = None


class HfParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")  # the Inference API ignores what a task does not use

    top_k: int | None = Field(default=None, ge=1, description="the k best labels (default: all)")
    function_to_apply: Literal["sigmoid", "softmax", "none"] | None = Field(
        default=None, description="scores from the logits (default: the model's own, softmax "
                                  "or a sigmoid per label for multi-label models)")


class HfRequest(BaseModel):
    """POST /models/{name}: the Inference API's text-classification task."""

    model_config = ConfigDict(extra="ignore")  # e.g. older clients' "options"

    inputs: str | TextPair | list[str] | list[TextPair]
    parameters: HfParameters = Field(default_factory=HfParameters)


class PredictRequest(BaseModel):
    """POST /predict and POST /: TEI's PredictRequest."""

    model_config = ConfigDict(extra="ignore")  # as TEI does

    inputs: str | list[str] | list[list[str]] = Field(
        description="a text, a [text, text] pair, or a batch of [text] or [text, text] lists",
        examples=["a gripping, beautifully shot film"])
    raw_scores: bool = Field(default=False, description="the logits instead of the scores")
    truncate: bool | None = Field(default=None, description="inputs over the model's "
                                  "max_length: cut (true) or 413 (false); null: the server's "
                                  "limits.truncation")
    truncation_direction: Literal["right", "Right", "left", "Left"] = "right"


class Prediction(BaseModel):
    label: str
    score: float


class ClassifierModel(BaseModel):
    id2label: dict[str, str]
    label2id: dict[str, int]


class Info(BaseModel):
    """GET /info: TEI's Info for the default model."""

    model_id: str
    model_sha: str | None
    model_dtype: str
    model_type: dict[str, ClassifierModel]
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None = None
    docker_label: str | None = None


class TeiError(BaseModel):
    error: str
    error_type: str


def _validated(model: type[BaseModel], body: bytes, content_type: bytes | None) -> Any:
    require_json(content_type)
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(
            "the body is not valid JSON" if e["type"] == "json_invalid" else
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"invalid request: {problems}") from None


# -- inputs -----------------------------------------------------------------------------------

def hf_inputs(inputs: str | TextPair | list[str] | list[TextPair]) -> list[Any]:
    """The native input list (texts, or [text, text] pairs) of an Inference API request."""
    items = inputs if isinstance(inputs, list) else [inputs]
    return [item if isinstance(item, str) else
            item.text if item.text_pair is None else [item.text, item.text_pair]
            for item in items]


def tei_inputs(inputs: str | list[str] | list[list[str]]) -> tuple[list[Any], bool]:
    """The native input list of a TEI request, and whether it was a batch (answered as a list of
    lists)."""
    if isinstance(inputs, str):
        return [inputs], False
    if not inputs:
        raise NoInputs("`inputs` cannot be empty")
    if all(isinstance(item, str) for item in inputs):
        if len(inputs) != 2:
            raise InvalidInput(f"`inputs` is a list of {len(inputs)} strings: a pair has "
                               "exactly 2; send a batch as a list of lists ([[text], ...])")
        return [list(inputs)], False
    batch: list[Any] = []
    for index, item in enumerate(inputs):
        if not isinstance(item, list) or len(item) not in (1, 2):
            raise InvalidInput(f"inputs[{index}]: each batch item is [text] or [text, text]")
        batch.append(item[0] if len(item) == 1 else list(item))
    return batch, True


# -- answers ----------------------------------------------------------------------------------

def scores(result: Classified, function: Literal["sigmoid", "softmax", "none"] | None) \
        -> np.ndarray:
    """Each input's label scores: the model's own, or `function` of its logits."""
    if function is None:
        return result.probabilities
    if function == "none":
        return result.logits.astype(np.float64)
    kind = "multi_label" if function == "sigmoid" else "single_label"
    return probabilities(result.logits, kind)


def ranked_lists(result: Classified, values: np.ndarray, top_k: int | None) \
        -> list[list[dict[str, Any]]]:
    """Per input, {label, score} best first (the `top_k` best when given)."""
    return [[{"label": label, "score": score}
             for label, score in ranked(row, result.labels, top_k)] for row in values]


def _truncation(request: PredictRequest) -> Truncation | None:
    if request.truncation_direction.lower() != "right":
        raise InvalidInput("truncation_direction left is not supported: this server keeps the "
                           "start of a text (right)")
    if request.truncate is None:
        return None
    return "truncate" if request.truncate else "reject"


def default_model(service: Service) -> str:
    """The model of the routes that name none: settings.default_model, else the only one served
    ("" when there are several)."""
    if service.settings.default_model:
        return service.settings.default_model
    names = service.registry.serving_names()
    return names[0] if len(names) == 1 else ""


def _no_default(service: Service) -> UnknownModel:
    names = service.registry.serving_names()
    return UnknownModel(f"this server serves {len(names)} models ({', '.join(names)}); routes "
                        "without a model name need settings.default_model, or POST "
                        "/models/{name}")


class HuggingFace:
    """The Inference API's text-classification task at /models/{name}."""

    name = "hf"

    @staticmethod
    def model_of(path: str) -> tuple[str, str | None] | None:
        """(model name, None) when `path` is /models/{name}[/pipeline/text-classification]."""
        return model_in_path(path, MODELS_PREFIX, PIPELINE_SUFFIX)

    @staticmethod
    async def answer(service: Service, name: str, version: str | None, body: bytes,
                     headers: dict[bytes, bytes], started: float,
                     gone: asyncio.Future[None] | None) -> tuple[bytes, bytes, dict[str, str]]:
        """(content type, body, extra headers) of a successful answer; raises the core's
        errors."""
        request: HfRequest = _validated(HfRequest, body, headers.get(b"content-type"))
        deadline = deadline_for(service, started, timeout_header(headers))
        with service.registry.lease(name, version) as loaded:
            result = await classify(service, loaded, hf_inputs(request.inputs), deadline, gone,
                                    priority=header_priority(service, headers))
        values = scores(result, request.parameters.function_to_apply)
        answer = ranked_lists(result, values, request.parameters.top_k)
        return JSON, orjson.dumps(answer), {VERSION_HEADER: str(result.version)}

    @staticmethod
    def error(status: int, message: str) -> bytes:
        return orjson.dumps(tei_error(status, message))


class Tei:
    """text-embeddings-inference's POST /predict and POST / for the default model."""

    name = "tei"

    def __init__(self, service: Service) -> None:
        self.service = service

    def model_of(self, path: str) -> tuple[str, str | None] | None:
        """(the default model, None) for TEI's predict paths ("" when there is none)."""
        return (default_model(self.service), None) if path in TEI_PATHS else None

    @staticmethod
    async def answer(service: Service, name: str, version: str | None, body: bytes,
                     headers: dict[bytes, bytes], started: float,
                     gone: asyncio.Future[None] | None) -> tuple[bytes, bytes, dict[str, str]]:
        """(content type, body, extra headers) of a successful answer; raises the core's
        errors."""
        if not name:
            raise _no_default(service)
        request: PredictRequest = _validated(PredictRequest, body, headers.get(b"content-type"))
        inputs, batch = tei_inputs(request.inputs)
        truncation = _truncation(request)
        deadline = deadline_for(service, started, timeout_header(headers))
        with service.registry.lease(name, version) as loaded:
            result = await classify(service, loaded, inputs, deadline, gone, truncation,
                                    header_priority(service, headers))
        answer = ranked_lists(result, scores(result, "none" if request.raw_scores else None),
                              None)
        return JSON, orjson.dumps(answer if batch else answer[0]), \
            {VERSION_HEADER: str(result.version)}

    @staticmethod
    def error(status: int, message: str) -> bytes:
        return orjson.dumps(tei_error(status, message))


# -- cold routes ------------------------------------------------------------------------------

def _info(service: Service, version: str) -> Info:
    name = default_model(service)
    if not name:
        raise _no_default(service)
    loaded = service.registry.find(name)
    manifest = loaded.model.manifest
    served = manifest.variants[loaded.route.variant]
    batching = service.settings.batching
    workers = sum(len(pool.describe()) for pool in service.pools.values())
    return Info(
        model_id=name, model_sha=served.sha256, model_dtype=_DTYPES[served.precision],
        model_type={"classifier": ClassifierModel(
            id2label={str(i): label for i, label in enumerate(manifest.labels)},
            label2id={label: i for i, label in enumerate(manifest.labels)})},
        max_concurrent_requests=batching.max_queue_rows, max_input_length=manifest.max_length,
        max_batch_tokens=batching.max_batch_tokens, max_batch_requests=batching.max_batch_size,
        max_client_batch_size=service.settings.limits.max_inputs_per_request,
        auto_truncate=service.settings.limits.truncation != "reject",
        tokenization_workers=workers if service.settings.tokenize == "workers" else 1,
        version=version)


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": TeiError} for code in (400, 401, 404, 413, 422, 424, 429, 503, 504)
}
# Bodies the hot routes parse themselves; create_app adds them to the OpenAPI components.
SCHEMA_DEFINITIONS: dict[str, Any] = {}
for _model in (HfRequest, PredictRequest):
    _schema = _model.model_json_schema(ref_template="#/components/schemas/{model}")
    SCHEMA_DEFINITIONS.update(_schema.pop("$defs", {}))
    SCHEMA_DEFINITIONS[_model.__name__] = _schema


def _body_doc(schema: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}}


def build_router(service: Service, version: str, auth: AuthPolicy) -> APIRouter:
    """TEI's /info and /health, and the classify routes' documentation (the hot routes answer
    them)."""
    router = APIRouter(tags=["Hugging Face (Inference API, TEI)"])
    tei = Tei(service)

    @router.get("/info", response_model=Info, responses=_ERRORS)
    async def info() -> Info | JSONResponse:
        """TEI's model info for the default model."""
        try:
            return _info(service, version)
        except ServingError as exc:
            answer = http_error(exc, "tei")
            return JSONResponse(tei_error(answer.status, answer.message), answer.status)

    @router.get("/health", responses=_ERRORS)
    async def health() -> Response:
        """200 when every pool's workers are up, else 503 (TEI's health)."""
        if service.ready():
            return Response(status_code=200)
        return JSONResponse(tei_error(503, "unhealthy"), 503)

    async def predict(request: Request) -> Response:
        return await handle_request(service, tei, default_model(service), None, request, auth)

    async def hf_task(name: str, request: Request) -> Response:
        return await handle_request(service, HuggingFace, name, None, request, auth)

    for path in TEI_PATHS:
        router.add_api_route(path, predict, methods=["POST"], responses=_ERRORS,
                             response_model=list[Prediction] | list[list[Prediction]],
                             openapi_extra=_body_doc("PredictRequest"),
                             summary="Classify (TEI predict, the default model)")
    for path in (f"{MODELS_PREFIX}{{name}}", f"{MODELS_PREFIX}{{name}}{PIPELINE_SUFFIX}"):
        router.add_api_route(path, hf_task, methods=["POST"], responses=_ERRORS,
                             response_model=list[list[Prediction]],
                             openapi_extra=_body_doc("HfRequest"),
                             summary="Classify (Hugging Face Inference API task)")
    return router
