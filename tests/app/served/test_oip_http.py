"""Open Inference Protocol v2 over plain HTTP: every endpoint and error case."""

from __future__ import annotations

import json
import struct
from typing import Any

import httpx
import numpy as np
import pytest

from tests.metrics_text import sample

TEXTS = ["the film was very good", "a really awful script", "dull and tedious plot"]


def _text(name: str, texts: list[str], shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": name, "datatype": "BYTES", "shape": shape or [len(texts)], "data": texts}


def _infer(client: httpx.Client, task: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(f"/v2/models/{task}/infer", json=body)


def _outputs(response: httpx.Response) -> dict[str, dict[str, Any]]:
    return {o["name"]: o for o in response.json()["outputs"]}


def _pack(texts: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)


def test_server_metadata_names_the_server_and_its_extensions(client: httpx.Client) -> None:
    body = client.get("/v2").json()
    assert body["name"] == "fastformers-serve"
    assert "binary_tensor_data" in body["extensions"]
    assert "model_repository" in body["extensions"]


def test_liveness_and_readiness_are_200(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


def test_model_metadata_describes_inputs_and_outputs(client: httpx.Client) -> None:
    single = client.get("/v2/models/sst2").json()
    assert single["name"] == "sst2"
    assert single["versions"] == ["1"]
    assert [(i["name"], i["datatype"]) for i in single["inputs"]] == [("text", "BYTES")]
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in single["outputs"]}
    assert outputs == {"label": ("BYTES", [-1]), "score": ("FP32", [-1]),
                       "probabilities": ("FP32", [-1, 2]), "logits": ("FP32", [-1, 2])}
    pair = client.get("/v2/models/rte").json()
    assert [i["name"] for i in pair["inputs"]] == ["text", "text_pair"]


def test_a_flat_artifact_is_version_1_and_other_versions_are_404(client: httpx.Client) -> None:
    assert client.get("/v2/models/sst2/versions/1").status_code == 200
    assert client.get("/v2/models/sst2/versions/1/ready").status_code == 200
    missing = client.get("/v2/models/sst2/versions/7")
    assert missing.status_code == 404
    assert "has no version '7' loaded; it serves version(s) 1" in missing.json()["error"]


def test_model_readiness_is_200_for_known_and_404_for_unknown_models(client: httpx.Client) -> None:
    assert client.get("/v2/models/sst2/ready").status_code == 200
    unknown = client.get("/v2/models/nope/ready")
    assert unknown.status_code == 404
    assert "unknown model 'nope'" in unknown.json()["error"]


def test_infer_labels_match_the_native_api_and_echo_the_id(client: httpx.Client) -> None:
    native = client.post("/v1/classify/sst2", json={"inputs": TEXTS}).json()["results"]
    response = _infer(client, "sst2", {"id": "req-42", "inputs": [_text("text", TEXTS)]})
    assert response.status_code == 200
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("sst2", "1", "req-42")
    outputs = _outputs(response)
    assert outputs["label"]["data"] == [r["label"] for r in native]
    assert outputs["score"]["data"] == pytest.approx([r["score"] for r in native], abs=1e-6)
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
    assert probabilities.shape == (3, 2)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert outputs["logits"]["shape"] == [3, 2]


def test_infer_accepts_shape_n_by_1(client: httpx.Client) -> None:
    body = {"inputs": [_text("text", [[t] for t in TEXTS], [3, 1])]}  # type: ignore[misc]
    response = _infer(client, "sst2", body)
    assert response.status_code == 200
    assert len(_outputs(response)["label"]["data"]) == 3


def test_infer_pairs_with_text_and_text_pair(client: httpx.Client) -> None:
    body = {"inputs": [_text("text", ["the film was good", "the plot was dull"]),
                       _text("text_pair", ["it was good", "it was superb"])]}
    response = _infer(client, "rte", body)
    assert response.status_code == 200
    assert set(_outputs(response)["label"]["data"]) <= {"entailment", "not_entailment"}


def test_only_requested_outputs_are_returned(client: httpx.Client) -> None:
    body = {"inputs": [_text("text", TEXTS)], "outputs": [{"name": "label"}, {"name": "score"}]}
    assert [o["name"] for o in _infer(client, "sst2", body).json()["outputs"]] == ["label", "score"]


def test_binary_inputs_and_outputs_follow_the_binary_tensor_extension(client: httpx.Client) -> None:
    raw = _pack(TEXTS)
    header = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3],
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "label", "parameters": {"binary_data": True}},
                                     {"name": "score", "parameters": {"binary_data": True}}]})
    response = client.post("/v2/models/sst2/infer", content=header.encode() + raw,
                           headers={"Inference-Header-Content-Length": str(len(header)),
                                    "content-type": "application/octet-stream"})
    assert response.status_code == 200
    size = int(response.headers["Inference-Header-Content-Length"])
    meta = json.loads(response.content[:size])
    sizes = [o["parameters"]["binary_data_size"] for o in meta["outputs"]]
    labels_raw = response.content[size : size + sizes[0]]
    scores = np.frombuffer(response.content[size + sizes[0]:], dtype="<f4")
    native = client.post("/v1/classify/sst2", json={"inputs": TEXTS}).json()["results"]
    assert labels_raw == _pack([r["label"] for r in native])
    assert scores.tolist() == pytest.approx([r["score"] for r in native], abs=1e-6)


