"""Model execution: worker processes pinned to their own cores, one ORT session per task each.

Only numpy and onnxruntime are imported in a worker; the API process talks to it over a pipe with
padded feeds in and logits out. Batching and HTTP live elsewhere (batching.py, server.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from app.batching import RetryableError

log = logging.getLogger(__name__)

# A worker may crash and come back this often without delay; past it, restarts back off
# (1, 2, 4 ... CRASH_BACKOFF_MAX_S seconds) so a poison input or a broken host is no hot loop.
CRASH_BURST = 3
CRASH_WINDOW_S = 30.0
CRASH_BACKOFF_MAX_S = 30.0


class WorkerError(Exception):
    """A worker could not start, crashed, or failed to run a batch."""


class WorkerCrashed(WorkerError, RetryableError):
    """The worker process died (or was replaced) while it had or was given a batch."""


@dataclass(frozen=True)
class ModelFile:
    path: str
    input_names: tuple[str, ...]


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker process runs and where: the cores it is pinned to and its models by task."""

    index: int
    cores: tuple[int, ...]
    threads: int
    models: dict[str, ModelFile]
    providers: tuple[str, ...] = ("CPUExecutionProvider",)


@dataclass(frozen=True)
class BatchResult:
    logits: np.ndarray
    seconds: float


