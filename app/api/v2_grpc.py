"""The Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`, as Triton serves
it): inference, metadata, liveness and readiness, the repository and statistics calls, on
settings.grpc_port (off by default), in the API process's event loop beside HTTP.

The messages are tritonclient's generated ones (the `grpc` extra): the service definition
tritonclient[grpc], KServe's gRPC client and ModelMesh-style callers speak. An infer request is
decoded into the same InferenceRequest as v2 over HTTP (binary inputs as the binary tensor
extension's tail) and run by the same `v2.infer`; outputs go back as raw_output_contents.

The client's deadline is the request's deadline; a call the client cancels fails its rows' future,
so rows that have not started are dropped; the core's errors map to gRPC codes
(app/api/errors.py); API keys come from the call's `authorization` metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from app.api import v2
from app.api.errors import CLIENT_CLOSED, grpc_code, http_error
from app.api.guards import AuthPolicy
from app.api.handle import end_trace, hold_refusal, queue_full, record
from app.api.observability import request_id, request_id_for
from app.core.errors import InvalidRequest, Overloaded, ServingError
from app.core.model_control import ModelControl
from app.core.service import Service
from app.core.tracing import current_trace

log = logging.getLogger(__name__)
STOPPING = "the server is shutting down; this call was not run (send it to another replica)"
HOLD_S = 5.0  # the longest a call that came while stopping waits for its refusal
SETTLE_S = 0.05
# The HTTP path each call is authorized as (health open, repository admin: guards.AuthPolicy).
_PATHS = {"ServerLive": "/v2/health/live", "ServerReady": "/v2/health/ready",
          "ModelReady": "/v2/health/ready", "RepositoryModelLoad": "/v2/repository/load",
          "RepositoryModelUnload": "/v2/repository/unload",
          "RepositoryIndex": "/v2/repository/index"}


def _metadata(context: Any) -> dict[bytes, bytes]:
    """The call's metadata as the HTTP doors' headers (lower-case names, bytes)."""
    return {k.encode(): v.encode() if isinstance(v, str) else v
            for k, v in context.invocation_metadata() or ()}


def _parameter(value: Any) -> Any:
    """An InferParameter's value as the JSON request would carry it."""
    kind = value.WhichOneof("parameter_choice")
    return None if kind is None else getattr(value, kind)


