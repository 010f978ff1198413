"""Hostile or broken requests: each a 4xx with a clear message, and the server healthy after."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

JSON = {"content-type": "application/json"}
BIG = 3 * 1024 * 1024  # over the default 2 MiB body limit


def _message(response: httpx.Response) -> str:
    error = response.json()["error"]
    return str(error["message"] if isinstance(error, dict) else error)


@pytest.mark.parametrize(("body", "status", "message"), [
    (b'{"inputs": ["\xff\xfe bad"]}', 422, "not valid JSON"),
    (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 422, "recursion limit"),
    (b'{"inputs": [' + b"9" * 10_000 + b"]}", 422, "not valid JSON"),
    (b'{"inputs": [1e999999]}', 422, "expects a string, got float"),
    (b'{"inputs": ["a\\u0000b"]}', 422, "text contains a NUL character"),
    (b'{"inputs": "just a string"}', 422, "inputs: Input should be a valid array"),
])
def test_malformed_bodies_are_4xx_with_a_clear_message(client: httpx.Client, body: bytes,
                                                       status: int, message: str) -> None:
    response = client.post("/v1/classify/sst2", content=body, headers=JSON)
    assert response.status_code == status
    assert message in _message(response)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_a_non_json_content_type_is_415(client: httpx.Client, content_type: str) -> None:
    response = client.post("/v1/classify/sst2", content=b'{"inputs": ["good"]}',
                           headers={"content-type": content_type})
    assert response.status_code == 415
    assert "Content-Type must be application/json" in _message(response)


def test_an_oversized_body_is_413_before_it_is_read(client: httpx.Client) -> None:
    response = client.post("/v1/classify/sst2", content=b"x" * BIG, headers=JSON)
    assert response.status_code == 413
    assert "limits.max_body_bytes" in _message(response)


def test_an_oversized_chunked_body_is_413_while_it_streams(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: only counting can stop it
        for _ in range(BIG // 65536 + 1):
            yield b"x" * 65536

    response = client.post("/v1/classify/sst2", content=chunks(), headers=JSON)
    assert response.status_code == 413


def test_an_oversized_v2_body_is_413_in_the_protocols_format(client: httpx.Client) -> None:
    response = client.post("/v2/models/sst2/infer", content=b"x" * BIG)
    assert response.status_code == 413
    assert set(response.json()) == {"error"}


@pytest.mark.parametrize("path", ["/v1/classify/..%2F..%2Fetc%2Fpasswd", "/v1/classify/%2e%2e",
                                  "/v1/classify/sst2%00", "/v1/nothing-here"])
def test_path_tricks_are_404_in_the_error_format(client: httpx.Client, path: str) -> None:
    response = client.post(path, json={"inputs": ["x"]})
    assert response.status_code == 404
    assert "error" in response.json()
    assert "Traceback" not in response.text


def test_a_wrong_method_is_405_in_the_error_format(client: httpx.Client) -> None:
    response = client.get("/v1/classify/sst2")
    assert response.status_code == 405
    assert "Method Not Allowed" in _message(response)


@pytest.mark.parametrize(("value", "message"), [
    ("soon", "X-Request-Timeout-Ms must be a number of milliseconds"),
    ("0", "the request timeout must be positive"),
    ("-5", "the request timeout must be positive"),
])
def test_an_invalid_timeout_header_is_400(client: httpx.Client, value: str, message: str) -> None:
    response = client.post("/v1/classify/sst2", json={"inputs": ["good"]},
                           headers={"X-Request-Timeout-Ms": value})
    assert response.status_code == 400
    assert message in _message(response)


def test_a_timeout_header_within_the_limit_is_accepted(client: httpx.Client) -> None:
    response = client.post("/v1/classify/sst2", json={"inputs": ["good"]},
                           headers={"X-Request-Timeout-Ms": "5000"})
    assert response.status_code == 200


def test_the_server_is_healthy_after_bad_input(client: httpx.Client) -> None:
    client.post("/v1/classify/sst2", content=b"[" * 100_000, headers=JSON)
    client.post("/v1/classify/sst2", content=b"x" * BIG, headers=JSON)
    assert client.get("/readyz").status_code == 200
    response = client.post("/v1/classify/sst2", json={"inputs": ["a lovely film"]})
    assert response.json()["results"][0]["label"] == "positive"
