"""Open Inference Protocol v2 (KServe v2 REST, as Triton speaks it), over the shared inference path.

Inputs: BYTES tensors `text` and, for pair tasks, `text_pair`, shape [N] or [N, 1], as JSON data or
in the binary tensor extension (what tritonclient sends by default). Outputs: `label` (BYTES [N]),
`score` (FP32 [N]), `probabilities` and `logits` (FP32 [N, labels]), as JSON or binary on request;
multi-label models add `predicted` (BOOL [N, labels]: over threshold), a chunking server `chunks`
(INT32 [N]), and the parameter `top_k` adds `top_labels` / `top_scores` ([N, k]). The parameter
`threshold` (a number, or label -> number) overrides a multi-label model's stored thresholds.
Errors use the protocol's `{"error": "..."}` body.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError

from app.api.errors import http_error
from app.api.guards import AuthPolicy
from app.api.handle import VERSION_HEADER, handle_request
from app.core.answers import ScoreOptions, ranked, score_options
from app.core.errors import InvalidRequest, ServingError
from app.core.inference import (
    TIMEOUT_HEADER,
    Classified,
    classify,
    deadline_for,
    priority_level,
)
from app.core.registry import Loaded
from app.core.service import Service
from contract.artifact import Manifest

SERVER_NAME = "fastformers-serve"
HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT_NAMES = ("text", "text_pair")
OUTPUT_NAMES = ("label", "score", "probabilities", "logits")
# Outputs some models or requests add: multi-hot decisions (multi_label tasks), windows per input
# (truncation: chunk), and the k best labels with their scores (parameter top_k).
MULTI_LABEL_OUTPUT, CHUNKS_OUTPUT, TOP_OUTPUTS = "predicted", "chunks", ("top_labels", "top_scores")
# Outputs with one score per label: the classification extension can answer their k best classes.
CLASSIFIABLE = ("probabilities", "logits")


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    datatype: Literal["BYTES", "FP32", "BOOL", "INT32"]
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class ProtocolError(BaseModel):
    error: str


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# -- request decoding -------------------------------------------------------------------------

def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """JSON header and binary tail of a request (the tail is empty without the extension)."""
    if header_length is None:
        return body, b""
    try:
        size = int(header_length)
    except ValueError:
        raise InvalidRequest(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") \
            from None
    if not 0 <= size <= len(body):
        raise InvalidRequest(f"{HEADER_LENGTH} is {size} but the body has {len(body)} bytes")
    return body[:size], body[size:]


def _parse_request(header: bytes) -> InferenceRequest:
    try:
        return InferenceRequest.model_validate_json(header)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise InvalidRequest(f"invalid inference request: {problems}") from None


def _bytes_elements(raw: bytes, name: str) -> list[str]:
    """Decode the binary BYTES layout: each element a 4-byte little-endian length, then bytes."""
    items: list[str] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidRequest(f"input {name!r}: truncated BYTES element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidRequest(f"input {name!r}: BYTES element longer than its data")
        items.append(_utf8(raw[offset : offset + length], name))
        offset += length
    return items


def _utf8(value: bytes, name: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"input {name!r}: text is not valid UTF-8") from None


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


def _input_texts(tensor: RequestInput, tail: bytes, offset: int) -> tuple[list[str], int]:
    """Texts of one BYTES input and the offset of the next binary input."""
    if tensor.datatype != "BYTES":
        raise InvalidRequest(f"input {tensor.name!r} must have datatype BYTES, "
                             f"got {tensor.datatype}")
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise InvalidRequest(f"input {tensor.name!r} must have shape [N] or [N, 1], "
                             f"got {tensor.shape}")
    size = tensor.parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(tail):
            raise InvalidRequest(f"input {tensor.name!r}: binary_data_size {size!r} does not "
                                 "fit the binary data sent")
        texts = _bytes_elements(tail[offset : offset + size], tensor.name)
        offset += size
    elif tensor.data is not None:
        texts = _flatten(tensor.data)
        wrong = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if wrong is not None:
            raise InvalidRequest(f"input {tensor.name!r} element {wrong} is "
                                 f"{type(texts[wrong]).__name__}, expected a string")
    else:
        raise InvalidRequest(f"input {tensor.name!r} has neither data nor binary_data_size")
    if len(texts) != tensor.shape[0]:
        raise InvalidRequest(f"input {tensor.name!r} has shape {tensor.shape} but "
                             f"{len(texts)} elements")
    return texts, offset


def _raw_inputs(request: InferenceRequest, tail: bytes, kind: str) -> list[Any]:
    """The native path's input list (texts, or [text, text] pairs) from the request tensors."""
    texts: dict[str, list[str]] = {}
    offset = 0
    for tensor in request.inputs:
        if tensor.name not in INPUT_NAMES:
            raise InvalidRequest(f"unknown input {tensor.name!r}; inputs are 'text' and, for "
                                 "pair tasks, 'text_pair'")
        texts[tensor.name], offset = _input_texts(tensor, tail, offset)
    if "text" not in texts:
        raise InvalidRequest("input 'text' is required")
    if kind == "single":
        if "text_pair" in texts:
            raise InvalidRequest("this task takes single texts: send only input 'text'")
        return list(texts["text"])
    if "text_pair" not in texts:
        raise InvalidRequest("this is a pair task: send inputs 'text' and 'text_pair'")
    if len(texts["text"]) != len(texts["text_pair"]):
        raise InvalidRequest(f"'text' has {len(texts['text'])} elements but 'text_pair' has "
                             f"{len(texts['text_pair'])}")
    return [[a, b] for a, b in zip(texts["text"], texts["text_pair"], strict=True)]


