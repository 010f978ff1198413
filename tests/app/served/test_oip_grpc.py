"""The official Triton gRPC client, unmodified, against the live server's gRPC door: the same
models, answers, errors and statistics as v2 over HTTP."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer, TinyRepo, free_port, start_server, stop_server

TEXTS = ["the film was very good", "a really awful script", "the cast was lovely"]


@pytest.fixture
def triton(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    assert server.grpc is not None
    client = grpcclient.InferenceServerClient(url=server.grpc)
    yield client
    client.close()


def _texts(name: str, texts: list[str]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    return tensor


def test_grpc_server_is_live_and_ready_with_its_models(
        triton: grpcclient.InferenceServerClient) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("sst2") and not triton.is_model_ready("nope")
    assert "statistics" in triton.get_server_metadata().extensions


def test_grpc_model_metadata_names_the_pair_inputs(
        triton: grpcclient.InferenceServerClient) -> None:
    metadata = triton.get_model_metadata("rte")
    assert [i.name for i in metadata.inputs] == ["text", "text_pair"]


def test_grpc_infer_matches_v1(triton: grpcclient.InferenceServerClient,
                               client: httpx.Client) -> None:
    result = triton.infer("sst2", [_texts("text", TEXTS)], request_id="g1")
    v1 = client.post("/v1/classify/sst2", json={"inputs": TEXTS}).json()["results"]
    assert [label.decode() for label in result.as_numpy("label")] == [r["label"] for r in v1]
    assert result.as_numpy("score") == pytest.approx([r["score"] for r in v1], abs=1e-6)
    assert result.get_response().id == "g1" and result.get_response().model_version == "1"


def test_grpc_pair_infer_and_class_count(triton: grpcclient.InferenceServerClient) -> None:
    outputs = [grpcclient.InferRequestedOutput("probabilities", class_count=1)]
    result = triton.infer("rte", [_texts("text", ["a cat sat"]),
                                  _texts("text_pair", ["an animal sat"])], outputs=outputs)
    [[best]] = result.as_numpy("probabilities")
    score, index, label = best.decode().split(":")
    assert 0.5 <= float(score) <= 1 and int(index) in (0, 1) and label


def test_grpc_unknown_model_is_not_found(triton: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as raised:
        triton.infer("nope", [_texts("text", TEXTS)])
    assert raised.value.status() == "StatusCode.NOT_FOUND"
    assert "unknown model 'nope'" in raised.value.message()


def test_grpc_bad_input_is_invalid_argument(triton: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as raised:
        triton.infer("sst2", [_texts("wrong", TEXTS)])
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_grpc_statistics_count_grpc_requests(triton: grpcclient.InferenceServerClient) -> None:
    def successes() -> int:
        stats = triton.get_inference_statistics("sst2", "1", as_json=True)
        return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))

    before = successes()
    triton.infer("sst2", [_texts("text", TEXTS[:1])])
    assert successes() == before + 1


def test_grpc_repository_index_lists_the_versions(
        triton: grpcclient.InferenceServerClient) -> None:
    index = triton.get_model_repository_index(as_json=True)["models"]
    assert {"name": "sst2", "version": "1", "state": "READY"}.items() <= \
        next(m for m in index if m["name"] == "sst2").items()


def test_grpc_unloads_and_loads_a_model(tiny_repo: TinyRepo, tmp_path: Path) -> None:
    shutil.copytree(tiny_repo.root / "sst2", tmp_path / "models" / "sst2")
    grpc_port = free_port()
    running = start_server(tmp_path / "models", tmp_path / "server.log",
                           FFS_CPU_POOL__WORKERS="1", FFS_API_PROCESSES="1",
                           FFS_GRPC_PORT=str(grpc_port))
    client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")
    try:
        client.unload_model("sst2")
        assert not client.is_model_ready("sst2")
        states = {m["name"]: m.get("state") for m in
                  client.get_model_repository_index(as_json=True)["models"]}
        assert states["sst2"] == "UNAVAILABLE"
        client.load_model("sst2")
        assert client.is_model_ready("sst2")
        assert client.infer("sst2", [_texts("text", TEXTS[:1])]).as_numpy("label").shape == (1,)
    finally:
        client.close()
        stop_server(running)