def decode_request(request: Any) -> tuple[v2.InferenceRequest, bytes]:
    """The v2 request a ModelInferRequest carries, and its raw inputs laid end to end."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; "
                             "send one per input, or none")
    inputs = []
    for index, tensor in enumerate(request.inputs):
        parameters = {k: _parameter(v) for k, v in tensor.parameters.items()}
        entry: dict[str, Any] = {"name": tensor.name, "shape": list(tensor.shape),
                                 "datatype": tensor.datatype, "parameters": parameters}
        if raw:
            parameters["binary_data_size"] = len(raw[index])
        else:
            entry["data"] = [_utf8(item, tensor.name) for item in tensor.contents.bytes_contents]
        inputs.append(entry)
    outputs = [{"name": o.name, "parameters": {k: _parameter(v) for k, v in o.parameters.items()}}
               for o in request.outputs]
    body: dict[str, Any] = {"id": request.id or None, "inputs": inputs,
                            "parameters": {k: _parameter(v)
                                           for k, v in request.parameters.items()},
                            "outputs": outputs or None}
    try:
        return v2.InferenceRequest.model_validate(body), b"".join(raw)
    except ValueError as exc:
        raise InvalidRequest(f"invalid inference request: {exc}") from None


def _utf8(value: bytes, name: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"input {name!r}: text is not valid UTF-8") from None


def encode_response(answer: v2.Answer) -> Any:
    """The ModelInferResponse of an answer: every output's data in raw_output_contents."""
    response = pb.ModelInferResponse(model_name=answer.model_name,
                                     model_version=str(answer.result.version),
                                     id=answer.request.id or "")
    for tensor in answer.outputs():
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(v2.binary_tensor(tensor.datatype, tensor.values))
    return response


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The calls this server answers; the others are UNIMPLEMENTED (the generated base)."""

    def __init__(self, service: Service, control: ModelControl, version: str) -> None:
        self.service = service
        self.control = control
        self.version = version
        self.auth = AuthPolicy.from_settings(service.settings.auth, admin=True)
        self.stopping = False  # set once HTTP has drained: new infer calls are refused
        self.stopped = asyncio.Event()  # set once gRPC stops: refused calls are answered
        self.in_flight = 0

    async def _check(self, call: str, context: Any, model: str | None = None) -> None:
        """Refuse (UNAUTHENTICATED) a call without a key this call needs; an infer call for
        `model` is counted as HTTP counts its 401s."""
        headers = _metadata(context)
        path = _PATHS.get(call, "/v2/models/infer")
        if not self.auth.allows(path, headers):
            if model is not None:
                record(self.service, model, 401, time.perf_counter())
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, AuthPolicy.MESSAGE)

    async def _fail(self, context: Any, error: ServingError) -> None:
        await context.abort(grpc_code(error), error.message)

    # -- health and metadata --------------------------------------------------------------

    async def ServerLive(self, request: Any, context: Any) -> Any:
        await self._check("ServerLive", context)
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        await self._check("ServerReady", context)
        return pb.ServerReadyResponse(ready=self.service.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        await self._check("ModelReady", context)
        try:
            route = self.service.registry.find(request.name, request.version or None).route
        except ServingError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.service.route_ready(route))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        await self._check("ServerMetadata", context)
        return pb.ServerMetadataResponse(name=v2.SERVER_NAME, version=self.version,
                                         extensions=v2.EXTENSIONS)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        await self._check("ModelMetadata", context)
        try:
            metadata = v2.model_metadata(self.service, request.name, request.version or None)
        except ServingError as exc:
            await self._fail(context, exc)
        return json_format.ParseDict(metadata.model_dump(), pb.ModelMetadataResponse())

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        await self._check("ModelStatistics", context)
        try:
            stats = v2.statistics(self.service, request.name or None, request.version or None)
        except ServingError as exc:
            await self._fail(context, exc)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse(),
                                     ignore_unknown_fields=True)

    # -- the repository ----------------------------------------------------------------------

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        await self._check("RepositoryIndex", context)
        rows = self.control.registry.index(request.ready)
        return pb.RepositoryIndexResponse(models=[
            pb.RepositoryIndexResponse.ModelIndex(name=r.name, version=r.version, state=r.state,
                                                  reason=r.reason) for r in rows])

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        await self._check("RepositoryModelLoad", context)
        try:
            await self.control.load(request.model_name)
        except ServingError as exc:
            await self._fail(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self._check("RepositoryModelUnload", context)
        try:
            await self.control.unload(request.model_name)
        except ServingError as exc:
            await self._fail(context, exc)
        return pb.RepositoryModelUnloadResponse()

    # -- inference ---------------------------------------------------------------------------

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        await self._check("ModelInfer", context, request.model_name)
        if self.stopping:  # never run: UNAVAILABLE tells the client a retry elsewhere is safe
            # Held until gRPC stops: a client waiting here sends nothing gRPC could cancel
            # unanswered at the stop (see GrpcDoor.stop).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopped.wait(), HOLD_S)
            await context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING)
        self.in_flight += 1
        headers = _metadata(context)
        rid = request_id_for(headers)
        token = request_id.set(rid)
        context.set_trailing_metadata((("x-request-id", rid),))
        try:
            return await self._traced(request, context, headers, rid)
        finally:
            request_id.reset(token)
            self.in_flight -= 1

    async def _traced(self, request: Any, context: Any, headers: dict[bytes, bytes],
                      rid: str) -> Any:
        """The infer call inside its trace span (settings.tracing), counted and logged by its
        final status, as the HTTP doors do."""
        service, name = self.service, request.model_name
        started = time.perf_counter()
        trace = None if service.tracing is None else service.tracing.begin(
            "grpc", name, f"/v2/models/{name}/infer", headers, started, rid)
        token = None if trace is None else current_trace.set(trace)
        status, version = 500, ""
        try:
            response = await self._infer(request, context, started)
            status, version = 200, response.model_version
            return response
        except ServingError as exc:
            if isinstance(exc, Overloaded):
                await hold_refusal(service)
            status = http_error(exc, "v2").status
            await self._fail(context, exc)
        except asyncio.CancelledError:  # the client cancelled the call: its rows were dropped
            status = CLIENT_CLOSED
            raise
        except Exception as exc:
            log.exception("gRPC infer %s failed", name)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error "
                                f"({type(exc).__name__}); see the server log")
        finally:
            record(service, name, status, started, version)
            if trace is not None:
                end_trace(trace, status)
                current_trace.reset(token)  # type: ignore[arg-type]

    async def _infer(self, request: Any, context: Any, started: float) -> Any:
        service, name = self.service, request.model_name
        if queue_full(service, name, service.settings.priorities.default):  # cheap, first
            service.metrics.rejected.labels(name, "queue_full").inc()
            raise Overloaded("server is at capacity (its queue is full); retry shortly")
        parsed, tail = decode_request(request)
        with service.registry.lease(name, request.model_version or None) as loaded:
            answer = await v2.infer(service, loaded, parsed, tail, started, None,
                                    client_timeout_s=context.time_remaining())
        return encode_response(answer)


class GrpcDoor:
    """The running gRPC server and its servicer."""

    def __init__(self, server: grpc.aio.Server, servicer: InferenceService) -> None:
        self.server = server
        self.servicer = servicer

    async def stop(self, timeout_s: float) -> None:
        """Hold new infer calls, let those in flight finish (up to `timeout_s`), stop gRPC, then
        refuse the held calls (UNAVAILABLE: not run).

        gRPC answers calls it has received but not yet handed to a handler when it stops with
        CANCELLED (never run, but a client cannot tell; grpc/grpc#41785). Holding the new calls
        keeps the clients waiting on answered-later calls instead of sending more at that
        moment; after the stop their next calls find no listener.
        """
        servicer = self.servicer
        servicer.stopping = True
        until = time.monotonic() + timeout_s
        while servicer.in_flight and time.monotonic() < until:
            await asyncio.sleep(0.01)
        await asyncio.sleep(SETTLE_S)  # calls sent just before are handed to handlers
        stopping = asyncio.ensure_future(self.server.stop(max(0.0, until - time.monotonic())))
        await asyncio.sleep(SETTLE_S)  # the listener is closed, connections told to go away
        servicer.stopped.set()
        await stopping


def _options(service: Service) -> Iterable[tuple[str, int]]:
    size = service.settings.limits.max_body_bytes
    return [("grpc.max_receive_message_length", size), ("grpc.so_reuseport", 1)]


async def start_grpc(service: Service, control: ModelControl, version: str) -> GrpcDoor:
    """The gRPC server on settings.grpc_port, started (every API process binds it: the kernel
    spreads connections over them, SO_REUSEPORT)."""
    server = grpc.aio.server(options=list(_options(service)))
    servicer = InferenceService(service, control, version)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    address = f"{service.settings.host}:{service.settings.grpc_port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"gRPC cannot listen on {address}")
    await server.start()
    log.info("gRPC listening on %s", address)
    return GrpcDoor(server, servicer)
