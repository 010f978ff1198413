"""A worker pool with no processes, and the app served in-process over it (`app_client`): the
in-process tests (tests/app/inprocess) test the app and the batcher against it.

Its "model" is a fixed function of the text (or of the token ids), so a test knows every answer:
logits = [number of characters % 7, number of words] per text.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.api.app import create_app
from app.core.service import Pool, Service, prepare_service, start_service, stop_service
from app.runtime.frames import Logits
from app.runtime.workers import WorkerCrashed, WorkerSpec
from app.settings import load_settings
from contract.encoding import TextInput, softmax


def fake_logits(text: TextInput) -> list[float]:
    joined = text if isinstance(text, str) else " ".join(text)
    return [float(len(joined) % 7), float(len(joined.split()))]


class FakeWorker:
    def __init__(self, index: int) -> None:
        self.index = index


class FakePool:
    """Runs a batch on the event loop after `delay` seconds; records every batch it ran."""

    def __init__(self, name: str, workers: int = 2, delay: float = 0.0) -> None:
        self.name = name
        self.restarts = 0
        self.delay = delay
        self.batches: list[list[TextInput] | dict[str, np.ndarray]] = []
        self.fail_next: Exception | None = None
        self.up = True  # what ready() answers (a test takes the pool "down")
        self.loaded: dict[str, Any] = {}  # keys loaded at run time
        self.running = 0  # batches running now, and the most at once
        self.most_running = 0
        self._idle: asyncio.Queue[FakeWorker] = asyncio.Queue()
        self._workers = [FakeWorker(i) for i in range(workers)]

    async def start(self) -> None:
        for worker in self._workers:
            self._idle.put_nowait(worker)

    async def acquire(self) -> FakeWorker:
        return await self._idle.get()

    async def run(self, worker: Any, task: str,
                  work: dict[str, np.ndarray] | Sequence[TextInput]) -> Logits:
        del worker, task
        self.batches.append(work if isinstance(work, dict) else list(work))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.running -= 1
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        if isinstance(work, dict):
            ids = work["input_ids"]
            logits = np.stack([ids.sum(axis=1) % 7, (ids > 0).sum(axis=1)], axis=1)
            rows = ids.shape[0]
        else:
            logits = np.array([fake_logits(text) for text in work])
            rows = len(work)
        logits = logits.astype(np.float32)
        return Logits(logits, softmax(logits), 0.0, np.zeros(rows, bool))

    def release(self, worker: Any) -> None:
        self._idle.put_nowait(worker)

    def usable(self, worker: Any) -> bool:
        return True

    def idle_count(self) -> int:
        return self._idle.qsize()

    def fresher(self, worker: Any) -> Any:
        return worker

    def ready(self) -> bool:
        return self.up

    def describe(self) -> list[dict[str, Any]]:
        return [{"index": w.index, "pid": None, "cores": [], "threads": 1, "alive": True}
                for w in self._workers]

    async def load(self, key: str, model: Any) -> None:
        self.loaded[key] = model

    async def unload(self, key: str) -> None:
        self.loaded.pop(key, None)

    def stop(self) -> None:
        pass


def fake_pools(**options: Any) -> tuple[dict[str, FakePool], Any]:
    """A pool factory for start_service, and the pools it made (by name)."""
    made: dict[str, FakePool] = {}

    def make(name: str, specs: list[WorkerSpec], service: Service) -> Pool:
        del service
        made[name] = FakePool(name, len(specs), **options)
        return made[name]

    return made, make


__all__ = ["FakePool", "WorkerCrashed", "fake_logits", "fake_pools"]


@asynccontextmanager
async def app_client(repo: Path, delay: float = 0.0, **settings: Any) \
        -> AsyncIterator[tuple[httpx.AsyncClient, FakePool, Service]]:
    """The app for the repository `repo` over fake pools, and a client that calls it in-process
    (no socket, no worker process)."""
    service = prepare_service(load_settings(model_repository=repo, **settings))
    made, make = fake_pools(delay=delay)
    await start_service(service, make)
    transport = httpx.ASGITransport(app=create_app(service))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, made["cpu"], service
    finally:
        await stop_service(service)
