"""The pool's idle workers: the one that finished last is handed out first, so a lone request runs
on the core that just ran the model rather than on the one that slept longest."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from app.runtime.workers import IdleWorkers


def _worker(name: str, alive: bool = True) -> Any:
    return SimpleNamespace(name=name, released_at=0.0, alive=lambda: alive)


def test_the_worker_released_last_is_handed_out_first() -> None:
    async def scenario() -> list[str]:
        idle = IdleWorkers()
        for name in ("a", "b", "c"):
            idle.put_nowait(_worker(name))
        return [(await idle.get()).name for _ in range(3)]

    assert asyncio.run(scenario()) == ["c", "b", "a"]


def test_a_worker_taken_before_its_batch_gives_way_to_one_that_finished_since() -> None:
    async def scenario() -> tuple[str, list[str]]:
        idle = IdleWorkers()
        idle.put_nowait(_worker("slept"))
        held = await idle.get()  # the batcher holds it while it waits for rows
        idle.put_nowait(_worker("just finished"))
        chosen = idle.fresher(held)
        return chosen.name, [(await idle.get()).name for _ in range(idle.qsize())]

    assert asyncio.run(scenario()) == ("just finished", ["slept"])


def test_a_worker_that_died_since_it_finished_is_not_swapped_in() -> None:
    async def scenario() -> str:
        idle = IdleWorkers()
        idle.put_nowait(_worker("slept"))
        held = await idle.get()
        idle.put_nowait(_worker("died", alive=False))
        return str(idle.fresher(held).name)

    assert asyncio.run(scenario()) == "slept"


def test_a_worker_taken_after_the_idle_ones_finished_is_kept() -> None:
    async def scenario() -> str:
        idle = IdleWorkers()
        idle.put_nowait(_worker("older"))
        idle.put_nowait(_worker("newer"))
        held = await idle.get()
        return str(idle.fresher(held).name)

    assert asyncio.run(scenario()) == "newer"


def test_a_waiter_gets_the_worker_released_while_it_waited() -> None:
    async def scenario() -> str:
        idle = IdleWorkers()
        waiting = asyncio.ensure_future(idle.get())
        await asyncio.sleep(0)
        idle.put_nowait(_worker("back"))
        return str((await asyncio.wait_for(waiting, 1)).name)

    assert asyncio.run(scenario()) == "back"


def test_a_cancelled_waiter_passes_its_wake_up_on() -> None:
    async def scenario() -> str:
        idle = IdleWorkers()
        first = asyncio.ensure_future(idle.get())
        second = asyncio.ensure_future(idle.get())
        await asyncio.sleep(0)
        idle.put_nowait(_worker("only"))  # wakes `first`...
        first.cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await first
        return str((await asyncio.wait_for(second, 1)).name)

    assert asyncio.run(scenario()) == "only"
