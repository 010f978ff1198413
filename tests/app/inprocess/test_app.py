"""The app in-process against a fake worker pool (tests/fakes.py): routes, batching, refusals and
retries in milliseconds. The same behaviours are tested through real processes elsewhere."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.api.app import _fastapi_app, create_app
from app.core.inference import estimated_length
from app.core.service import prepare_service, start_service, stop_service
from app.runtime import frames
from app.runtime.workers import WorkerCrashed
from app.settings import load_settings
from tests.fakes import FakePool, app_client, fake_logits, fake_pools

LABELS = ["negative", "positive"]


def _expected_label(text: str) -> str:
    return LABELS[int(np.argmax(fake_logits(text)))]


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_v1_answers_with_the_models_label(fast_repo: Path) -> None:
    async def scenario() -> httpx.Response:
        async with app_client(fast_repo) as (client, _, _):
            return await client.post("/v1/classify/sst2",
                                     json={"inputs": ["a fine film", "dull"]})

    response = _run(scenario())
    assert response.status_code == 200
    assert [r["label"] for r in response.json()["results"]] == \
        [_expected_label("a fine film"), _expected_label("dull")]


def test_v2_answers_through_the_same_handler(fast_repo: Path) -> None:
    async def scenario() -> httpx.Response:
        async with app_client(fast_repo) as (client, _, _):
            return await client.post("/v2/models/sst2/infer", json={"inputs": [
                {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a fine film"]}]})

    response = _run(scenario())
    assert response.status_code == 200
    label = next(o for o in response.json()["outputs"] if o["name"] == "label")
    assert label["data"] == [_expected_label("a fine film")]


def test_concurrent_requests_share_a_batch_of_texts(fast_repo: Path) -> None:
    async def scenario() -> FakePool:
        async with app_client(fast_repo, delay=0.05,
                              cpu_pool={"workers": 1}) as (client, pool, _):
            texts = [f"film number {i}" for i in range(6)]
            await asyncio.gather(*(client.post("/v1/classify/sst2", json={"inputs": [t]})
                                   for t in texts))
            return pool

    pool = _run(scenario())
    assert max(len(batch) for batch in pool.batches) > 1  # texts cross; the worker tokenizes


def test_tokenizing_in_the_api_sends_padded_feeds(fast_repo: Path) -> None:
    async def scenario() -> FakePool:
        async with app_client(fast_repo, tokenize="api") as (client, pool, _):
            await client.post("/v1/classify/sst2", json={"inputs": ["a fine film"]})
            return pool

    batch = _run(scenario()).batches[0]
    assert isinstance(batch, dict) and batch["input_ids"].shape[0] == 1


def test_a_full_queue_is_refused_before_the_body_is_read(fast_repo: Path) -> None:
    async def scenario() -> list[int]:
        async with app_client(fast_repo, delay=0.2, cpu_pool={"workers": 1},
                              batching={"max_queue_rows": 1}) as (client, _, _):
            first = asyncio.ensure_future(client.post("/v1/classify/sst2",
                                                      json={"inputs": ["one"]}))
            await asyncio.sleep(0.03)  # its row runs on the only worker
            second = asyncio.ensure_future(client.post("/v1/classify/sst2",
                                                       json={"inputs": ["two"]}))
            await asyncio.sleep(0.03)  # its row waits: the queue (1 row) is full
            refused = await client.post("/v1/classify/sst2", content=b"not even json",
                                        headers={"content-type": "application/json"})
            return [refused.status_code, (await first).status_code, (await second).status_code]

    assert _run(scenario()) == [429, 200, 200]


def test_the_deadline_answers_504_while_the_batch_still_runs(fast_repo: Path) -> None:
    async def scenario() -> httpx.Response:
        async with app_client(fast_repo, delay=1.0) as (client, _, _):
            return await client.post("/v1/classify/sst2", json={"inputs": ["slow"]},
                                     headers={"X-Request-Timeout-Ms": "50"})

    response = _run(scenario())
    assert response.status_code == 504


def test_a_batch_whose_worker_died_is_retried_once(fast_repo: Path) -> None:
    async def scenario() -> tuple[int, int]:
        async with app_client(fast_repo) as (client, pool, _):
            pool.fail_next = WorkerCrashed("worker 0 died")
            response = await client.post("/v1/classify/sst2", json={"inputs": ["again"]})
            return response.status_code, len(pool.batches)

    assert _run(scenario()) == (200, 2)


def test_the_fastapi_route_answers_like_the_hot_route(fast_repo: Path) -> None:
    """The classify operations of the OpenAPI document reach the same handler when the FastAPI
    app is served on its own (without the hot router in front)."""
    async def scenario() -> list[Any]:
        service = prepare_service(load_settings(model_repository=fast_repo))
        _, make = fake_pools()
        await start_service(service, make)
        try:
            answers = []
            for app in (create_app(service), _fastapi_app(service)):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                    response = await client.post("/v1/classify/sst2",
                                                 json={"inputs": ["a fine film"]})
                    answers.append((response.status_code, response.json()))
            return answers
        finally:
            await stop_service(service)

    hot, plain = _run(scenario())
    assert hot == plain and hot[0] == 200


def test_classify_without_the_api_key_is_401(fast_repo: Path) -> None:
    async def scenario() -> list[int]:
        async with app_client(fast_repo, auth={"api_keys": ["k1"]}) as (client, _, _):
            denied = await client.post("/v1/classify/sst2", json={"inputs": ["x"]})
            allowed = await client.post("/v1/classify/sst2", json={"inputs": ["x"]},
                                        headers={"Authorization": "Bearer k1"})
            return [denied.status_code, allowed.status_code]

    assert _run(scenario()) == [401, 200]


def test_every_answer_carries_a_request_id(fast_repo: Path) -> None:
    async def scenario() -> list[str | None]:
        async with app_client(fast_repo) as (client, _, _):
            given = await client.post("/v1/classify/sst2", json={"inputs": ["x"]},
                                      headers={"X-Request-Id": "abc-1"})
            fresh = await client.post("/v1/classify/sst2", json={"inputs": ["x"]})
            return [given.headers.get("x-request-id"), fresh.headers.get("x-request-id")]

    given, fresh = _run(scenario())
    assert given == "abc-1" and fresh and len(fresh) == 32


# -- frames ------------------------------------------------------------------------------------

def test_a_batch_frame_carries_the_feeds_unchanged() -> None:
    feeds = [np.arange(6, dtype=np.int64).reshape(2, 3), np.ones((2, 3), np.int64)]
    body = memoryview(frames.batch_frame(3, feeds))[frames.LENGTH.size:]
    work = frames.parse_work(body)
    assert isinstance(work, frames.Batch) and work.slot == 3
    assert all(np.array_equal(a, b) for a, b in zip(work.feeds, feeds, strict=True))


@pytest.mark.parametrize("texts", [["a", "ünïcode ✓", ""], [("premise", "hypothesis")] * 2])
def test_a_texts_frame_carries_single_texts_and_pairs(texts: list[Any]) -> None:
    body = memoryview(frames.texts_frame(1, texts))[frames.LENGTH.size:]
    work = frames.parse_work(body)
    assert isinstance(work, frames.Texts) and work.texts == texts and work.slot == 1


def test_a_logits_frame_carries_logits_scores_and_truncation() -> None:
    logits = np.array([[0.5, -1.0], [2.0, 0.0]], np.float32)
    scores = np.array([[0.8, 0.2], [0.9, 0.1]])
    frame = frames.logits_frame(logits, scores, 0.25, np.array([False, True]), 0.05, 0.15)
    reply = frames.parse_reply(frame[frames.LENGTH.size:])
    assert isinstance(reply, frames.Logits)
    assert np.array_equal(reply.logits, logits) and np.array_equal(reply.scores, scores)
    assert reply.truncated.tolist() == [False, True] and reply.seconds == 0.25
    assert (reply.input_seconds, reply.infer_seconds) == (0.05, 0.15)


def test_a_frame_buffer_yields_frames_split_anywhere() -> None:
    stream = frames.message_frame(frames.ERROR, "one") + frames.message_frame(frames.ERROR, "two")
    buffer = frames.FrameBuffer()
    bodies = [body for byte in stream for body in buffer.feed(bytes([byte]))]
    assert [frames.parse_reply(b) for b in bodies] == [frames.Failure(frames.ERROR, "one"),
                                                        frames.Failure(frames.ERROR, "two")]


def test_the_length_estimate_counts_words_punctuation_and_special_tokens() -> None:
    assert estimated_length("a fine, film.", 64) == 5 + 2
    assert estimated_length(("a b", "c"), 64) == 3 + 3
    assert estimated_length("word " * 500, 64) == 64


def test_a_refused_request_leaves_no_latency_series(fast_repo: Path) -> None:
    async def scenario() -> str:
        async with app_client(fast_repo) as (client, _, _):
            await client.post("/v1/classify/nonesuch", json={"inputs": ["fine"]})
            await client.post("/v1/classify/sst2", json={"inputs": ["a fine film"]})
            return (await client.get("/metrics")).text

    text = _run(scenario())
    assert 'ffs_requests_total{status="404",task="_unknown",version=""} 1.0' in text
    latency = [line for line in text.splitlines()
               if line.startswith("ffs_request_latency_seconds_count")]
    assert latency == ['ffs_request_latency_seconds_count{task="sst2",version="1"} 1.0']
