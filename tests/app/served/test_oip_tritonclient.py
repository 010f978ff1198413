"""The official Triton HTTP client, unmodified, against the live server (Open Inference Protocol v2)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer
from tests.metrics_text import sample_value

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


def test_server_metadata_lists_every_extension_served(
        triton: httpclient.InferenceServerClient) -> None:
    extensions = set(triton.get_server_metadata()["extensions"])
    assert {"binary_tensor_data", "classification", "model_repository", "statistics"} <= \
        extensions


def test_class_count_answers_score_index_label_best_first(
        triton: httpclient.InferenceServerClient) -> None:
    outputs = [httpclient.InferRequestedOutput("probabilities", class_count=2),
               httpclient.InferRequestedOutput("label")]
    result = triton.infer("sst2", [_texts("text", TEXTS)], outputs=outputs)
    classes = result.as_numpy("probabilities")
    assert classes.shape == (3, 2)
    plain = triton.infer("sst2", [_texts("text", TEXTS)]).as_numpy("probabilities")
    for row, probabilities, label in zip(classes, plain, result.as_numpy("label"), strict=True):
        entries = [item.decode().split(":") for item in row]
        assert entries[0][2] == label.decode()  # the best class first
        assert [int(index) for _, index, _ in entries] == \
            list(np.argsort(-probabilities, kind="stable"))
        assert [float(score) for score, _, _ in entries] == \
            pytest.approx(sorted(probabilities, reverse=True), abs=1e-6)


def test_class_count_over_the_labels_is_a_clear_400(
        triton: httpclient.InferenceServerClient) -> None:
    outputs = [httpclient.InferRequestedOutput("logits", class_count=3)]
    with pytest.raises(InferenceServerException) as raised:
        triton.infer("sst2", [_texts("text", TEXTS)], outputs=outputs)
    assert raised.value.status() == "400"
    assert "1 to the model's 2 labels" in raised.value.message()


def _version_stats(triton: httpclient.InferenceServerClient) -> dict[str, Any]:
    stats: dict[str, Any] = triton.get_inference_statistics("sst2", "1")["model_stats"][0]
    return stats


def test_statistics_agree_with_the_prometheus_counters(
        triton: httpclient.InferenceServerClient, client: httpx.Client) -> None:
    def prometheus() -> dict[str, float]:
        text = client.get("/metrics").text
        return {
            "success": sample_value(text, "ffs_requests_total",
                                    {"task": "sst2", "version": "1", "status": "200"}),
            "latency": sample_value(text, "ffs_request_latency_seconds_sum",
                                    {"task": "sst2", "version": "1"}),
            "batches": sample_value(text, "ffs_batch_size_count", {"pool": "cpu"}),
            "rows": sample_value(text, "ffs_batch_size_sum", {"pool": "cpu"}),
            "queue": sample_value(text, "ffs_queue_wait_seconds_sum", {"pool": "cpu"}),
            "infer": sample_value(text, "ffs_inference_seconds_sum", {"pool": "cpu"})}

    def ours(stats: dict[str, Any]) -> dict[str, float]:
        inference = stats["inference_stats"]
        return {"success": inference["success"]["count"],
                "latency": inference["success"]["ns"] / 1e9,
                "batches": stats["execution_count"], "rows": stats["inference_count"],
                "queue": inference["queue"]["ns"] / 1e9,
                "infer": sum(b[part]["ns"] for b in stats["batch_stats"]
                             for part in ("compute_input", "compute_infer",
                                          "compute_output")) / 1e9}

    before, stats_before = prometheus(), ours(_version_stats(triton))
    for text in TEXTS:
        triton.infer("sst2", [_texts("text", [text, text + " again"])])
    after, stats_after = prometheus(), ours(_version_stats(triton))
    for name in before:
        assert stats_after[name] - stats_before[name] == \
            pytest.approx(after[name] - before[name], abs=1e-5), name
    assert stats_after["success"] - stats_before["success"] == len(TEXTS)
    parts = _version_stats(triton)["inference_stats"]
    assert parts["compute_input"]["ns"] > 0 and parts["compute_infer"]["ns"] > 0  # the worker
    assert parts["compute_infer"]["ns"] > parts["compute_output"]["ns"]  # tokenizes: timed
    assert stats_after["rows"] - stats_before["rows"] == 2 * len(TEXTS)


def test_statistics_of_an_unknown_model_is_an_error(
        triton: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as raised:
        triton.get_inference_statistics("nope")
    assert raised.value.status() == "404"


def test_statistics_list_every_serving_version(triton: httpclient.InferenceServerClient) -> None:
    names = {(s["name"], s["version"]) for s in triton.get_inference_statistics()["model_stats"]}
    assert {("sst2", "1"), ("rte", "1")} <= names
