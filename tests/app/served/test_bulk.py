"""The bulk lane through the real server: newline-delimited JSON streamed both ways (aiohttp, as
a client reading while it sends), answers equal to /v1's, and a resume after a dropped
connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import orjson

from tests.conftest import RunningServer
from tests.metrics_text import sample

TEXTS = [f"the {word} film number {i}" for i, word in
         enumerate(["good", "dull", "lovely", "awful", "fine", "long"] * 50)]


async def _body(texts: list[str]) -> AsyncIterator[bytes]:
    for start in range(0, len(texts), 25):
        yield b"".join(orjson.dumps(t) + b"\n" for t in texts[start : start + 25])
        await asyncio.sleep(0)


async def _bulk(url: str, texts: list[str], start: int = 0, keep: int | None = None) \
        -> list[dict[str, Any]]:
    """The answer lines of a bulk request; with `keep`, the connection is dropped after that
    many lines."""
    lines: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session, \
            session.post(f"{url}/v1/classify/sst2/bulk?start={start}", data=_body(texts),
                         headers={"content-type": "application/x-ndjson"}) as response:
        assert response.status == 200
        async for raw in response.content:
            lines.append(orjson.loads(raw))
            if keep is not None and len(lines) == keep:
                break  # leaving the block drops the connection mid-job
    return lines


def _v1(client: httpx.Client, texts: list[str]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for start in range(0, len(texts), 16):
        body = {"inputs": texts[start : start + 16]}
        results += client.post("/v1/classify/sst2", json=body).json()["results"]
    return results


def test_bulk_output_equals_v1_for_every_line(server: RunningServer,
                                              client: httpx.Client) -> None:
    before = sample(client, "ffs_bulk_lines_total", task="sst2", outcome="answered")
    lines = asyncio.run(_bulk(server.url, TEXTS))
    assert sample(client, "ffs_bulk_lines_total", task="sst2", outcome="answered") == \
        before + len(TEXTS)
    assert [line.pop("line") for line in lines] == list(range(len(TEXTS)))
    assert {line.pop("version") for line in lines} == {"1"}
    assert lines == _v1(client, TEXTS)


def test_bulk_resumes_after_a_dropped_connection(server: RunningServer,
                                                 client: httpx.Client) -> None:
    first = asyncio.run(_bulk(server.url, TEXTS, keep=40))
    resumed = asyncio.run(_bulk(server.url, TEXTS, start=first[-1]["line"] + 1))
    numbers = [line["line"] for line in first + resumed]
    assert numbers == list(range(len(TEXTS)))
    labels = [line["label"] for line in first + resumed]
    assert labels == [result["label"] for result in _v1(client, TEXTS)]
    assert client.get("/readyz").status_code == 200  # the dropped job left nothing broken