# -- response encoding ------------------------------------------------------------------------

def _output_tensors(result: Classified, options: ScoreOptions) \
        -> dict[str, tuple[str, list[int], np.ndarray]]:
    count, labels = result.probabilities.shape
    best = result.best()
    tensors = {
        "label": ("BYTES", [count], np.array([label for label, _ in best], dtype=object)),
        "score": ("FP32", [count], np.array([score for _, score in best], dtype=np.float32)),
        "probabilities": ("FP32", [count, labels], result.probabilities.astype(np.float32)),
        "logits": ("FP32", [count, labels], result.logits.astype(np.float32)),
    }
    if result.problem_type == "multi_label":
        tensors[MULTI_LABEL_OUTPUT] = ("BOOL", [count, labels],
                                       result.probabilities >= options.thresholds)
    if result.chunks is not None:
        tensors[CHUNKS_OUTPUT] = ("INT32", [count], np.asarray(result.chunks, dtype=np.int32))
    if options.top_k is not None:
        best_k = [ranked(row, result.labels, options.top_k) for row in result.probabilities]
        k = len(best_k[0])
        tensors["top_labels"] = ("BYTES", [count, k],
                                 np.array([[n for n, _ in row] for row in best_k], dtype=object))
        tensors["top_scores"] = ("FP32", [count, k],
                                 np.array([[s for _, s in row] for row in best_k], np.float32))
    return tensors


