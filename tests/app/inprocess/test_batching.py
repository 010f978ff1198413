"""Dynamic-length batching: concurrent requests share batches, padded only to their longest row."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from tokenizers import Tokenizer

from app.core.batching import BatchPolicy, Pending, _Row, select_batch
from contract.encoding import EncodedText
from tests.conftest import RunningServer, TinyRepo
from tests.metrics_text import sample


async def _concurrent(url: str, texts: list[str]) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/classify/sst2", json={"inputs": [t]}) for t in texts))
    return [r.status_code for r in responses]


def test_concurrent_requests_are_grouped_into_batches(server: RunningServer,
                                                      client: httpx.Client) -> None:
    before_rows = sample(client, "ffs_batch_size_sum", pool="cpu")
    before_batches = sample(client, "ffs_batch_size_count", pool="cpu")
    statuses = asyncio.run(_concurrent(server.url, ["the film was very good"] * 24))
    assert statuses == [200] * 24
    rows = sample(client, "ffs_batch_size_sum", pool="cpu") - before_rows
    batches = sample(client, "ffs_batch_size_count", pool="cpu") - before_batches
    assert rows == 24
    assert batches < rows  # at least one batch carried more than one request


def test_batches_are_padded_to_their_longest_row_not_max_length(
        server: RunningServer, client: httpx.Client, tiny_repo: TinyRepo) -> None:
    texts = ["good", "the film was good", "the plot was dull and the music was awful",
             "a lovely cast"] * 6
    tokenizer = Tokenizer.from_file(str(tiny_repo.root / "sst2" / "tokenizer.json"))
    longest = max(len(tokenizer.encode(t).ids) for t in texts)
    assert longest <= 16 < 64  # the model's max_length is 64
    before_count = sample(client, "ffs_batch_padded_length_count", pool="cpu")
    before_small = sample(client, "ffs_batch_padded_length_bucket", pool="cpu", le="16.0")
    assert asyncio.run(_concurrent(server.url, texts)) == [200] * len(texts)
    batches = sample(client, "ffs_batch_padded_length_count", pool="cpu") - before_count
    small = sample(client, "ffs_batch_padded_length_bucket", pool="cpu", le="16.0") - before_small
    assert batches > 0
    assert small == batches  # every batch padded to <= 16 tokens, none to 64


# select_batch on its own: which rows go together.

def _rows(spec: list[tuple[str, int]]) -> list[_Row]:
    loop = asyncio.new_event_loop()
    rows = []
    for i, (task, length) in enumerate(spec):
        encoded = EncodedText(np.ones(length, np.int64), np.zeros(length, np.int64), False)
        rows.append(_Row(task, encoded, Pending(loop.create_future(), 1), 0, float(i)))
    loop.close()
    return rows


def _policy(**overrides: float) -> BatchPolicy:
    values: dict[str, float] = {"max_batch_size": 32, "max_batch_tokens": 8192, "max_wait_ms": 0,
                                "max_queue_rows": 100, "min_fill": 0.0, **overrides}
    return BatchPolicy(**values)  # type: ignore[arg-type]


def test_a_batch_holds_only_rows_of_the_oldest_rows_version() -> None:
    rows = _rows([("a", 5), ("b", 5), ("a", 5), ("b", 5)])
    assert [r.key for r in select_batch(rows, _policy())] == ["a", "a"]


def test_a_batch_never_exceeds_max_batch_size() -> None:
    rows = _rows([("a", 5)] * 10)
    assert len(select_batch(rows, _policy(max_batch_size=4))) == 4


def test_a_batch_stays_within_the_token_budget() -> None:
    rows = _rows([("a", 10)] * 10)
    batch = select_batch(rows, _policy(max_batch_tokens=35))
    assert len(batch) == 3


def test_rows_nearest_in_length_to_the_oldest_are_chosen_first() -> None:
    rows = _rows([("a", 10), ("a", 40), ("a", 11), ("a", 9), ("a", 30)])
    batch = select_batch(rows, _policy(max_batch_size=3))
    assert sorted(r.encoded.length for r in batch) == [9, 10, 11]


def test_rows_that_would_mostly_add_padding_wait_for_their_own_batch() -> None:
    rows = _rows([("a", 10), ("a", 11), ("a", 40)])
    batch = select_batch(rows, _policy(min_fill=0.9))
    assert sorted(r.encoded.length for r in batch) == [10, 11]


def test_the_oldest_row_always_goes_even_if_it_alone_is_long() -> None:
    rows = _rows([("a", 60), ("a", 5)])
    assert [r.encoded.length for r in select_batch(rows, _policy(max_batch_tokens=50))] == [60]


@pytest.mark.parametrize(("share", "size"), [(1, 8), (2, 4), (3, 3), (8, 1)])
def test_waiting_rows_are_shared_with_idle_workers(share: int, size: int) -> None:
    rows = _rows([("a", 5)] * 8)
    assert len(select_batch(rows, _policy(), share=share)) == size
