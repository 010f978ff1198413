"""Priority levels and the bulk lane: which rows a batch takes, the queue limit of each level,
and POST /v1/classify/{name}/bulk in-process (fake pool, tests/fakes.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from app.core.batching import Batcher, BatchPolicy, Pending, QueueFull, _Row, select_batch
from contract.encoding import EncodedText
from tests.fakes import FakePool, app_client

LEVELS = {"levels": 2, "promote_after_s": 2.0, "lowest_max_batch_size": 2}


def _rows(spec: list[tuple[int, float]], key: str = "m:1") -> list[_Row]:
    """Rows of `key` in arrival order, each (priority level, seconds it has waited)."""
    loop = asyncio.new_event_loop()
    now = time.perf_counter()
    rows = []
    for level, waited in spec:
        encoded = EncodedText(np.ones(5, np.int64), np.zeros(5, np.int64), False)
        rows.append(_Row(key, encoded, Pending(loop.create_future(), 1), 0, now - waited,
                         level=level))
    loop.close()
    return rows


def _policy(**overrides: Any) -> BatchPolicy:
    values: dict[str, Any] = {"max_batch_size": 32, "max_batch_tokens": 8192, "max_wait_ms": 0,
                              "max_queue_rows": 100, "min_fill": 0.0, **LEVELS, **overrides}
    return BatchPolicy(**values)


def test_a_batch_starts_with_the_highest_level_waiting_not_the_oldest_row() -> None:
    rows = _rows([(2, 0.5), (2, 0.4), (1, 0.1), (1, 0.0)])
    assert [r.level for r in select_batch(rows, _policy())] == [1, 1]


def test_the_lowest_level_never_joins_a_higher_levels_batch() -> None:
    rows = _rows([(1, 0.2), (2, 0.3), (1, 0.1)])
    assert [r.level for r in select_batch(rows, _policy())] == [1, 1]


def test_the_lowest_level_runs_alone_in_small_batches() -> None:
    rows = _rows([(2, 0.3)] * 6)
    assert len(select_batch(rows, _policy())) == 2  # lowest_max_batch_size


def test_a_row_that_waited_past_the_bound_goes_before_the_higher_level() -> None:
    rows = _rows([(2, 2.5), (1, 0.0)])  # arrival order
    assert select_batch(rows, _policy())[0].level == 2
    assert select_batch(_rows([(2, 1.5), (1, 0.0)]), _policy())[0].level == 1


def test_one_level_keeps_the_oldest_first_order() -> None:
    rows = _rows([(1, 0.3), (1, 0.1)])
    chosen = select_batch(rows, _policy(levels=1))
    assert chosen[0] is rows[0] and len(chosen) == 2


def test_each_level_has_its_own_queue_limit() -> None:
    async def scenario() -> tuple[bool, bool]:
        batcher = Batcher(FakePool("cpu"), _policy(level_queue_rows=(8, 2)), lambda key: None)
        batcher.submit("m:1", _rows([(2, 0.0)] * 2), level=2)
        try:
            batcher.submit("m:1", _rows([(2, 0.0)]), level=2)
            refused_bulk = False
        except QueueFull as exc:
            refused_bulk = "priority 2" in str(exc)
        return refused_bulk, batcher.full(1, level=1)

    refused_bulk, interactive_full = asyncio.run(scenario())
    assert refused_bulk and not interactive_full


def _call(repo: Path, path: str, content: bytes, **settings: Any) -> httpx.Response:
    async def scenario() -> httpx.Response:
        async with app_client(repo, **settings) as (client, _, _):
            return await client.post(path, content=content,
                                     headers={"content-type": "application/x-ndjson"})

    return asyncio.run(scenario())


def _ndjson(items: list[Any]) -> bytes:
    return b"".join(orjson.dumps(item) + b"\n" for item in items)


TEXTS = [f"film number {i} was {'good' if i % 3 else 'dull'}" for i in range(40)]


def test_bulk_answers_every_line_in_order_as_v1_would(fast_repo: Path) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with app_client(fast_repo, priorities={"bulk_window_rows": 6}) as (client, _, _):
            bulk = await client.post("/v1/classify/sst2/bulk", content=_ndjson(TEXTS))
            v1 = await client.post("/v1/classify/sst2", json={"inputs": TEXTS[:20]})
            v1_rest = await client.post("/v1/classify/sst2", json={"inputs": TEXTS[20:]})
        lines = [orjson.loads(line) for line in bulk.text.splitlines()]
        return lines, v1.json()["results"] + v1_rest.json()["results"]

    lines, v1 = asyncio.run(scenario())
    assert [line.pop("line") for line in lines] == list(range(len(TEXTS)))
    assert all(line.pop("version") == "1" for line in lines)
    assert lines == v1


def test_bulk_answers_a_bad_line_with_an_error_line_and_goes_on(fast_repo: Path) -> None:
    body = _ndjson(["a fine film", ""]) + b"not json\n" + _ndjson([["a", "pair"], "dull"])
    lines = [orjson.loads(x) for x in _call(fast_repo, "/v1/classify/sst2/bulk", body)
             .text.splitlines()]
    assert [("error" in line) for line in lines] == [False, True, True, True, False]
    assert [line["line"] for line in lines] == [0, 1, 2, 3, 4]


def test_bulk_resumes_at_the_line_asked_for(fast_repo: Path) -> None:
    response = _call(fast_repo, "/v1/classify/sst2/bulk?start=37", _ndjson(TEXTS))
    assert [orjson.loads(x)["line"] for x in response.text.splitlines()] == [37, 38, 39]


def test_bulk_for_an_unknown_model_is_refused_before_streaming(fast_repo: Path) -> None:
    response = _call(fast_repo, "/v1/classify/nope/bulk", _ndjson(TEXTS))
    assert response.status_code == 404 and "nope" in response.json()["error"]["message"]


def test_bulk_rows_run_at_the_lowest_level(fast_repo: Path) -> None:
    async def scenario() -> FakePool:
        async with app_client(fast_repo, priorities={"bulk_window_rows": 4}) as (client, pool, _):
            await client.post("/v1/classify/sst2/bulk", content=_ndjson(TEXTS[:8]))
            return pool

    pool = asyncio.run(scenario())
    assert max(len(batch) for batch in pool.batches) <= 2  # lowest_max_batch_size


def test_bulk_keeps_one_worker_free_for_higher_levels(fast_repo: Path) -> None:
    async def scenario() -> tuple[int, int]:
        async with app_client(fast_repo, delay=0.02, cpu_pool={"workers": 2},
                              priorities={"bulk_window_rows": 16}) as (client, pool, _):
            await client.post("/v1/classify/sst2/bulk", content=_ndjson(TEXTS[:24]))
            bulk_most = pool.most_running
            await asyncio.gather(*(client.post("/v1/classify/sst2", json={"inputs": [t]})
                                   for t in TEXTS[:8]))
            return bulk_most, pool.most_running

    bulk_most, interactive_most = asyncio.run(scenario())
    assert bulk_most == 1  # lowest_max_workers: all but one of the 2 workers
    assert interactive_most == 2  # interactive rows take both


def test_v1_takes_a_priority_header_and_refuses_one_out_of_range(fast_repo: Path) -> None:
    async def scenario() -> tuple[int, int]:
        async with app_client(fast_repo) as (client, _, _):
            ok = await client.post("/v1/classify/sst2", json={"inputs": ["a film"]},
                                   headers={"X-Priority": "2"})
            bad = await client.post("/v1/classify/sst2", json={"inputs": ["a film"]},
                                    headers={"X-Priority": "3"})
            return ok.status_code, bad.status_code

    assert asyncio.run(scenario()) == (200, 400)


def test_v2_takes_the_priority_parameter(fast_repo: Path) -> None:
    async def scenario() -> tuple[int, int]:
        async with app_client(fast_repo) as (client, _, _):
            def body(priority: object) -> dict[str, Any]:
                return {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                    "data": ["a film"]}], "parameters": {"priority": priority}}

            ok = await client.post("/v2/models/sst2/infer", json=body(1))
            bad = await client.post("/v2/models/sst2/infer", json=body("high"))
            return ok.status_code, bad.status_code

    assert asyncio.run(scenario()) == (200, 400)