def binary_tensor(datatype: str, values: np.ndarray) -> bytes:
    """A tensor's raw bytes as the protocol lays them out (BYTES: 4-byte length, then bytes)."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b
                        for b in (str(v).encode("utf-8") for v in values.ravel()))
    if datatype == "BOOL":
        return values.astype(np.bool_).tobytes()
    if datatype == "INT32":
        return values.astype("<i4").tobytes()
    return values.astype("<f4").tobytes()


def _json_values(datatype: str, values: np.ndarray) -> list[Any]:
    if datatype == "BYTES":
        return [str(v) for v in values.ravel()]
    flat: list[Any] = values.ravel().tolist()
    return flat


def available_outputs(manifest: Manifest, chunking: bool, top_k: bool) -> list[str]:
    """Output names a request to this model may ask for."""
    names = list(OUTPUT_NAMES)
    if manifest.problem_type == "multi_label":
        names.append(MULTI_LABEL_OUTPUT)
    if chunking:
        names.append(CHUNKS_OUTPUT)
    if top_k:
        names.extend(TOP_OUTPUTS)
    return names


@dataclass(frozen=True)
class Wanted:
    """One output to return: its name, whether in binary, and the classification extension's
    class count (None: the tensor itself)."""

    name: str
    binary: bool
    class_count: int | None = None


def _requested(request: InferenceRequest, available: list[str], labels: int) -> list[Wanted]:
    """The outputs to return, checked before the model runs."""
    binary_default = bool(request.parameters.get("binary_data_output", False))
    if request.outputs is None:
        return [Wanted(name, binary_default) for name in available]
    chosen = []
    for output in request.outputs:
        if output.name not in available:
            raise InvalidRequest(f"unknown output {output.name!r}; outputs are "
                                 f"{', '.join(available)}")
        chosen.append(Wanted(output.name, bool(output.parameters.get("binary_data",
                                                                      binary_default)),
                             _class_count(output, labels)))
    return chosen


def _class_count(output: RequestOutput, labels: int) -> int | None:
    """The classification extension's `classification` parameter of an output (tritonclient's
    class_count): the k best classes of a [N, labels] output."""
    count = output.parameters.get("classification")
    if count is None:
        return None
    if output.name not in CLASSIFIABLE:
        raise InvalidRequest(f"classification applies to the outputs {', '.join(CLASSIFIABLE)} "
                             f"(one score per label), not {output.name!r}")
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= labels:
        raise InvalidRequest(f"output {output.name!r}: classification (class_count) must be an "
                             f"integer from 1 to the model's {labels} labels, got {count!r}")
    return count


def _classified(values: np.ndarray, labels: list[str], count: int) -> np.ndarray:
    """Triton's classification output: per row, the `count` best classes as "score:index:label"
    (the score as C++'s std::to_string writes a float), best first."""
    order = np.argsort(-values, axis=1, kind="stable")[:, :count]
    return np.array([[f"{row[i]:f}:{i}:{labels[i]}" for i in best]
                     for row, best in zip(values, order, strict=True)], dtype=object)


def _score_options(manifest: Manifest, request: InferenceRequest) -> ScoreOptions:
    """Parameters `threshold` (number, or label -> number) and `top_k` (integer)."""
    threshold = request.parameters.get("threshold")
    top_k = request.parameters.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool)):
        raise InvalidRequest(f"parameter 'top_k' must be an integer, got {top_k!r}")
    numbers = threshold.values() if isinstance(threshold, dict) else [threshold]
    if threshold is not None and not all(isinstance(v, int | float) and not isinstance(v, bool)
                                         for v in numbers):
        raise InvalidRequest("parameter 'threshold' must be a number or an object of label: "
                             f"number, got {threshold!r}")
    return score_options(manifest, threshold, top_k)


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray


@dataclass(frozen=True)
class Answer:
    """An infer request's result, before either transport (HTTP, gRPC) encodes it."""

    model_name: str
    request: InferenceRequest
    result: Classified
    options: ScoreOptions
    wanted: list[Wanted]

    def outputs(self) -> list[OutputTensor]:
        """The requested outputs, in the requested order (classification applied)."""
        tensors = _output_tensors(self.result, self.options)
        chosen = []
        for output in self.wanted:
            datatype, shape, values = tensors[output.name]
            if output.class_count is not None:
                values = _classified(values, self.result.labels, output.class_count)
                datatype, shape = "BYTES", [shape[0], output.class_count]
            chosen.append(OutputTensor(output.name, datatype, shape, values))
        return chosen


def _encode_response(answer: Answer) -> tuple[bytes, bytes, dict[str, str]]:
    outputs: list[dict[str, Any]] = []
    tail: list[bytes] = []
    for output, tensor in zip(answer.wanted, answer.outputs(), strict=True):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                                 "shape": tensor.shape}
        if output.binary:
            raw = binary_tensor(tensor.datatype, tensor.values)
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            entry["data"] = _json_values(tensor.datatype, tensor.values)
        outputs.append(entry)
    version = str(answer.result.version)
    body: dict[str, Any] = {"model_name": answer.model_name, "model_version": version,
                            "outputs": outputs}
    if answer.request.id is not None:
        body["id"] = answer.request.id
    header = orjson.dumps(body)
    if not tail:
        return b"application/json", header, {VERSION_HEADER: version}
    return b"application/octet-stream", header + b"".join(tail), \
        {HEADER_LENGTH: str(len(header)), VERSION_HEADER: version}


# -- routes -----------------------------------------------------------------------------------

