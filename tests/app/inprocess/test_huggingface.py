"""Hugging Face's doors in-process (fake pool, tests/fakes.py): TEI's routes with requests shaped
as its published OpenAPI document describes them (PredictRequest, PredictResponse, Info,
ErrorResponse), and the Inference API's text-classification task shape."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.runtime.workers import WorkerError
from contract.encoding import softmax
from tests.conftest import TinyRepo
from tests.fakes import app_client, fake_logits

LABELS = ["negative", "positive"]
LONG = " ".join(["word"] * 200)  # over the fast repository's 64 tokens


def _call(repo: Path, method: str, path: str, body: Any = None, **settings: Any) \
        -> httpx.Response:
    async def scenario() -> httpx.Response:
        async with app_client(repo, **settings) as (client, _, _):
            return await client.request(method, path, json=body)

    return asyncio.run(scenario())


def _expected(text: str) -> list[dict[str, Any]]:
    """The fake model's scores for `text`, as TEI lists them: every label, best first."""
    scores = softmax(np.array([fake_logits(text)], dtype=np.float32))[0]
    order = np.argsort(-scores, kind="stable")
    return [{"label": LABELS[i], "score": float(scores[i])} for i in order]


def _close(answer: list[dict[str, Any]], expected: list[dict[str, Any]]) -> bool:
    return [p["label"] for p in answer] == [p["label"] for p in expected] and \
        np.allclose([p["score"] for p in answer], [p["score"] for p in expected], atol=1e-6)


def test_tei_predict_answers_one_text_with_every_label_best_first(fast_repo: Path) -> None:
    text = "a fine film with a few flaws"
    response = _call(fast_repo, "POST", "/predict", {"inputs": text})
    assert response.status_code == 200
    assert _close(response.json(), _expected(text))


def test_tei_root_route_is_predict_for_a_classifier(fast_repo: Path) -> None:
    text = "dull"
    response = _call(fast_repo, "POST", "/", {"inputs": text})
    assert response.status_code == 200 and _close(response.json(), _expected(text))


def test_tei_batch_is_answered_with_a_list_per_input(fast_repo: Path) -> None:
    texts = ["a fine film", "dull and long", "ok"]
    response = _call(fast_repo, "POST", "/predict", {"inputs": [[t] for t in texts]})
    assert response.status_code == 200
    answer = response.json()
    assert len(answer) == 3 and all(_close(a, _expected(t)) for a, t in zip(answer, texts,
                                                                             strict=True))


def test_tei_raw_scores_are_the_logits(fast_repo: Path) -> None:
    text = "a fine film"
    response = _call(fast_repo, "POST", "/predict", {"inputs": text, "raw_scores": True})
    logits = fake_logits(text)
    assert sorted(p["score"] for p in response.json()) == sorted(logits)


def test_tei_pair_for_a_single_text_model_is_422_with_the_reason(fast_repo: Path) -> None:
    response = _call(fast_repo, "POST", "/predict", {"inputs": ["a premise", "a hypothesis"]})
    assert response.status_code == 422
    assert "expects a string" in response.json()["error"]


def test_tei_list_of_three_strings_is_neither_pair_nor_batch(fast_repo: Path) -> None:
    response = _call(fast_repo, "POST", "/predict", {"inputs": ["a", "b", "c"]})
    assert response.status_code == 422 and "list of lists" in response.json()["error"]


def test_tei_too_many_inputs_is_413_validation(fast_repo: Path) -> None:
    response = _call(fast_repo, "POST", "/predict", {"inputs": [["text"]] * 5},
                     limits={"max_inputs_per_request": 4})
    assert response.status_code == 413
    assert response.json()["error_type"] == "validation"


def test_tei_truncate_false_refuses_a_long_input_with_413(fast_repo: Path) -> None:
    response = _call(fast_repo, "POST", "/predict", {"inputs": LONG, "truncate": False},
                     tokenize="api")
    assert response.status_code == 413
    assert response.json()["error_type"] == "validation"
    assert "64 tokens" in response.json()["error"]


def test_tei_truncate_true_cuts_a_long_input_on_a_rejecting_server(fast_repo: Path) -> None:
    response = _call(fast_repo, "POST", "/predict", {"inputs": LONG, "truncate": True},
                     tokenize="api", limits={"truncation": "reject"})
    assert response.status_code == 200 and len(response.json()) == 2


def test_tei_truncate_null_follows_the_server_setting(fast_repo: Path) -> None:
    response = _call(fast_repo, "POST", "/predict", {"inputs": LONG, "truncate": None},
                     tokenize="api", limits={"truncation": "reject"})
    assert response.status_code == 413


def test_tei_left_truncation_is_refused_with_the_reason(fast_repo: Path) -> None:
    response = _call(fast_repo, "POST", "/predict",
                     {"inputs": "a film", "truncation_direction": "left"})
    assert response.status_code == 422 and "right" in response.json()["error"]


def test_tei_empty_batch_is_400(fast_repo: Path) -> None:
    response = _call(fast_repo, "POST", "/predict", {"inputs": []})
    assert response.status_code == 400 and "empty" in response.json()["error"]


