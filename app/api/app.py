"""The app: hot classify routes (handle.py) in front of FastAPI's cold endpoints and docs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from app.api import huggingface as hf
from app.api import v2 as oip
from app.api.bulk import BulkRoutes
from app.api.errors import http_error
from app.api.guards import ApiKeyAuth, AuthPolicy, BodyLimit
from app.api.handle import HotRoutes, handle_request
from app.api.observability import RequestId
from app.api.schemas import ClassifyRequest, ClassifyResponse, ErrorResponse, error_payload
from app.api.v1 import V1, validation_message
from app.api.v2 import V2
from app.api.v2_repository import build_router as repository_routes
from app.core.errors import ServingError
from app.core.inference import TIMEOUT_HEADER
from app.core.model_control import ModelControl
from app.core.registry import Loaded
from app.core.routing import pool_variant
from app.core.service import Service, start_service, stop_service
from app.settings import Settings

VERSION = "0.1.0"
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 429, 503, 504)
}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_payload("/v1", status, message), status_code=status,
                        headers=headers)


def _model_card(service: Service, loaded: Loaded) -> dict[str, Any]:
    model = loaded.model
    manifest = model.manifest
    route = loaded.route
    served = manifest.variants[route.variant]
    choice = service.registry.model(loaded.name).choice
    return {
        "name": loaded.name,
        "version": str(model.version),
        "default": choice is not None and choice.default is loaded,
        "canary_weight": None if choice is None else choice.canary_weight(loaded),
        "task": manifest.task,
        "labels": manifest.labels,
        "input_kind": manifest.input_kind,
        "problem_type": manifest.problem_type,
        "thresholds": manifest.thresholds,
        "max_length": manifest.max_length,
        "truncation": service.settings.limits.truncation,
        "pool": route.pool,
        "requested_pool": route.requested_pool,
        "long_pool": route.long_pool,
        "long_length": route.long_length if route.long_pool else None,
        "spill_pool": route.spill_pool,
        "pools": {pool: pool_variant(pool, service.settings, model.cpu_variant)
                  for pool in route.pools},
        "fallback_reason": route.fallback_reason,
        "variant": route.variant,
        "cpu_variant": model.cpu_variant,
        "cpu_variant_reason": model.cpu_variant_reason,
        "sha256": served.sha256,
        "quantization": served.quantization,
        "batch_invariant": served.batch_invariant,
        "validations": [v.model_dump() for v in served.validations],
        "architecture": manifest.architecture.model_dump(),
        "metrics": [m.model_dump() for m in manifest.metrics],
        "evaluated": manifest.evaluated,
        "checks": [c.model_dump() for c in manifest.checks],
        "golden": [result.as_dict() for result in model.golden.values()],
        "fusions": {"applied": served.fusions, "missing": served.fusions_missing,
                    "unsupported": served.fusions_unsupported},
    }


_CLASSIFY_SCHEMA = ClassifyRequest.model_json_schema(
    ref_template="#/components/schemas/{model}")
_CLASSIFY_BODY_DOC = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/ClassifyRequest"}}}}}


def _document_request_bodies(app: FastAPI) -> None:
    """Bodies parsed by the handlers themselves (size limits, binary v2 tensors, precise JSON
    errors) are not seen by FastAPI: add their schemas to the OpenAPI document."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(oip.SCHEMA_DEFINITIONS)
            schemas.update(hf.SCHEMA_DEFINITIONS)
            schemas["ClassifyRequest"] = _CLASSIFY_SCHEMA
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_middleware(app: FastAPI, settings: Settings) -> None:
    """For the cold endpoints, outermost last: request ids, then API keys, then body size (CORS
    wraps the whole app in create_app)."""
    app.add_middleware(BodyLimit, max_bytes=settings.limits.max_body_bytes)
    keys = settings.auth.keys()
    admin = settings.auth.admin_keys()
    if keys or admin:
        app.add_middleware(ApiKeyAuth, keys=keys, protect_health=settings.auth.protect_health,
                           protect_metrics=settings.auth.protect_metrics, admin_keys=admin)
    app.add_middleware(RequestId)


DOCS_ASSETS = "/docs-assets"