def cpu_layout(cores: Sequence[int], workers: int | None, threads: int) -> list[tuple[int, ...]]:
    """Split `cores` into one disjoint group of `threads` cores per worker.

    Default: as many workers as the cores allow (2 cores, 1 thread -> 2 workers): on small CPUs one
    process per core beats one process with several threads by about 2x at batch 1.
    """
    if threads < 1:
        raise ValueError("threads_per_worker must be at least 1")
    count = workers if workers is not None else max(1, len(cores) // threads)
    if count < 1:
        raise ValueError("workers must be at least 1")
    if count * threads > len(cores):
        raise ValueError(
            f"{count} workers x {threads} threads need {count * threads} cores, but only "
            f"{len(cores)} are available to this process ({sorted(cores)}); lower "
            "cpu_pool.workers or cpu_pool.threads_per_worker"
        )
    ordered = sorted(cores)
    return [tuple(ordered[i * threads : (i + 1) * threads]) for i in range(count)]


def _open_sessions(spec: WorkerSpec) -> dict[str, Any]:
    import onnxruntime as ort

    sessions = {}
    for task, model in spec.models.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = spec.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sessions[task] = ort.InferenceSession(model.path, options, providers=list(spec.providers))
    return sessions


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of a worker process: pin, load, then serve batches until the pipe closes."""
    try:
        os.sched_setaffinity(0, spec.cores)
        sessions = _open_sessions(spec)
    except Exception as exc:  # report any start-up failure to the parent instead of dying silently
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid(), sorted(os.sched_getaffinity(0))))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        task, feeds = message
        started = time.perf_counter()
        try:
            logits = sessions[task].run(None, feeds)[0]
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            continue
        conn.send(("ok", logits, time.perf_counter() - started))


@dataclass
class Worker:
    """Parent-side handle of one worker process."""

    spec: WorkerSpec
    process: Any = None
    conn: Connection | None = None
    pid: int | None = None
    cores: list[int] = field(default_factory=list)
    retired: bool = False  # dead and replaced (or being replaced): never hand it a batch again
    # One thread per worker does the blocking pipe I/O, so the event loop never blocks on it.
    _io: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1))

    def start(self) -> None:
        ctx = mp.get_context("spawn")  # fork is unsafe in a process that already runs threads
        parent, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=worker_main, args=(self.spec, child), name=f"ffs-worker-{self.spec.index}",
            daemon=True,
        )
        self.process.start()
        child.close()  # our copy closed: recv() then raises EOFError when the worker dies
        self.conn = parent

    def _await_ready(self, timeout: float) -> None:
        assert self.conn is not None
        if not self.conn.poll(timeout):
            raise WorkerError(f"worker {self.spec.index} did not start within {timeout:.0f} s")
        try:
            message = self.conn.recv()
        except EOFError as exc:
            raise WorkerError(f"worker {self.spec.index} exited during start-up") from exc
        if message[0] != "ready":
            raise WorkerError(f"worker {self.spec.index} failed to start: {message[1]}")
        self.pid, self.cores = message[1], message[2]

    async def wait_ready(self, timeout: float) -> None:
        await asyncio.get_running_loop().run_in_executor(self._io, self._await_ready, timeout)

    def _roundtrip(self, task: str, feeds: dict[str, np.ndarray]) -> BatchResult:
        assert self.conn is not None
        try:
            self.conn.send((task, feeds))
            reply = self.conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            raise WorkerCrashed(f"worker {self.spec.index} (pid {self.pid}) died") from exc
        if reply[0] != "ok":
            raise WorkerError(f"worker {self.spec.index} failed the batch: {reply[1]}")
        return BatchResult(logits=reply[1], seconds=reply[2])

    async def run(self, task: str, feeds: dict[str, np.ndarray]) -> BatchResult:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._io, self._roundtrip, task, feeds)
        except RuntimeError as exc:  # executor shut down: the supervisor replaced this worker
            raise WorkerCrashed(f"worker {self.spec.index} (pid {self.pid}) was replaced") from exc

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError, BrokenPipeError):
                self.conn.send(None)
        if self.process is not None:
            self.process.join(timeout)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(timeout)
        if self.conn is not None:
            self.conn.close()
        self._io.shutdown(wait=False, cancel_futures=True)


class WorkerPool:
    """A set of identical workers; a batch runs on whichever is idle. Restarts workers that die."""

    def __init__(
        self,
        name: str,
        specs: Sequence[WorkerSpec],
        start_timeout: float = 120.0,
        on_restart: Callable[[str], None] | None = None,
        check_interval: float = 0.2,
    ) -> None:
        self.name = name
        self.workers = [Worker(spec) for spec in specs]
        self.start_timeout = start_timeout
        self.restarts = 0
        self._on_restart = on_restart
        self._check_interval = check_interval
        self._idle: asyncio.Queue[Worker] = asyncio.Queue()
        self._restarting: set[asyncio.Task[None]] = set()
        self._monitor: asyncio.Task[None] | None = None
        self._crashes: dict[int, collections.deque[float]] = {}

    async def start(self) -> None:
        """Start every worker and wait until each has loaded its models; raise if any fails."""
        for worker in self.workers:
            worker.start()
        try:
            await asyncio.gather(*(w.wait_ready(self.start_timeout) for w in self.workers))
        except Exception:
            self.stop()
            raise
        for worker in self.workers:
            log.info("pool %s: worker %d ready, pid %s, cores %s", self.name, worker.spec.index,
                     worker.pid, worker.cores)
            self._idle.put_nowait(worker)
        self._monitor = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """Restart workers that died while idle, before a batch is sent to them."""
        while True:
            await asyncio.sleep(self._check_interval)
            for worker in list(self.workers):
                if worker.pid is not None and not worker.alive() and not worker.retired:
                    self._schedule_restart(worker)

    def ready(self) -> bool:
        """At least one live worker: a pool restarting one of its workers still serves."""
        return any(w.alive() and w.pid is not None and not w.retired for w in self.workers)

    async def acquire(self) -> Worker:
        """Wait for an idle, live worker (the batcher forms a batch only once one is free)."""
        while True:
            worker = await self._idle.get()
            if worker.alive() and not worker.retired:
                return worker
            if not worker.retired:
                self._schedule_restart(worker)

    async def run(
        self, worker: Worker, task: str, feeds: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, float]:
        result = await worker.run(task, feeds)
        return result.logits, result.seconds

    def usable(self, worker: Worker) -> bool:
        return worker.alive() and not worker.retired

    def idle_count(self) -> int:
        return self._idle.qsize()

    def release(self, worker: Worker) -> None:
        if worker.alive() and not worker.retired:
            self._idle.put_nowait(worker)
        elif not worker.retired:
            self._schedule_restart(worker)

    def _schedule_restart(self, dead: Worker) -> None:
        dead.retired = True
        task = asyncio.get_running_loop().create_task(self._restart(dead))
        self._restarting.add(task)
        task.add_done_callback(self._restarting.discard)

    async def _restart(self, dead: Worker) -> None:
        """Replace a dead worker, retrying with backoff until one starts (or the pool stops)."""
        index = self.workers.index(dead)
        # On the dead worker's own I/O thread: after any recv() still running there has seen EOF,
        # so its pipe is never closed under a blocked reader (whose fd a new pipe could reuse).
        await asyncio.get_running_loop().run_in_executor(dead._io, dead.stop, 0.5)
        log.warning("pool %s: worker %d (pid %s) died; restarting", self.name, dead.spec.index,
                    dead.pid)
        await asyncio.sleep(self._crash_backoff(dead.spec.index))
        delay = 0.5
        while True:
            fresh = Worker(dead.spec)
            self.workers[index] = fresh
            self.restarts += 1
            if self._on_restart is not None:
                self._on_restart(self.name)
            fresh.start()
            try:
                await fresh.wait_ready(self.start_timeout)
            except WorkerError:
                log.exception("pool %s: restart of worker %d failed; retrying in %.1f s",
                              self.name, dead.spec.index, delay)
                fresh.retired = True
                fresh.stop(timeout=0.5)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self._idle.put_nowait(fresh)
            return

    def _crash_backoff(self, index: int) -> float:
        """Seconds to wait before restarting worker `index`: 0 unless it keeps crashing."""
        now = time.monotonic()
        history = self._crashes.setdefault(index, collections.deque())
        history.append(now)
        while history and now - history[0] > CRASH_WINDOW_S:
            history.popleft()
        excess = len(history) - CRASH_BURST
        if excess <= 0:
            return 0.0
        delay = min(CRASH_BACKOFF_MAX_S, 2.0 ** (excess - 1))
        log.error("pool %s: worker %d crashed %d times in %.0f s; restarting it in %.0f s",
                  self.name, index, len(history), CRASH_WINDOW_S, delay)
        return delay

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"index": w.spec.index, "pid": w.pid, "cores": w.cores, "threads": w.spec.threads,
             "alive": w.alive()}
            for w in self.workers
        ]

    def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        for task in self._restarting:
            task.cancel()
        for worker in self.workers:
            worker.stop()
