"""Where a request's rows go: its route's pool; a hybrid route's long inputs to the GPU pool; and
rows bound for a GPU pool that is down or saturated to the CPU pool instead (spill-over).

An input is placed by its own length (all windows of a chunked input together), never by what
else is in the request or the queue, except for spill-over: a row answered on the CPU pool gets
the cpu-int8 variant's answer, and the response says so (`variant`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from app.core.batching import Batcher, Pending, QueueFull, Row
from app.core.routing import Route
from app.settings import PoolName

log = logging.getLogger(__name__)

# model name, from pool, to pool, reason ("down" or "saturated"), rows
SpillHook = Callable[[str, str, str, str, int], None]


class Readiness(Protocol):
    def ready(self) -> bool: ...


@dataclass
class Dispatcher:
    """Places each request's rows on its route's batchers (the registry says every loaded
    version's route: `routes`)."""

    routes: Callable[[], list[Route]]
    batchers: dict[PoolName, Batcher]
    pools: dict[PoolName, Readiness]
    spill_queue_rows: int
    on_spill: SpillHook | None = None
    # (from pool, reason) -> rows sent elsewhere, for /v1/pools.
    spilled: dict[tuple[str, str], int] = field(default_factory=dict)
    _watcher: asyncio.Task[None] | None = None

    def submit(self, route: Route, rows: Sequence[Row], groups: Sequence[int] | None = None,
               traced: bool = False, level: int = 1) -> asyncio.Future[Pending]:
        """Queue a request's rows on `route` (its version's) at priority `level`; one future
        resolves with all their logits (QueueFull when a pool they need has no room). `groups`:
        rows per input (chunked inputs), else one each."""
        if route.single_pool:
            return self.batchers[route.pool].submit(route.key, rows, traced, level)
        placed = self._place(route, rows, groups)
        for pool, indices in placed.items():
            if self.batchers[pool].full(len(indices), level):
                raise QueueFull(f"the {pool} pool's {self.batchers[pool].why_full(level)}")
        request = Pending(asyncio.get_running_loop().create_future(), len(rows))
        if traced:
            request.batches = []
        for pool, indices in placed.items():
            self.batchers[pool].enqueue(route.key, [rows[i] for i in indices], indices, request,
                                        level)
        return request.future

    def _place(self, route: Route, rows: Sequence[Row], groups: Sequence[int] | None) \
            -> dict[PoolName, list[int]]:
        placed: dict[PoolName, list[int]] = {}
        start = 0
        for size in groups if groups is not None else [1] * len(rows):
            members = range(start, start + size)
            start += size
            longest = max(rows[i].length for i in members)
            pool = route.long_pool if route.long_pool is not None \
                and longest >= route.long_length else route.pool
            placed.setdefault(pool, []).extend(members)
        if route.spill_pool is None:
            return placed
        for pool in [p for p in placed if p != route.spill_pool]:
            reason = self._trouble(pool, len(placed[pool]))
            if reason is not None:
                moved = placed.pop(pool)
                placed.setdefault(route.spill_pool, []).extend(moved)
                self._count(route.name, pool, route.spill_pool, reason, len(moved))
        return placed

    def _trouble(self, pool: PoolName, rows: int) -> str | None:
        """Why `pool` should not take `rows` more rows now (None: it should)."""
        if not self.pools[pool].ready():
            return "down"
        batcher = self.batchers[pool]
        if batcher.depth + rows > self.spill_queue_rows or batcher.full(rows):
            return "saturated"
        return None

    def _count(self, name: str, source: str, target: str, reason: str, rows: int) -> None:
        self.spilled[(source, reason)] = self.spilled.get((source, reason), 0) + rows
        if self.on_spill is not None:
            self.on_spill(name, source, target, reason, rows)

    def spill_waiting(self) -> None:
        """Move rows waiting for a pool that is down to their route's spill pool."""
        for pool, batcher in self.batchers.items():
            if not batcher.depth or self.pools[pool].ready():
                continue
            for route in self.routes():
                if route.spill_pool is None or route.spill_pool == pool or \
                        pool not in route.pools:
                    continue
                rows = batcher.take_waiting({route.key})
                if rows:
                    log.warning("pool %s is down: %d waiting %s rows move to the %s pool", pool,
                                len(rows), route.key, route.spill_pool)
                    self.batchers[route.spill_pool].adopt(rows)
                    self._count(route.name, pool, route.spill_pool, "down", len(rows))

    def start(self, interval: float = 0.05) -> None:
        """Watch for pools going down (a crashed GPU worker) while rows wait for them."""
        if any(route.spill_pool is not None for route in self.routes()):
            self._watcher = asyncio.get_running_loop().create_task(self._watch(interval))

    async def _watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.spill_waiting()

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
