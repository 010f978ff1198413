"""Hugging Face's clients and TEI-shaped requests against the live server: the same answers as
/v1, in their shapes and with their statuses."""

from __future__ import annotations

import httpx
import huggingface_hub.constants
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from tests.conftest import RunningServer

TEXTS = ["the film was very good", "a really awful script"]


@pytest.fixture(autouse=True)
def _loopback_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite runs with HF_HUB_OFFLINE=1 (no hub), under which huggingface_hub refuses every
    URL, this loopback server's too; these tests reach only that server."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "is_offline_mode", lambda: False)


def _v1_scores(client: httpx.Client, text: str) -> dict[str, float]:
    body = {"inputs": [text], "return_all_scores": True}
    scores: dict[str, float] = client.post("/v1/classify/sst2", json=body).json()["results"][0][
        "scores"]
    return scores


def test_inference_client_text_classification_returns_the_models_scores(
        server: RunningServer, client: httpx.Client) -> None:
    hf = InferenceClient(model=f"{server.url}/models/sst2", timeout=30)
    answer = hf.text_classification(TEXTS[0], top_k=2)
    expected = _v1_scores(client, TEXTS[0])
    assert len(answer) == 2 and answer[0].score >= answer[1].score
    assert {item.label: item.score for item in answer} == pytest.approx(expected, abs=1e-6)


def test_inference_client_top_k_1_returns_the_v1_label(server: RunningServer,
                                                       client: httpx.Client) -> None:
    hf = InferenceClient(model=f"{server.url}/models/sst2", timeout=30)
    for text in TEXTS:
        [best] = hf.text_classification(text, top_k=1)
        v1 = client.post("/v1/classify/sst2", json={"inputs": [text]}).json()["results"][0]
        assert (best.label, best.score) == (v1["label"], pytest.approx(v1["score"], abs=1e-6))


def test_inference_client_sees_an_unknown_model_as_a_404(server: RunningServer) -> None:
    hf = InferenceClient(model=f"{server.url}/models/nope", timeout=30)
    with pytest.raises(HfHubHTTPError) as raised:
        hf.text_classification("a film")
    assert raised.value.response.status_code == 404


def test_tei_predict_batch_matches_v1(client: httpx.Client) -> None:
    answer = client.post("/predict", json={"inputs": [[t] for t in TEXTS]}).json()
    for text, predictions in zip(TEXTS, answer, strict=True):
        assert {p["label"]: p["score"] for p in predictions} == \
            pytest.approx(_v1_scores(client, text), abs=1e-6)


def test_tei_predict_over_the_client_batch_size_is_413(client: httpx.Client) -> None:
    response = client.post("/predict", json={"inputs": [["a film"]] * 17})  # the limit is 16
    assert response.status_code == 413 and response.json()["error_type"] == "validation"


def test_tei_predict_truncate_false_refuses_a_text_over_max_length(client: httpx.Client) -> None:
    text = " ".join(["film"] * 400)
    refused = client.post("/predict", json={"inputs": text, "truncate": False})
    assert refused.status_code == 413 and refused.json()["error_type"] == "validation"
    assert client.post("/predict", json={"inputs": text, "truncate": True}).status_code == 200


def test_tei_info_names_the_default_model(client: httpx.Client) -> None:
    info = client.get("/info").json()
    assert info["model_id"] == "sst2" and info["max_client_batch_size"] == 16
    assert set(info["model_type"]["classifier"]["label2id"]) == {"negative", "positive"}
