"""Access and observability: API keys, CORS, request ids, logs without input text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    ROOT,
    RunningServer,
    TinyRepo,
    free_port,
    start_server,
    stop_server,
)
from tests.metrics_text import sample_value

KEYS = ("first-secret-key", "second-secret-key")
ORIGIN = "https://app.example"
SECRET_TEXT = "zebra crossing marmalade sentence"


@pytest.fixture(scope="module")
def guarded(tiny_repo: TinyRepo, tmp_path_factory: pytest.TempPathFactory) \
        -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("guarded")
    keys_file = folder / "keys.txt"
    keys_file.write_text(KEYS[1] + "\n")
    server = start_server(
        tiny_repo.root, folder / "server.log", FFS_CPU_POOL__WORKERS="1",
        FFS_AUTH__API_KEYS=json.dumps([KEYS[0]]), FFS_AUTH__API_KEYS_FILE=str(keys_file),
        FFS_AUTH__PROTECT_METRICS="true", FFS_CORS_ALLOW_ORIGINS=json.dumps([ORIGIN]),
        FFS_LOG_LEVEL="debug", FFS_LOG_FORMAT="json", FFS_GRPC_PORT=str(free_port()),
    )
    yield server
    stop_server(server)


def _classify(server: RunningServer, key: str | None, text: str = "good",
              **headers: str) -> httpx.Response:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(f"{server.url}/v1/classify/sst2", json={"inputs": [text]},
                      headers=headers, timeout=30)


def test_requests_without_a_key_are_401_with_a_bearer_challenge(guarded: RunningServer) -> None:
    response = _classify(guarded, None)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "missing or invalid API key" in response.json()["error"]["message"]


def test_a_wrong_key_is_401(guarded: RunningServer) -> None:
    assert _classify(guarded, "not-a-key").status_code == 401
    assert _classify(guarded, KEYS[0] + "x").status_code == 401


@pytest.mark.parametrize("key", KEYS)
def test_keys_from_the_environment_and_from_a_file_both_work(guarded: RunningServer,
                                                             key: str) -> None:
    assert _classify(guarded, key).status_code == 200


def test_grpc_takes_the_key_from_call_metadata_and_keeps_liveness_open(
        guarded: RunningServer) -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    assert guarded.grpc is not None
    client = grpcclient.InferenceServerClient(url=guarded.grpc)
    text = grpcclient.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"good"], dtype=np.object_))
    try:
        assert client.is_server_live()  # health stays open, as over HTTP
        refusals = sample_value(_metrics(guarded), "ffs_requests_total",
                                {"task": "sst2", "status": "401"})
        with pytest.raises(InferenceServerException) as refused:
            client.infer("sst2", [text])
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        assert sample_value(_metrics(guarded), "ffs_requests_total",
                            {"task": "sst2", "status": "401"}) == refusals + 1
        answered = client.infer("sst2", [text], headers={"authorization": f"Bearer {KEYS[1]}"})
        assert answered.as_numpy("label").shape == (1,)
    finally:
        client.close()


def _metrics(server: RunningServer) -> str:
    return httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {KEYS[0]}"},
                     timeout=30).text


def test_v2_gets_its_own_error_format_for_401(guarded: RunningServer) -> None:
    response = httpx.post(f"{guarded.url}/v2/models/sst2/infer", json={"inputs": []}, timeout=30)
    assert response.status_code == 401
    assert set(response.json()) == {"error"}


def test_health_stays_open_and_metrics_are_protected_as_configured(
        guarded: RunningServer) -> None:
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
        assert httpx.get(f"{guarded.url}{path}", timeout=10).status_code == 200
    assert httpx.get(f"{guarded.url}/metrics", timeout=10).status_code == 401
    with_key = httpx.get(f"{guarded.url}/metrics", timeout=10,
                         headers={"Authorization": f"Bearer {KEYS[0]}"})
    assert with_key.status_code == 200


def test_cors_allows_only_the_configured_origin(guarded: RunningServer) -> None:
    def preflight(origin: str) -> httpx.Response:
        return httpx.options(f"{guarded.url}/v1/classify/sst2", timeout=10, headers={
            "Origin": origin, "Access-Control-Request-Method": "POST"})

    assert preflight(ORIGIN).headers.get("access-control-allow-origin") == ORIGIN
    assert "access-control-allow-origin" not in preflight("https://evil.example").headers


def test_cors_is_off_by_default(client: httpx.Client) -> None:
    response = client.options("/v1/classify/sst2", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in response.headers


def test_every_response_carries_a_request_id_and_echoes_a_given_one(
        guarded: RunningServer) -> None:
    generated = _classify(guarded, KEYS[0]).headers["x-request-id"]
    assert len(generated) == 32
    echoed = _classify(guarded, KEYS[0], **{"X-Request-Id": "trace-123"})
    assert echoed.headers["x-request-id"] == "trace-123"
    unsafe = _classify(guarded, KEYS[0], **{"X-Request-Id": "bad id\twith spaces"})
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"


def test_logs_are_json_with_request_ids_and_never_the_input_text(guarded: RunningServer) -> None:
    response = _classify(guarded, KEYS[0], SECRET_TEXT, **{"X-Request-Id": "log-check-1"})
    assert response.status_code == 200
    _classify(guarded, "wrong-key", SECRET_TEXT)
    httpx.post(f"{guarded.url}/v1/classify/sst2", json={"inputs": [SECRET_TEXT] * 99},
               headers={"Authorization": f"Bearer {KEYS[0]}", "X-Request-Id": "log-check-2"},
               timeout=30)  # a 413: refusals are logged at debug
    text = Path(guarded.log_path).read_text()
    assert "zebra" not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert lines, text[-2000:]
    assert all({"time", "level", "logger", "message", "request_id"} <= set(e) for e in lines)
    assert any(e["request_id"] == "log-check-2" and e.get("status") == 413
               and e["level"] == "debug" for e in lines)


def test_error_bodies_carry_no_tracebacks_or_paths(guarded: RunningServer) -> None:
    response = httpx.post(f"{guarded.url}/v1/classify/sst2", content=b"{oops",
                          headers={"Authorization": f"Bearer {KEYS[0]}",
                                   "content-type": "application/json"}, timeout=30)
    assert response.status_code == 422
    assert "Traceback" not in response.text
    assert str(ROOT) not in response.text and "site-packages" not in response.text


def test_payload_logging_shows_input_text_only_when_switched_on(tiny_repo: TinyRepo,
                                                                tmp_path: Path) -> None:
    server = start_server(tiny_repo.root, tmp_path / "server.log", FFS_CPU_POOL__WORKERS="1",
                          FFS_LOG_LEVEL="debug", FFS_LOG_PAYLOADS="true")
    try:
        assert _classify(server, None, SECRET_TEXT).status_code == 200
    finally:
        stop_server(server)
    assert SECRET_TEXT in server.log()