def _serve_docs_offline(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with their scripts and styles served from this service, not
    from a CDN: the pages work on hosts without internet access."""
    import fastapi_offline

    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")
    title = f"{app.title} - API"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=title,
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=app.openapi_url or "/openapi.json", title=title,
                              redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png",
                              with_google_fonts=False)


def create_app(service: Service) -> ASGIApp:
    """The ASGI app for a prepared service: the hot classify routes in front of FastAPI, which
    serves the rest; workers start with the app (its lifespan) and stop with it."""
    app: ASGIApp = BulkRoutes(HotRoutes(_fastapi_app(service), service,
                                        (V1, V2, hf.HuggingFace, hf.Tei(service))), service)
    settings = service.settings
    if settings.cors_allow_origins:  # outermost: classify answers need its headers too
        app = CORSMiddleware(app, allow_origins=settings.cors_allow_origins,
                             allow_methods=["GET", "POST"],
                             allow_headers=["Authorization", "Content-Type", TIMEOUT_HEADER])
    return app


def _fastapi_app(service: Service) -> FastAPI:

    control = ModelControl(service)
    auth = AuthPolicy.from_settings(service.settings.auth)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await start_service(service)
        poll_s = service.settings.repository.poll_s
        poller = None if poll_s is None else asyncio.create_task(control.poll(poll_s))
        grpc_door = None
        try:
            if service.settings.grpc_port is not None:
                from app.api.v2_grpc import start_grpc  # the `grpc` extra: only when it serves

                grpc_door = await start_grpc(service, control, VERSION)
            yield
        finally:
            if poller is not None:
                poller.cancel()
            if grpc_door is not None:  # HTTP has drained; calls in flight finish too
                await grpc_door.stop(service.settings.shutdown_timeout_s)
            await stop_service(service)

    app = FastAPI(title="FastFormers Serve", version=VERSION, lifespan=lifespan,
                  description="Native API under /v1; the Open Inference Protocol v2 under /v2; "
                              "Hugging Face's Inference API task (/models/{name}) and TEI's "
                              "classifier routes (/predict, /info).",
                  docs_url=None, redoc_url=None)
    _serve_docs_offline(app)
    app.include_router(oip.build_router(service, VERSION, auth))
    app.include_router(repository_routes(control))
    app.include_router(hf.build_router(service, VERSION, auth))
    _add_middleware(app, service.settings)
    _document_request_bodies(app)
    _add_error_handlers(app, service)
    _add_v1_routes(app, service, auth)
    return app


def _add_error_handlers(app: FastAPI, service: Service) -> None:
    """Every error of the cold endpoints in the /v1 body; the core's typed errors mapped by
    api/errors.py."""
    metrics = service.metrics

    @app.exception_handler(StarletteHTTPException)
    async def no_route(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{exc.detail}: {request.method} {request.url.path}"
        return JSONResponse(error_payload(request.url.path, exc.status_code, message),
                            status_code=exc.status_code)

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> JSONResponse:
        answer = http_error(exc)
        return _error(answer.status, answer.message, answer.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        name = request.path_params.get("name", "")
        metrics.requests.labels(name if service.registry.knows(name) else "_unknown", "",
                                "422").inc()
        return _error(422, validation_message(exc.errors()))


def _add_v1_routes(app: FastAPI, service: Service, auth: AuthPolicy) -> None:
    """/v1 classify (documented here, answered by the hot routes), models, pools, health and
    metrics."""
    metrics = service.metrics

    @app.post("/v1/classify/{name}", response_model=ClassifyResponse,
              response_model_exclude_none=True, responses=ERRORS,
              openapi_extra=_CLASSIFY_BODY_DOC)
    async def classify_texts(name: str, request: Request) -> Response:
        """Classify texts (or text pairs) with the named model.

        Body: ClassifyRequest as JSON. Optional header X-Request-Timeout-Ms shortens the server's
        deadline for this request.
        """
        return await handle_request(service, V1, name, None, request, auth)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """Every model version this server serves, with its route, labels, architecture and
        metrics."""
        # "task" in each unavailable entry is the documented field: the model name (or key).
        return {"models": [_model_card(service, loaded) for loaded in service.registry.serving()],
                "unavailable": [{"task": name, "error": why}
                                for name, why in service.registry.unavailable().items()]}

    @app.get("/v1/pools")
    async def pools() -> dict[str, Any]:
        """Worker processes per pool (pid, cores, providers, liveness), restarts, queue depth,
        and rows that spilled from it to another pool, by reason."""
        spilled = service.dispatcher.spilled if service.dispatcher is not None else {}
        return {"pools": [{"name": name, "variant": pool_variant(name, service.settings),
                           "ready": pool.ready(), "workers": pool.describe(),
                           "restarts": pool.restarts, "queue_depth": service.batchers[name].depth,
                           "spilled_rows": {reason: rows for (source, reason), rows
                                            in sorted(spilled.items()) if source == name}}
                          for name, pool in service.pools.items()]}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The API process is up (it may still be starting its workers)."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """200 once every pool's workers are up; 503 otherwise."""
        if service.ready():
            body: dict[str, Any] = {"status": "ready"}
            unavailable = service.registry.unavailable()
            if unavailable:
                body["unavailable"] = unavailable
            return JSONResponse(body)
        return _error(503, "draining for shutdown" if service.draining else "workers are not ready")

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        for name, batcher in service.batchers.items():
            metrics.queue_depth.labels(name).set(batcher.depth)
            metrics.pool_ready.labels(name).set(int(service.pools[name].ready()))
        return PlainTextResponse(metrics.exposition(),
                                 media_type=CONTENT_TYPE_LATEST)