def model_metadata(service: Service, name: str, version: str | None) -> ModelMetadata:
    """The metadata of a model (the version named, else the one a request would get)."""
    manifest = service.registry.find(name, version or None).model.manifest
    labels = len(manifest.labels)
    inputs = [TensorMetadata(name="text", datatype="BYTES", shape=[-1])]
    if manifest.input_kind == "pair":
        inputs.append(TensorMetadata(name="text_pair", datatype="BYTES", shape=[-1]))
    serving = service.registry.model(name).serving()
    return ModelMetadata(
        name=name, versions=[str(number) for number in serving], platform="onnxruntime_onnx",
        inputs=inputs,
        outputs=[TensorMetadata(name="label", datatype="BYTES", shape=[-1]),
                 TensorMetadata(name="score", datatype="FP32", shape=[-1]),
                 TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, labels]),
                 TensorMetadata(name="logits", datatype="FP32", shape=[-1, labels]),
                 *_optional_outputs(service, manifest)],
    )


def _optional_outputs(service: Service, manifest: Manifest) -> list[TensorMetadata]:
    """Outputs this model always adds (top_labels / top_scores come only with top_k)."""
    labels = len(manifest.labels)
    extra = []
    if manifest.problem_type == "multi_label":
        extra.append(TensorMetadata(name=MULTI_LABEL_OUTPUT, datatype="BOOL", shape=[-1, labels]))
    if service.settings.limits.truncation == "chunk":
        extra.append(TensorMetadata(name=CHUNKS_OUTPUT, datatype="INT32", shape=[-1]))
    return extra


_REQUEST_SCHEMA = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
# Sub-models of the request body; create_app adds them to the OpenAPI components.
SCHEMA_DEFINITIONS: dict[str, Any] = _REQUEST_SCHEMA.pop("$defs", {})
SCHEMA_DEFINITIONS["InferenceRequest"] = _REQUEST_SCHEMA
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ProtocolError} for code in (400, 401, 404, 413, 429, 503, 504)
}


class V2:
    """How the Open Inference Protocol reads an infer request and writes its answer and errors."""

    name = "v2"

    @staticmethod
    def model_of(path: str) -> tuple[str, str | None] | None:
        """(model name, version) when `path` is /v2/models/{name}[/versions/{v}]/infer."""
        if not (path.startswith("/v2/models/") and path.endswith("/infer")):
            return None
        parts = path[len("/v2/models/"):-len("/infer")].split("/")
        if len(parts) == 1 and parts[0]:
            return parts[0], None
        if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
            return parts[0], parts[2]
        return None

    @staticmethod
    async def answer(service: Service, name: str, version: str | None, body: bytes,
                     headers: dict[bytes, bytes], started: float,
                     gone: asyncio.Future[None] | None) -> tuple[bytes, bytes, dict[str, str]]:
        """(content type, body, extra headers) of a successful answer; raises the core's
        errors."""
        with service.registry.lease(name, version or None) as loaded:
            return await _infer(service, loaded, body, headers, started, gone)

    @staticmethod
    def error(status: int, message: str) -> bytes:
        return orjson.dumps({"error": message})


def _header(headers: dict[bytes, bytes], name: str) -> str | None:
    value = headers.get(name.lower().encode())
    return None if value is None else value.decode("latin-1")


async def _infer(service: Service, loaded: Loaded, body: bytes, headers: dict[bytes, bytes],
                 started: float, gone: asyncio.Future[None] | None) \
        -> tuple[bytes, bytes, dict[str, str]]:
    header, tail = _split_body(body, _header(headers, HEADER_LENGTH))
    answer = await infer(service, loaded, _parse_request(header), tail, started, gone,
                         _header(headers, TIMEOUT_HEADER))
    return _encode_response(answer)


async def infer(service: Service, loaded: Loaded, parsed: InferenceRequest, tail: bytes,
                started: float, gone: asyncio.Future[None] | None,
                timeout_header: str | None = None, client_timeout_s: float | None = None) \
        -> Answer:
    """One v2 infer request (decoded from either transport; `tail`: the binary inputs) run on a
    leased version; `client_timeout_s`: the time the transport's client gives it (gRPC's
    deadline)."""
    manifest = loaded.model.manifest
    options = _score_options(manifest, parsed)
    chunking = service.settings.limits.truncation == "chunk"
    # Unknown output names are refused before the model runs.
    wanted = _requested(parsed, available_outputs(manifest, chunking, options.top_k is not None),
                        len(manifest.labels))
    timeouts = [t for t in (_protocol_timeout(parsed), client_timeout_s) if t is not None]
    deadline = deadline_for(service, started, timeout_header, min(timeouts, default=None))
    level = priority_level(service, parsed.parameters.get("priority"))
    result = await classify(service, loaded, _raw_inputs(parsed, tail, manifest.input_kind),
                            deadline, gone, priority=level)
    return Answer(loaded.name, parsed, result, options, wanted)


