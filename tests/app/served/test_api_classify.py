"""POST /v1/classify/{name} and the read-only endpoints, through the real server."""

from __future__ import annotations

import httpx
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from contract.artifact import read_manifest
from tests.conftest import TinyRepo

SENTENCES = ["the film was very good", "a really awful script", "the music is superb and moving",
             "dull and tedious plot", "the cast was lovely"]


def _in_process(tiny_repo: TinyRepo, task: str, text: str | tuple[str, str]) -> np.ndarray:
    """Softmax scores from ORT run here on the artifact's INT8 model, tokenized independently."""
    folder = tiny_repo.root / task
    manifest = read_manifest(folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    encoding = tokenizer.encode(text) if isinstance(text, str) else tokenizer.encode(*text)
    feeds = {"input_ids": np.array([encoding.ids], dtype=np.int64),
             "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
             "token_type_ids": np.array([encoding.type_ids], dtype=np.int64)}
    session = ort.InferenceSession(str(folder / manifest.variants["cpu-int8"].file))
    logits = session.run(None, feeds)[0][0].astype(np.float64)
    exp = np.exp(logits - logits.max())
    result: np.ndarray = exp / exp.sum()
    return result


def test_classify_single_texts_returns_a_label_and_score_each(client: httpx.Client) -> None:
    response = client.post("/v1/classify/sst2", json={"inputs": SENTENCES[:2]})
    assert response.status_code == 200
    body = response.json()
    assert body["task"] == "sst2"
    assert body["variant"] == "cpu-int8"
    assert [r["label"] for r in body["results"]] == ["positive", "negative"]
    assert all(0.5 <= r["score"] <= 1.0 for r in body["results"])
    assert all("scores" not in r for r in body["results"])


def test_classify_pairs_for_a_pair_task(client: httpx.Client) -> None:
    pairs = [["the film was good", "it was good"], ["the plot was dull", "it was superb"]]
    response = client.post("/v1/classify/rte", json={"inputs": pairs})
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 2
    assert {r["label"] for r in results} <= {"entailment", "not_entailment"}


def test_all_scores_are_returned_on_request_and_sum_to_one(client: httpx.Client) -> None:
    response = client.post("/v1/classify/sst2",
                           json={"inputs": ["a great film"], "return_all_scores": True})
    scores = response.json()["results"][0]["scores"]
    assert set(scores) == {"negative", "positive"}
    assert abs(sum(scores.values()) - 1.0) < 1e-6


def test_labels_and_scores_match_in_process_onnx_runtime(client: httpx.Client,
                                                         tiny_repo: TinyRepo) -> None:
    labels = read_manifest(tiny_repo.root / "sst2").labels
    for text in SENTENCES:  # one at a time: each runs as a batch of one, like the reference
        result = client.post("/v1/classify/sst2", json={"inputs": [text]}).json()["results"][0]
        expected = _in_process(tiny_repo, "sst2", text)
        assert result["label"] == labels[int(expected.argmax())]
        assert abs(result["score"] - float(expected.max())) < 1e-5


def test_pair_labels_match_in_process_onnx_runtime(client: httpx.Client,
                                                   tiny_repo: TinyRepo) -> None:
    labels = read_manifest(tiny_repo.root / "rte").labels
    pair = ("the acting was brilliant and fun", "it was fun")
    result = client.post("/v1/classify/rte", json={"inputs": [list(pair)]}).json()["results"][0]
    expected = _in_process(tiny_repo, "rte", pair)
    assert result["label"] == labels[int(expected.argmax())]
    assert abs(result["score"] - float(expected.max())) < 1e-5


def test_long_inputs_are_truncated_and_flagged(client: httpx.Client) -> None:
    long_text = " ".join(["the film was good"] * 40)  # ~160 tokens, max_length is 64
    result = client.post("/v1/classify/sst2", json={"inputs": [long_text, "good"]}).json()
    assert [r["truncated"] for r in result["results"]] == [True, False]


def test_models_lists_every_task_with_its_route(client: httpx.Client) -> None:
    models = {m["task"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(models) == {"sst2", "rte"}
    assert models["rte"]["input_kind"] == "pair"
    assert models["sst2"]["pool"] == "cpu"
    assert models["sst2"]["fallback_reason"] is None
    assert models["sst2"]["architecture"]["layers"] == 2
    assert len(models["sst2"]["sha256"]) == 64


def test_health_and_readiness_report_ok(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def test_metrics_count_requests_by_task_and_status(client: httpx.Client) -> None:
    client.post("/v1/classify/sst2", json={"inputs": ["good"]})
    text = client.get("/metrics").text
    assert 'ffs_requests_total{status="200",task="sst2",version="1"}' in text
    assert "ffs_request_latency_seconds_bucket" in text
    assert "ffs_queue_wait_seconds_bucket" in text
