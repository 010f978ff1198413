"""Dynamic-length batching in front of a worker pool.

Rows (one text or pair each) wait in one queue per pool. When a worker is idle, the batcher takes the
oldest row, adds rows of the same model version closest to it in length until the batch is full
(max rows or token budget) or the oldest row has waited `max_wait_ms`, pads to the longest row of
that batch and sends it. Rows whose request was cancelled are dropped before they take a batch slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from app.core.tracing import BatchTiming
from app.runtime.frames import Logits
from app.runtime.workers import RetryableError
from contract.encoding import EncodedText, TextInput, pad_batch

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The pool's queue has no room for the request; the client should retry later."""


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    max_batch_tokens: int
    max_wait_ms: float
    max_queue_rows: int
    # Real tokens / padded tokens a batch must keep: padding is paid in full by the model, and on
    # CPU it costs more than batching saves (measured: docs/benchmarks-log.md).
    min_fill: float = 0.9
    # Priority levels (1 highest): batches take the highest level waiting; the lowest level (the
    # bulk lane, when levels > 1) runs in batches of its own, of lowest_max_batch_size rows at
    # most, so that it holds a worker briefly; a row waiting promote_after_s counts as level 1.
    levels: int = 1
    level_queue_rows: tuple[int, ...] | None = None  # per level, highest first
    promote_after_s: float = 2.0
    lowest_max_batch_size: int = 2
    lowest_max_running: int = 1 << 30  # batches of the lowest level running at once


@dataclass(frozen=True)
class InputSpec:
    """How to build feeds for a model version's graph."""

    input_names: tuple[str, ...]
    pad_token_id: int


class TextRow:
    """A text the worker tokenizes itself; `length` is an estimate, used only to group rows."""

    __slots__ = ("length", "text")
    truncated = False  # unknown until the worker answers

    def __init__(self, text: TextInput, length: int) -> None:
        self.text = text
        self.length = length


Row = EncodedText | TextRow


@dataclass(frozen=True)
class BatchStats:
    """What one executed batch looked like (for metrics)."""

    key: str
    rows: int
    padded_length: int
    queue_waits: list[float]
    seconds: float
    queue_depth: int  # rows still waiting once this batch left
    input_seconds: float = 0.0  # of `seconds`: the worker's tokenizing
    infer_seconds: float = 0.0  # of `seconds`: the graph


_NOTHING = np.zeros(0, np.float32)


class Pending:
    """One request's rows in the queue: a single future resolves with all their logits.

    One future per request, not per row: no gather, and a request that gives up (deadline,
    disconnect) is dropped by failing this one future.
    """

    __slots__ = ("batches", "future", "left", "pools", "results", "scores", "truncated")

    def __init__(self, future: asyncio.Future[Pending], rows: int) -> None:
        self.future = future
        self.results: list[np.ndarray] = [_NOTHING] * rows  # logits per row
        self.scores: list[np.ndarray] = [_NOTHING] * rows  # probabilities per row
        self.truncated = [False] * rows  # as the worker's tokenizer reports (TextRow rows)
        self.pools = [""] * rows  # the pool that answered each row
        self.left = rows
        self.batches: list[BatchTiming] | None = None  # a list only when the request is traced

    def done(self) -> bool:
        return self.future.done()

    def deliver(self, index: int, logits: np.ndarray, scores: np.ndarray, truncated: bool,
                pool: str) -> None:
        if self.future.done():
            return
        self.results[index] = logits
        self.scores[index] = scores
        self.truncated[index] = truncated
        self.pools[index] = pool
        self.left -= 1
        if self.left == 0:
            self.future.set_result(self)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


@dataclass(eq=False)  # rows are compared by identity: their arrays have no single truth value
class _Row:
    key: str  # the version key whose graph runs the row
    encoded: Row
    request: Pending
    index: int
    enqueued: float
    attempts: int = 0
    level: int = 1  # its request's priority (1 highest)


class Runner(Protocol):
    """What the batcher needs from a pool: an idle worker to run one batch on."""

    async def acquire(self) -> Any: ...

    async def run(self, worker: Any, key: str,
                  work: dict[str, np.ndarray] | Sequence[TextInput]) -> Logits: ...

    def release(self, worker: Any) -> None: ...

    def usable(self, worker: Any) -> bool: ...

    def idle_count(self) -> int: ...

    def fresher(self, worker: Any) -> Any: ...


