"""The model repository extension of the v2 protocol (as Triton and KServe define it):
POST /v2/repository/index, /v2/repository/models/{name}/load and .../unload.

Cold routes: a load reads and checks files and starts sessions in the workers; the work and its
rules live in core/model_control.py, the states in core/registry.py.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from app.api.errors import http_error
from app.core.errors import InvalidRequest, ServingError
from app.core.model_control import ModelControl


class IndexRequest(BaseModel):
    ready: bool = Field(default=False, description="list only the versions that are READY")


class IndexRow(BaseModel):
    name: str
    version: str
    state: str = Field(description="READY, LOADING, UNLOADING or UNAVAILABLE")
    reason: str = Field(description="why it is not READY ('' when it is)")


def _failed(exc: ServingError) -> JSONResponse:
    answer = http_error(exc, "v2")
    return JSONResponse({"error": answer.message}, status_code=answer.status)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    import orjson

    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


def build_router(control: ModelControl) -> APIRouter:
    """The repository routes for one running service."""
    router = APIRouter(prefix="/v2/repository", tags=["Model repository"])
    errors: dict[int | str, dict[str, Any]] = {
        code: {"description": "{'error': reason}"} for code in (400, 401, 404, 409)}

    @router.post("/index", response_model=list[IndexRow], responses=errors)
    async def index(request: Request) -> Any:
        """Every model version in the repository, with its state and the reason when it is
        not READY. Body (optional): {"ready": true} for the READY ones only."""
        try:
            wanted = IndexRequest.model_validate(await _json_body(request))
        except ServingError as exc:
            return _failed(exc)
        except ValidationError as exc:
            return _failed(InvalidRequest(f"invalid index request: {exc.errors()[0]['msg']}"))
        return [row.__dict__ for row in control.registry.index(wanted.ready)]

    @router.post("/models/{name}/load", responses=errors)
    async def load(name: str, request: Request) -> JSONResponse:
        """Read the repository again for this model: new or changed versions are loaded and
        checked before any request goes to them, versions its policy no longer selects are
        unloaded once their requests are answered. A failure leaves what served serving."""
        try:
            await _json_body(request)  # Triton's optional parameters: accepted, not used
            await control.load(name)
        except ServingError as exc:
            return _failed(exc)
        return JSONResponse({})

    @router.post("/models/{name}/unload", responses=errors)
    async def unload(name: str, request: Request) -> JSONResponse:
        """Stop serving every version of this model; accepted requests are answered first."""
        try:
            await _json_body(request)
            await control.unload(name)
        except ServingError as exc:
            return _failed(exc)
        return JSONResponse({})

    return router
