"""The official Triton HTTP client, unmodified, against the live server (Open Inference Protocol v2)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer

TEXTS = ["the film was very good", "a really awful script", "the cast was lovely"]


@pytest.fixture
def triton(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield client
    client.close()


def _texts(name: str, texts: list[str], binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_),
                               binary_data=binary)
    return tensor


def _native_labels(client: httpx.Client, task: str, inputs: list[object]) -> list[str]:
    results = client.post(f"/v1/classify/{task}", json={"inputs": inputs}).json()["results"]
    return [r["label"] for r in results]


def test_tritonclient_sees_a_live_ready_server_and_model(
        triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("sst2")
    assert not triton.is_model_ready("nope")


def test_tritonclient_reads_model_metadata(triton: httpclient.InferenceServerClient) -> None:
    metadata = triton.get_model_metadata("rte")
    assert metadata["name"] == "rte"
    assert [i["name"] for i in metadata["inputs"]] == ["text", "text_pair"]
    assert {o["name"] for o in metadata["outputs"]} == {"label", "score", "probabilities",
                                                       "logits"}


def test_tritonclient_default_binary_infer_matches_the_native_api(
        triton: httpclient.InferenceServerClient, client: httpx.Client) -> None:
    result = triton.infer("sst2", [_texts("text", TEXTS)], request_id="abc")
    labels = [label.decode() for label in result.as_numpy("label")]
    assert labels == _native_labels(client, "sst2", list(TEXTS))
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (3, 2)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert result.as_numpy("score").dtype == np.float32
    assert result.get_response()["id"] == "abc"


def test_tritonclient_json_tensors_and_requested_outputs(
        triton: httpclient.InferenceServerClient, client: httpx.Client) -> None:
    outputs = [httpclient.InferRequestedOutput("label", binary_data=False)]
    result = triton.infer("sst2", [_texts("text", TEXTS, binary=False)], outputs=outputs)
    labels = [str(label) for label in result.as_numpy("label")]
    assert labels == _native_labels(client, "sst2", list(TEXTS))
    assert result.as_numpy("score") is None


def test_tritonclient_classifies_pairs(triton: httpclient.InferenceServerClient,
                                       client: httpx.Client) -> None:
    first, second = ["the film was good", "the plot was dull"], ["it was good", "it was superb"]
    result = triton.infer("rte", [_texts("text", first), _texts("text_pair", second)])
    labels = [label.decode() for label in result.as_numpy("label")]
    assert labels == _native_labels(client, "rte", [list(p) for p in zip(first, second, strict=True)])


def test_tritonclient_gets_the_servers_error_message(
        triton: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        triton.infer("nope", [_texts("text", ["x"])])
    with pytest.raises(InferenceServerException, match="send inputs 'text' and 'text_pair'"):
        triton.infer("rte", [_texts("text", ["x"])])