def select_batch(pending: Sequence[_Row], policy: BatchPolicy, share: int = 1) -> list[_Row]:
    """Pick the oldest row plus rows of the same version nearest to it in length, within the
    caps.

    `share` is how many workers could take rows now (this one and the idle ones): the batch takes
    at most its fair part of the waiting rows, so idle workers get the rest instead of waiting for
    one worker to finish one big batch.
    """
    if policy.levels > 1:
        return _select_by_level(pending, policy, share)
    oldest = pending[0]
    same_key = [row for row in pending[1:] if row.key == oldest.key]
    same_key.sort(key=lambda row: abs(row.encoded.length - oldest.encoded.length))
    return _fill(oldest, same_key, policy, share, policy.max_batch_size)


def _select_by_level(pending: Sequence[_Row], policy: BatchPolicy, share: int) -> list[_Row]:
    """select_batch with priority levels: the oldest row of the highest level waiting (a row
    waiting promote_after_s counts as level 1), filled with rows of its version by level, then
    nearness in length; the lowest level only with itself."""
    now = time.perf_counter()
    levels = [1 if now - row.enqueued >= policy.promote_after_s else row.level
              for row in pending]
    top = min(levels)
    seed = levels.index(top)
    oldest = pending[seed]
    lowest = top == policy.levels
    others = [(level, row) for i, (level, row) in enumerate(zip(levels, pending, strict=True))
              if i != seed and row.key == oldest.key and (lowest or level < policy.levels)]
    others.sort(key=lambda item: (item[0], abs(item[1].encoded.length - oldest.encoded.length)))
    size = policy.lowest_max_batch_size if lowest else policy.max_batch_size
    return _fill(oldest, [row for _, row in others], policy, share, size)


