"""The server exports its request spans over OTLP/HTTP: a real server, a collector on loopback."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from tests.conftest import free_port, start_server, stop_server

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
GRPC_TRACE = "5bf92f3577b34da6a3ce929d0e0e4737"


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that keeps what it is sent."""

    received: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        self.received.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.slow  # a real server process
def test_a_real_server_exports_its_spans_over_otlp_http(fast_repo: Path, tmp_path: Path) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    collector = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
    grpc_port = free_port()
    running = start_server(fast_repo, tmp_path / "server.log", FFS_TRACING__ENABLED="true",
                           FFS_TRACING__OTLP_ENDPOINT=endpoint,
                           FFS_TRACING__SERVICE_NAME="ffs-under-test",
                           FFS_GRPC_PORT=str(grpc_port))
    try:
        response = httpx.post(f"{running.url}/v1/classify/sst2", json={"inputs": ["fine"]},
                              headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
        assert response.status_code == 200
        _grpc_infer(f"127.0.0.1:{grpc_port}", f"00-{GRPC_TRACE}-{CLIENT_SPAN}-01")
    finally:
        stop_server(running)  # the server flushes its spans on the way out
        collector.shutdown()
    names, services = set(), set()
    for body in _Collector.received:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            services |= {a.value.string_value for a in resource_spans.resource.attributes
                         if a.key == "service.name"}
            names |= {(span.name, span.trace_id.hex()) for scope in resource_spans.scope_spans
                      for span in scope.spans}
    assert services == {"ffs-under-test"}
    assert {name for name, trace in names if trace == CLIENT_TRACE} == \
        {"classify", "validate", "queue", "batch", "respond"}
    assert {"classify", "validate", "queue", "batch"} <= \
        {name for name, trace in names if trace == GRPC_TRACE}  # the gRPC door traces too


def _grpc_infer(target: str, traceparent: str) -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url=target)
    text = grpcclient.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"fine"], dtype=np.object_))
    try:
        client.infer("sst2", [text], headers={"traceparent": traceparent})
    finally:
        client.close()