def test_v2_requests_are_counted_in_the_shared_metrics(client: httpx.Client) -> None:
    before = sample(client, "ffs_requests_total", task="sst2", status="200")
    _infer(client, "sst2", {"inputs": [_text("text", ["good"])]})
    assert sample(client, "ffs_requests_total", task="sst2", status="200") == before + 1


@pytest.mark.parametrize(("task", "body", "status", "message"), [
    ("nope", {"inputs": [_text("text", ["x"])]}, 404, "unknown model 'nope'"),
    ("sst2", {"inputs": []}, 400, "inputs: List should have at least 1 item"),
    ("sst2", {"inputs": [_text("sentence", ["x"])]}, 400, "unknown input 'sentence'"),
    ("sst2", {"inputs": [_text("text_pair", ["x"])]}, 400, "input 'text' is required"),
    ("sst2", {"inputs": [_text("text", ["x"]), _text("text_pair", ["y"])]}, 400,
     "this task takes single texts"),
    ("rte", {"inputs": [_text("text", ["x"])]}, 400, "send inputs 'text' and 'text_pair'"),
    ("rte", {"inputs": [_text("text", ["x", "y"]), _text("text_pair", ["z"])]}, 400,
     "'text' has 2 elements but 'text_pair' has 1"),
    ("sst2", {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
     400, "must have datatype BYTES"),
    ("sst2", {"inputs": [_text("text", ["x", "y"], [1, 2])]}, 400, "shape [N] or [N, 1]"),
    ("sst2", {"inputs": [_text("text", ["x", "y"], [3])]}, 400, "has shape [3] but 2 elements"),
    ("sst2", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [7]}]},
     400, "element 0 is int, expected a string"),
    ("sst2", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1]}]}, 400,
     "neither data nor binary_data_size"),
    ("sst2", {"inputs": [_text("text", ["x"])], "outputs": [{"name": "embedding"}]}, 400,
     "unknown output 'embedding'"),
    ("sst2", {"inputs": [_text("text", ["   "])]}, 400, "text is empty"),
    ("sst2", {"inputs": [_text("text", ["good"] * 17)]}, 413, "the limit is 16"),
    ("sst2", {"inputs": [_text("text", ["x"])], "parameters": {"timeout": "soon"}}, 400,
     "parameter 'timeout' must be microseconds"),
    ("sst2", {"inputs": [_text("text", ["x"])], "parameters": {"timeout": 0}}, 400,
     "the request timeout must be positive"),
])
def test_invalid_requests_get_the_protocols_error_body(client: httpx.Client, task: str,
                                                       body: dict[str, Any], status: int,
                                                       message: str) -> None:
    response = _infer(client, task, body)
    assert response.status_code == status
    assert set(response.json()) == {"error"}
    assert message in response.json()["error"]


def test_malformed_json_is_400(client: httpx.Client) -> None:
    response = client.post("/v2/models/sst2/infer", content=b"{nope")
    assert response.status_code == 400
    assert "invalid inference request" in response.json()["error"]


@pytest.mark.parametrize(("declared", "payload", "message"), [
    (100, _pack(["good"]), "does not fit the binary data"),
    (5, b"\x09\x00\x00\x00a", "BYTES element longer than its data"),
    (6, b"\x02\x00\x00\x00\xff\xfe", "not valid UTF-8"),
])
def test_bad_binary_tensors_are_400(client: httpx.Client, declared: int, payload: bytes,
                                    message: str) -> None:
    header = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": declared}}]})
    response = client.post("/v2/models/sst2/infer", content=header.encode() + payload,
                           headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_a_header_length_beyond_the_body_is_400(client: httpx.Client) -> None:
    response = client.post("/v2/models/sst2/infer", content=b"{}",
                           headers={"Inference-Header-Content-Length": "999"})
    assert response.status_code == 400
    assert "the body has 2 bytes" in response.json()["error"]


def test_openapi_schema_covers_both_protocols(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    assert "/v1/classify/{name}" in schema["paths"]
    assert "/v2/models/{name}/infer" in schema["paths"]
    assert "InferenceRequest" in schema["components"]["schemas"]
    assert "RequestInput" in schema["components"]["schemas"]
