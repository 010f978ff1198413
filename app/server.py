"""HTTP layer: validate, tokenize, hand rows to the task's pool batcher, answer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.batching import QueueFull
from app.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    ClientError,
    ErrorResponse,
    Prediction,
    parse_inputs,
)
from app.service import Service, start_service, stop_service
from app.workers import WorkerError
from compress.encoding import EncodedText, encode, softmax

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (404, 413, 422, 429, 503)
}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status,
                        headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            parts.append(f"the body is not valid JSON ({reason})".replace(" ()", ""))
            continue
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts) + \
        '; expected {"inputs": ["text", ...]} or {"inputs": [["text_a", "text_b"], ...]}'


def _predictions(
    service: Service, task: str, rows: list[EncodedText], logits: list[np.ndarray], all_scores: bool
) -> list[Prediction]:
    labels = service.models[task].manifest.labels
    probabilities = softmax(np.stack(logits))
    results = []
    for row, probs in zip(rows, probabilities, strict=True):
        best = int(probs.argmax())
        scores = {label: float(p) for label, p in zip(labels, probs, strict=True)}
        results.append(Prediction(label=labels[best], score=float(probs[best]),
                                  scores=scores if all_scores else None, truncated=row.truncated))
    return results


async def _classify(service: Service, task: str, body: ClassifyRequest) -> ClassifyResponse:
    model = service.models.get(task)
    if model is None:
        raise ClientError(404, f"unknown task {task!r}; this server has: "
                               f"{', '.join(sorted(service.models))}")
    manifest = model.manifest
    inputs = parse_inputs(body.inputs, manifest.input_kind, task, service.settings.limits)
    rows = encode(model.tokenizer, inputs)
    if service.settings.limits.truncation == "reject":
        too_long = [i for i, row in enumerate(rows) if row.truncated]
        if too_long:
            raise ClientError(413, f"inputs {too_long} exceed the model's {manifest.max_length} "
                                   "tokens; shorten them (this server does not truncate)")
    route = service.routes[task]
    try:
        logits = await service.batchers[route.pool].submit(task, rows)
    except QueueFull as exc:
        service.metrics.rejected.labels(task, "queue_full").inc()
        raise ClientError(429, f"server is at capacity ({exc}); retry shortly",
                          {"Retry-After": "1"}) from None
    except WorkerError as exc:
        raise ClientError(503, f"the model worker failed: {exc}; retry the request") from None
    results = _predictions(service, task, rows, logits, body.return_all_scores)
    return ClassifyResponse(task=task, variant=route.variant, results=results)


def _model_card(service: Service, task: str) -> dict[str, Any]:
    model = service.models[task]
    manifest = model.manifest
    route = service.routes[task]
    return {
        "task": task,
        "labels": manifest.labels,
        "input_kind": manifest.input_kind,
        "max_length": manifest.max_length,
        "pool": route.pool,
        "requested_pool": route.requested_pool,
        "fallback_reason": route.fallback_reason,
        "variant": route.variant,
        "sha256": manifest.variants[route.variant].sha256,
        "architecture": manifest.architecture.model_dump(),
        "metrics": [m.model_dump() for m in manifest.metrics],
    }


def create_app(service: Service) -> FastAPI:
    """The FastAPI app for a prepared service; workers start with the app and stop with it."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await start_service(service)
        try:
            yield
        finally:
            await stop_service(service)

    app = FastAPI(title="FastFormers Serve", version="0.1.0", lifespan=lifespan)
    metrics = service.metrics

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        task = request.path_params.get("task", "")
        metrics.requests.labels(task if task in service.models else "_unknown", "422").inc()
        return _error(422, _validation_message(exc))

    @app.post("/v1/classify/{task}", response_model=ClassifyResponse,
              response_model_exclude_none=True, responses=ERRORS)
    async def classify(task: str, body: ClassifyRequest) -> ClassifyResponse:
        """Classify texts (or text pairs) with the task's model."""
        started = time.perf_counter()
        status = 200
        try:
            return await _classify(service, task, body)
        except ClientError as exc:
            status = exc.status
            raise
        except Exception:
            status = 500
            raise
        finally:
            known = task if task in service.models else "_unknown"
            metrics.requests.labels(known, str(status)).inc()
            if status == 200:
                metrics.latency.labels(known).observe(time.perf_counter() - started)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """Every task this server has, with its route, labels, architecture and metrics."""
        return {"models": [_model_card(service, task) for task in sorted(service.models)]}

    @app.get("/v1/pools")
    async def pools() -> dict[str, Any]:
        """Worker processes per pool: pid, the cores each is pinned to, liveness, restarts."""
        return {"pools": [{"name": name, "workers": pool.describe(), "restarts": pool.restarts,
                           "queue_depth": service.batchers[name].depth}
                          for name, pool in service.pools.items()]}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The API process is up (it may still be starting its workers)."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """200 once every pool's workers are up; 503 otherwise."""
        if service.ready():
            return JSONResponse({"status": "ready"})
        return _error(503, "workers are not ready")

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        for name, batcher in service.batchers.items():
            metrics.queue_depth.labels(name).set(batcher.depth)
        return PlainTextResponse(generate_latest(metrics.registry),
                                 media_type=CONTENT_TYPE_LATEST)

    return app