def _protocol_timeout(request: InferenceRequest) -> float | None:
    """The v2 `timeout` parameter (microseconds, as Triton defines it), in seconds."""
    value = request.parameters.get("timeout")
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidRequest(f"parameter 'timeout' must be microseconds, got {value!r}")
    return float(value) / 1_000_000


# The protocol extensions this server serves (Triton's names).
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "statistics"]


def _failed(error: ServingError) -> JSONResponse:
    answer = http_error(error, "v2")
    return _error(answer.status, answer.message, answer.headers or None)


def statistics(service: Service, name: str | None, version: str | None) -> dict[str, Any]:
    """The statistics extension's answer: every serving version, one model's, or one version's
    (unknown ones raise the registry's errors)."""
    registry = service.registry
    if name is None:
        copies = registry.serving()
    elif version:
        copies = [registry.find(name, version)]
    else:
        registry.find(name)  # unknown or unavailable: its error
        serving = registry.model(name).serving()
        copies = [serving[number] for number in sorted(serving)]
    return {"model_stats": [service.statistics.version(c.name, str(c.version))
                            .as_triton(c.name, str(c.version)) for c in copies]}


def build_router(service: Service, version: str, auth: AuthPolicy) -> APIRouter:
    """The /v2 routes for `service`."""
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])

    @router.get("/models/stats")
    async def all_statistics() -> dict[str, Any]:
        """The statistics extension: counts and times of every serving model version."""
        return statistics(service, None, None)

    @router.get("", response_model=ServerMetadata)
    async def server_metadata() -> ServerMetadata:
        """Server name, version and the protocol extensions it serves."""
        return ServerMetadata(name=SERVER_NAME, version=version, extensions=EXTENSIONS)

    @router.get("/health/live")
    async def live() -> dict[str, bool]:
        """200 while the server process is up."""
        return {"live": True}

    @router.get("/health/ready", responses=_ERRORS)
    async def ready() -> JSONResponse:
        """200 when every pool has a live worker."""
        if service.ready():
            return JSONResponse({"ready": True})
        return _error(503, "workers are not ready")

    async def metadata(name: str, model_version: str | None = None) -> ModelMetadata | JSONResponse:
        try:
            return model_metadata(service, name, model_version)
        except ServingError as exc:
            return _failed(exc)

    async def model_ready(name: str, model_version: str | None = None) -> JSONResponse:
        try:
            route = service.registry.find(name, model_version or None).route
        except ServingError as exc:
            return _failed(exc)
        if service.route_ready(route):
            return JSONResponse({"name": name, "ready": True})
        return _error(503, f"model {name!r} is not ready")

    async def model_statistics(name: str, model_version: str | None = None) -> JSONResponse:
        try:
            return JSONResponse(statistics(service, name, model_version))
        except ServingError as exc:
            return _failed(exc)

    async def infer(name: str, request: Request, model_version: str | None = None) -> Response:
        return await handle_request(service, V2, name, model_version, request, auth)

    body_doc = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}}}}
    for prefix in ("/models/{name}", "/models/{name}/versions/{model_version}"):
        router.add_api_route(prefix, metadata, methods=["GET"], response_model=ModelMetadata,
                             responses=_ERRORS, summary="Model metadata")
        router.add_api_route(f"{prefix}/ready", model_ready, methods=["GET"], responses=_ERRORS,
                             summary="Model readiness")
        router.add_api_route(f"{prefix}/stats", model_statistics, methods=["GET"],
                             responses=_ERRORS, summary="Model statistics (Triton's extension)")
        router.add_api_route(f"{prefix}/infer", infer, methods=["POST"],
                             response_model=InferenceResponse, responses=_ERRORS,
                             openapi_extra=body_doc, summary="Classify (v2 inference)")
    return router