def test_tei_body_that_is_not_a_predict_request_is_422(fast_repo: Path) -> None:
    response = _call(fast_repo, "POST", "/predict", {"text": "a film"})
    assert response.status_code == 422
    assert set(response.json()) == {"error", "error_type"}


def test_tei_failed_worker_is_424_backend(fast_repo: Path) -> None:
    async def scenario() -> httpx.Response:
        async with app_client(fast_repo) as (client, pool, _):
            pool.fail_next = WorkerError("the graph failed on this batch")  # not retried
            return await client.post("/predict", json={"inputs": "a film"})

    response = asyncio.run(scenario())
    assert response.status_code == 424
    assert response.json()["error_type"] == "backend"


def test_tei_full_queue_is_429_overloaded(fast_repo: Path) -> None:
    async def scenario() -> list[httpx.Response]:
        async with app_client(fast_repo, delay=0.2, cpu_pool={"workers": 1},
                              batching={"max_queue_rows": 1, "max_batch_size": 1,
                                        "refusal_delay_ms": 0}) as (client, _, _):
            return list(await asyncio.gather(*(client.post("/predict", json={"inputs": f"t{i}"})
                                               for i in range(4))))

    refused = [r for r in asyncio.run(scenario()) if r.status_code == 429]
    assert refused and all(r.json()["error_type"] == "overloaded" for r in refused)
    assert all("Retry-After" in r.headers for r in refused)


def test_tei_info_describes_the_default_model(fast_repo: Path) -> None:
    response = _call(fast_repo, "GET", "/info", limits={"max_inputs_per_request": 8})
    info = response.json()
    required = {"model_id", "model_dtype", "model_type", "max_concurrent_requests",
                "max_input_length", "max_batch_tokens", "max_client_batch_size",
                "auto_truncate", "tokenization_workers", "version"}
    assert required <= set(info)
    assert info["model_id"] == "sst2" and info["model_dtype"] == "int8"
    assert info["model_type"] == {"classifier": {"id2label": {"0": "negative", "1": "positive"},
                                                 "label2id": {"negative": 0, "positive": 1}}}
    assert info["max_input_length"] == 64 and info["max_client_batch_size"] == 8


def test_tei_health_is_200_when_ready(fast_repo: Path) -> None:
    assert _call(fast_repo, "GET", "/health").status_code == 200


def test_tei_routes_need_a_default_model_when_several_are_served(fast_repo: Path,
                                                                 tmp_path: Path) -> None:
    for name in ("alpha", "beta"):
        shutil.copytree(fast_repo / "sst2", tmp_path / name / "1")  # versioned: named by folder
    response = _call(tmp_path, "POST", "/predict", {"inputs": "a film"})
    assert response.status_code == 404
    assert "default_model" in response.json()["error"] and "alpha, beta" in \
        response.json()["error"]
    chosen = _call(tmp_path, "POST", "/predict", {"inputs": "a film"}, default_model="beta")
    assert chosen.status_code == 200


def test_hf_task_answers_a_list_of_lists(fast_repo: Path) -> None:
    text = "a fine film"
    response = _call(fast_repo, "POST", "/models/sst2", {"inputs": text})
    assert response.status_code == 200
    answer = response.json()
    assert len(answer) == 1 and _close(answer[0], _expected(text))


def test_hf_task_top_k_keeps_the_best(fast_repo: Path) -> None:
    text = "a fine film"
    response = _call(fast_repo, "POST", "/models/sst2/pipeline/text-classification",
                     {"inputs": [text, "dull"], "parameters": {"top_k": 1}})
    answer = response.json()
    assert [len(a) for a in answer] == [1, 1]
    assert answer[0][0]["label"] == _expected(text)[0]["label"]


def test_hf_task_function_to_apply_sigmoid_scores_each_label(fast_repo: Path) -> None:
    text = "a fine film"
    response = _call(fast_repo, "POST", "/models/sst2",
                     {"inputs": text, "parameters": {"function_to_apply": "sigmoid"}})
    logits = np.array(fake_logits(text))
    assert np.allclose(sorted(p["score"] for p in response.json()[0]),
                       sorted(1 / (1 + np.exp(-logits))))


def test_hf_task_unknown_model_is_404_in_the_hf_body(fast_repo: Path) -> None:
    response = _call(fast_repo, "POST", "/models/nope", {"inputs": "a film"})
    assert response.status_code == 404 and "nope" in response.json()["error"]


def test_tei_pair_of_a_pair_model_is_answered_as_one_input(tiny_repo: TinyRepo) -> None:
    response = _call(tiny_repo.root, "POST", "/predict",
                     {"inputs": ["a cat sat on the mat", "an animal sat"]}, default_model="rte")
    assert response.status_code == 200
    answer = response.json()
    assert isinstance(answer, list) and all(set(p) == {"label", "score"} for p in answer)
    scores = softmax(np.array([fake_logits(("a cat sat on the mat", "an animal sat"))],
                              dtype=np.float32))[0]
    assert [p["score"] for p in answer] == sorted(map(float, scores), reverse=True)