def _fill(oldest: _Row, same_key: list[_Row], policy: BatchPolicy, share: int,
          max_size: int) -> list[_Row]:
    """`oldest` and the rows of its version, in the order given, that fit the caps (rows,
    tokens, fill)."""
    cap = min(max_size, -(-(len(same_key) + 1) // max(1, share)))
    batch = [oldest]
    longest = oldest.encoded.length
    real_tokens = oldest.encoded.length
    for row in same_key:
        if len(batch) >= cap:
            break
        width = max(longest, row.encoded.length)
        padded = width * (len(batch) + 1)
        if padded > policy.max_batch_tokens:
            continue
        if real_tokens + row.encoded.length < policy.min_fill * padded:
            continue
        batch.append(row)
        longest = width
        real_tokens += row.encoded.length
    return batch


class Batcher:
    """One per pool: queues rows, forms dynamic-length batches, hands them to idle workers."""

    def __init__(
        self,
        runner: Runner,
        policy: BatchPolicy,
        inputs: Callable[[str], InputSpec],
        on_batch: Callable[[BatchStats], None] | None = None,
        on_drop: Callable[[int], None] | None = None,
        name: str = "",
    ) -> None:
        self.name = name  # the pool's name, recorded with each row it answers
        self.traced = False  # tracing is on: write down batch times for traced requests
        self.runner = runner
        self.policy = policy
        self.inputs = inputs  # version key -> how to build its feeds (the registry answers)
        self._on_batch = on_batch
        self._on_drop = on_drop
        self._pending: list[_Row] = []
        self._level_rows = [0] * policy.levels  # waiting rows per priority level
        self._lowest_running = 0  # batches of the lowest level on workers now
        self._arrived = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    @property
    def depth(self) -> int:
        return len(self._pending)

    def full(self, rows: int = 1, level: int = 1) -> bool:
        """Whether `rows` more rows of priority `level` would pass the queue limits (checked
        before any parsing)."""
        if len(self._pending) + rows > self.policy.max_queue_rows:
            return True
        limits = self.policy.level_queue_rows
        return limits is not None and self._level_rows[level - 1] + rows > limits[level - 1]

    def why_full(self, level: int = 1) -> str:
        """What `full` found, for the refusal's message."""
        limits = self.policy.level_queue_rows
        if limits is not None and self._level_rows[level - 1] >= limits[level - 1] and \
                len(self._pending) < self.policy.max_queue_rows:
            return (f"priority {level}'s queue holds {self._level_rows[level - 1]} of "
                    f"{limits[level - 1]} rows")
        return f"queue holds {len(self._pending)} of {self.policy.max_queue_rows} rows"

    def submit(self, key: str, rows: Sequence[Row], traced: bool = False, level: int = 1) \
            -> asyncio.Future[Pending]:
        """Queue a request's rows at priority `level`; the future resolves with their logits in
        order (raises QueueFull when at capacity). Failing or cancelling the future drops rows
        not yet run."""
        if self.full(len(rows), level):
            raise QueueFull(self.why_full(level))
        request = Pending(asyncio.get_running_loop().create_future(), len(rows))
        if traced:
            request.batches = []
        self.enqueue(key, rows, range(len(rows)), request, level)
        return request.future

    def enqueue(self, key: str, rows: Sequence[Row], indices: Sequence[int],
                request: Pending, level: int = 1) -> None:
        """Queue some of a request's rows (`indices`: their places in it) for a request whose
        other rows may run on another pool; the caller checked `full` first."""
        now = time.perf_counter()
        self._pending.extend(_Row(key, row, request, i, now, level=level)
                             for row, i in zip(rows, indices, strict=True))
        self._level_rows[level - 1] += len(rows)
        self._arrived.set()

    def _set_pending(self, rows: list[_Row]) -> None:
        """Replace the waiting rows (and recount them by level)."""
        self._pending = rows
        counts = [0] * self.policy.levels
        for row in rows:
            counts[row.level - 1] += 1
        self._level_rows = counts

    def take_waiting(self, keys: set[str]) -> list[_Row]:
        """Remove and return the waiting rows of these versions (to run them on another pool,
        or to forget them once their version is unloaded)."""
        taken = [row for row in self._pending if row.key in keys]
        if taken:
            self._set_pending([row for row in self._pending if row.key not in keys])
        return taken

    def adopt(self, rows: list[_Row]) -> None:
        """Queue rows taken from another pool's batcher, keeping their place and wait budget
        (past max_queue_rows if need be: their requests were accepted)."""
        if rows:
            self._set_pending(sorted(rows + self._pending, key=lambda row: row.enqueued))
            self._arrived.set()

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for row in self._pending:
            row.request.fail(RuntimeError("server is shutting down"))
        self._set_pending([])

    def _drop_cancelled(self) -> None:
        """Forget rows whose request gave up (deadline, disconnect) before they take a slot."""
        kept = [row for row in self._pending if not row.request.done()]
        if len(kept) != len(self._pending) and self._on_drop is not None:
            self._on_drop(len(self._pending) - len(kept))
        self._set_pending(kept)

    async def _wait_for_rows(self) -> None:
        while True:
            self._drop_cancelled()
            if self._pending:
                return
            self._arrived.clear()
            await self._arrived.wait()

    def _full(self, batch: list[_Row]) -> bool:
        if len(batch) >= self.policy.max_batch_size:
            return True
        longest = max(row.encoded.length for row in batch)
        return longest * (len(batch) + 1) > self.policy.max_batch_tokens

    async def _next_batch(self) -> list[_Row]:
        """Wait for rows, then until the batch is full or the oldest row's wait budget is spent."""
        await self._wait_for_rows()
        while True:
            share = 1 + self.runner.idle_count()
            batch = select_batch(self._pending, self.policy, share)
            if self._lowest(batch) and self._lowest_running >= self.policy.lowest_max_running:
                # Only bulk rows wait and bulk has its workers: keep this one for a higher level
                # (or until a bulk batch ends, or the oldest row's wait bound makes it level 1).
                waited = time.perf_counter() - batch[0].enqueued
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(),
                                           max(0.001, self.policy.promote_after_s - waited))
                await self._wait_for_rows()
                continue
            deadline = batch[0].enqueued + self.policy.max_wait_ms / 1000
            remaining = deadline - time.perf_counter()
            if self._full(batch) or remaining <= 0:
                return batch
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
            await self._wait_for_rows()

    def _lowest(self, batch: list[_Row]) -> bool:
        """A batch of the lowest priority level (the bulk lane), none of its rows promoted."""
        if self.policy.levels == 1:
            return False
        now = time.perf_counter()
        return all(row.level == self.policy.levels and
                   now - row.enqueued < self.policy.promote_after_s for row in batch)

    async def _loop(self) -> None:
        while True:
            worker = await self.runner.acquire()
            try:
                batch = await self._next_batch()
            except asyncio.CancelledError:
                self.runner.release(worker)
                raise
            if not self.runner.usable(worker):  # it died while we waited for rows
                self.runner.release(worker)
                continue
            worker = self.runner.fresher(worker)
            taken = {id(row) for row in batch}
            self._set_pending([row for row in self._pending if id(row) not in taken])
            lowest = self._lowest(batch)
            self._lowest_running += lowest
            task = asyncio.get_running_loop().create_task(self._execute(worker, batch, lowest))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _fail_or_retry(self, batch: list[_Row], exc: Exception) -> None:
        retry = [row for row in batch if not row.request.done()
                 and isinstance(exc, RetryableError) and row.attempts == 0]
        for row in batch:
            if row in retry:
                row.attempts += 1
            else:
                row.request.fail(exc)
        if retry:
            log.warning("retrying %d rows after: %s", len(retry), exc)
            # Back at the front, in arrival order: they keep their place and their wait budget.
            self._set_pending(sorted(retry + self._pending, key=lambda row: row.enqueued))
            self._arrived.set()

    async def _execute(self, worker: Any, batch: list[_Row], lowest: bool = False) -> None:
        try:
            await self._run_batch(worker, batch)
        except BaseException as exc:
            # Whatever went wrong, no request may be left waiting for an answer that never comes.
            error = exc if isinstance(exc, Exception) else RuntimeError("batch was cancelled")
            requeued = {id(row) for row in self._pending}
            for row in batch:
                if id(row) not in requeued:
                    row.request.fail(error)
            if not isinstance(exc, Exception):
                raise
            log.exception("batch of %d rows failed unexpectedly", len(batch))
        finally:
            if lowest:
                self._lowest_running -= 1
                self._arrived.set()  # a held-back bulk batch may go now

    async def _run_batch(self, worker: Any, batch: list[_Row]) -> None:
        started = time.perf_counter()
        work, width = self._work(batch)
        try:
            result = await self.runner.run(worker, batch[0].key, work)
        except Exception as exc:
            self._fail_or_retry(batch, exc)
            return
        finally:
            self.runner.release(worker)
        if self.traced:
            self._note_batch(worker, batch, started, width)
        for row, logits, scores, truncated in zip(batch, result.logits, result.scores,
                                                  result.truncated, strict=True):
            row.request.deliver(row.index, logits, scores, bool(truncated), self.name)
        if self._on_batch is not None:
            waits = [started - row.enqueued for row in batch]
            self._on_batch(BatchStats(batch[0].key, len(batch), width, waits, result.seconds,
                                      len(self._pending), result.input_seconds,
                                      result.infer_seconds))

    def _note_batch(self, worker: Any, batch: list[_Row], started: float, width: int) -> None:
        """Record this batch on each traced request it ran rows of."""
        finished = time.perf_counter()
        seen: set[int] = set()
        for row in batch:
            request = row.request
            if request.batches is None or id(request) in seen:
                continue
            seen.add(id(request))
            request.batches.append(BatchTiming(
                row.enqueued, started, finished, len(batch), width,
                getattr(worker, "index", -1), self.name))

    def _work(self, batch: list[_Row]) -> tuple[dict[str, np.ndarray] | list[TextInput], int]:
        """Padded feeds (rows tokenized here) or texts (the worker tokenizes), and the padded
        length (estimated for texts)."""
        width = max(row.encoded.length for row in batch)
        if isinstance(batch[0].encoded, TextRow):
            return [row.encoded.text for row in batch], width  # type: ignore[union-attr]
        spec = self.inputs(batch[0].key)
        rows = [row.encoded for row in batch]
        return pad_batch(rows, spec.input_names, spec.pad_token_id), width  # type: ignore[arg-type]
