"""Model execution: worker processes pinned to their own cores, one ORT session per model version each.

Only numpy and onnxruntime are imported in a worker. The API process talks to it over a Unix stream
socket in compact binary frames (frames.py), read and written by the event loop itself: no executor
thread and no pickle between a batch and its logits. Batching and HTTP live elsewhere.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import dataclasses
import logging
import multiprocessing as mp
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.runtime import frames
from contract.encoding import TextInput, probabilities
from contract.predictor import OnnxPredictor
from contract.session import Provider, provider_name

log = logging.getLogger(__name__)

# A worker may crash and come back this often without delay; past it, restarts back off
# (1, 2, 4 ... CRASH_BACKOFF_MAX_S seconds) so a poison input or a broken host is no hot loop.
CRASH_BURST = 3
CRASH_WINDOW_S = 30.0
CRASH_BACKOFF_MAX_S = 30.0
# Batch and texts frames name a model by one byte.
MAX_SLOTS = 256


class RetryableError(Exception):
    """A batch failed for a reason that is not its rows' fault (e.g. its worker died): the
    batcher runs those rows once more before giving up on them."""


class WorkerError(Exception):
    """A worker could not start, crashed, or failed to run a batch."""


class WorkerCrashed(WorkerError, RetryableError):
    """The worker process died (or was replaced) while it had or was given a batch."""


@dataclass(frozen=True)
class ModelFile:
    path: str
    input_names: tuple[str, ...]
    # Set when the worker tokenizes texts itself (settings.tokenize: workers).
    tokenizer: str | None = None
    max_length: int = 0
    pad_token_id: int = 0
    problem_type: str = "single_label"  # how the worker turns logits into scores


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker process runs and where: the cores it is pinned to and its models by
    version key."""

    index: int
    cores: tuple[int, ...]
    threads: int
    models: dict[str, ModelFile]
    providers: tuple[Provider, ...] = ("CPUExecutionProvider",)
    io_binding: bool = False
    # After a batch, keep polling the socket this long before blocking: a worker that sleeps in
    # the kernel wakes slowly on these VMs (measured in docs/benchmarks-log.md); 0 = block at once.
    spin_s: float = 0.0
    ort_spinning: bool | None = None  # ORT's intra-op threads spin after a run (None: ORT's default)
    # The slot each model has in the worker, in `models` order (None: 0, 1, ...): the number a
    # batch frame names. A pool keeps slots stable while models are loaded and unloaded.
    slots: tuple[int, ...] | None = None

    def slot_numbers(self) -> tuple[int, ...]:
        return self.slots if self.slots is not None else tuple(range(len(self.models)))

    def loaded(self) -> dict[str, tuple[int, ModelFile]]:
        """Model by key, with its slot."""
        return {key: (slot, model) for (key, model), slot
                in zip(self.models.items(), self.slot_numbers(), strict=True)}


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


class _SocketReader:
    """Whole frames from a blocking socket, optionally polling before it blocks."""

    def __init__(self, sock: socket.socket, spin_s: float) -> None:
        self.sock = sock
        self.spin_s = spin_s

    def _recv(self, size: int, spin: bool) -> bytearray | None:
        data = bytearray(size)
        view = memoryview(data)
        got = 0
        until = time.perf_counter() + self.spin_s if spin else 0.0
        while got < size:
            if spin and time.perf_counter() < until:
                try:
                    count = self.sock.recv_into(view[got:], size - got, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
            else:
                count = self.sock.recv_into(view[got:], size - got)
            if count == 0:
                return None
            got += count
        return data

    def next(self) -> memoryview | None:
        """The next frame's body, or None once the API process has closed the socket."""
        head = self._recv(frames.LENGTH.size, spin=self.spin_s > 0)
        if head is None:
            return None
        (size,) = frames.LENGTH.unpack(head)
        body = self._recv(size, spin=False)
        return None if body is None else memoryview(body)


class _Model:
    """A worker's predictor for one model version (the build's evaluation uses the same one)."""

    def __init__(self, model: ModelFile, spec: WorkerSpec) -> None:
        self.file = model
        self.predictor = OnnxPredictor(model.path, None if model.tokenizer is None
                                       else Path(model.tokenizer), model.input_names,
                                       model.max_length, model.pad_token_id, spec.threads,
                                       spec.providers, spec.io_binding, spec.ort_spinning)

    def run(self, work: frames.Batch | frames.Texts) \
            -> tuple[np.ndarray, np.ndarray | None, float]:
        """The batch's logits, which rows the tokenizer truncated (texts), and the seconds
        spent tokenizing."""
        if isinstance(work, frames.Batch):
            return self.predictor.run_feeds(dict(zip(self.file.input_names, work.feeds,
                                                     strict=True))), None, 0.0
        if self.predictor.tokenizer is None:
            raise WorkerError("this worker was not given the model's tokenizer")
        started = time.perf_counter()
        rows = self.predictor.encode(work.texts)
        encoded = time.perf_counter() - started
        return self.predictor.run_rows(rows), np.array([row.truncated for row in rows]), encoded


def worker_main(spec: WorkerSpec, sock: socket.socket) -> None:
    """Entry point of a worker process: pin, load, then serve batches until the socket closes."""
    try:
        os.sched_setaffinity(0, spec.cores)
        models = {slot: _Model(m, spec) for slot, m
                  in zip(spec.slot_numbers(), spec.models.values(), strict=True)}
    except Exception as exc:  # report any start-up failure to the parent instead of dying silently
        sock.sendall(frames.message_frame(frames.FAILED, f"{type(exc).__name__}: {exc}"))
        return
    sock.sendall(frames.ready_frame(os.getpid(), sorted(os.sched_getaffinity(0))))
    reader = _SocketReader(sock, spec.spin_s)
    while True:
        try:
            body = reader.next()
        except OSError:
            return
        if body is None:
            return
        started = time.perf_counter()
        try:
            work = frames.parse_work(body)
            if isinstance(work, frames.Load | frames.Unload):
                reply = _control(work, models, spec)
                sock.sendall(reply)
                continue
            model = models[work.slot]
            logits, truncated, encoded = model.run(work)
            ran = time.perf_counter() - started
            scores = probabilities(logits, model.file.problem_type)
            reply = frames.logits_frame(logits, scores, time.perf_counter() - started, truncated,
                                        encoded, ran - encoded)
        except Exception as exc:
            reply = frames.message_frame(frames.ERROR, f"{type(exc).__name__}: {exc}")
        try:
            sock.sendall(reply)
        except OSError:
            return


def _control(work: frames.Load | frames.Unload, models: dict[int, _Model],
             spec: WorkerSpec) -> bytes:
    """Load or unload one model between batches; a load that fails leaves the others as they
    were and says why."""
    if isinstance(work, frames.Unload):
        models.pop(work.slot, None)
    else:
        fields = {**work.model, "input_names": tuple(work.model["input_names"])}
        try:
            models[work.slot] = _Model(ModelFile(**fields), spec)
        except Exception as exc:
            return frames.message_frame(frames.FAILED, f"{type(exc).__name__}: {exc}")
    return frames.ready_frame(os.getpid(), sorted(os.sched_getaffinity(0)))


class _Channel(asyncio.Protocol):
    """The API side of one worker's socket: one request in flight, its reply resolves a future."""

    def __init__(self, on_lost: Callable[[], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = frames.FrameBuffer()
        self._waiter: asyncio.Future[frames.Logits | frames.Failure | frames.Ready] | None = None
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for body in self._buffer.feed(data):
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(frames.parse_reply(body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("the worker closed its socket"))
        self._on_lost()

    def expect(self) -> asyncio.Future[frames.Logits | frames.Failure | frames.Ready]:
        """A future for the next frame the worker sends."""
        if self.closed:
            raise ConnectionError("the worker's socket is closed")
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def send(self, frame: bytes) -> asyncio.Future[frames.Logits | frames.Failure | frames.Ready]:
        reply = self.expect()
        assert self.transport is not None
        self.transport.write(frame)
        return reply


@dataclass
class Worker:
    """Parent-side handle of one worker process."""

    spec: WorkerSpec
    on_lost: Callable[[Worker], None] = lambda worker: None
    process: Any = None
    pid: int | None = None
    cores: list[int] = field(default_factory=list)
    retired: bool = False  # dead and replaced (or being replaced): never hand it a batch again
    # What the process has loaded now: key -> (slot, file); starts as the spec's models.
    loaded: dict[str, tuple[int, ModelFile]] = field(default_factory=dict)
    # One frame in flight per worker: a batch and a load sent at once would mix their replies.
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _channel: _Channel | None = None
    _sock: socket.socket | None = None
    released_at: float = 0.0  # when it last went idle (IdleWorkers hands out the latest first)

    @property
    def index(self) -> int:
        return self.spec.index

    def start(self) -> None:
        """Spawn the process; `wait_ready` then connects to it and waits for its models."""
        self.loaded = self.spec.loaded()
        ctx = mp.get_context("spawn")  # fork is unsafe in a process that already runs threads
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.process = ctx.Process(
            target=worker_main, args=(self.spec, child), name=f"ffs-worker-{self.spec.index}",
            daemon=True,
        )
        self.process.start()
        child.close()  # our copy closed: the socket then reads EOF when the worker dies
        self._sock = parent

    async def wait_ready(self, timeout: float) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        _, channel = await loop.connect_accepted_socket(
            lambda: _Channel(lambda: self.on_lost(self)), self._sock)
        self._channel = channel
        try:
            message = await asyncio.wait_for(channel.expect(), timeout)
        except TimeoutError:
            raise WorkerError(f"worker {self.spec.index} did not start within {timeout:.0f} s") \
                from None
        except ConnectionError as exc:
            raise WorkerError(f"worker {self.spec.index} exited during start-up") from exc
        if not isinstance(message, frames.Ready):
            reason = message.message if isinstance(message, frames.Failure) else message
            raise WorkerError(f"worker {self.spec.index} failed to start: {reason}")
        self.pid, self.cores = message.pid, message.cores

    async def run(self, key: str, work: dict[str, np.ndarray] | Sequence[TextInput]) \
            -> frames.Logits:
        """Logits of one batch: padded feeds by input name, or texts the worker tokenizes."""
        index, model = self.loaded[key]
        if isinstance(work, dict):
            frame = frames.batch_frame(index, [work[n] for n in model.input_names])
        else:
            frame = frames.texts_frame(index, work)
        reply = await self._exchange(frame, "failed the batch: ")
        if not isinstance(reply, frames.Logits):
            raise WorkerError(f"worker {self.spec.index} answered a batch with {reply}")
        return reply

    async def _exchange(self, frame: bytes, failed: str) -> frames.Logits | frames.Ready:
        """Send one frame and read its reply, one frame at a time per worker; a Failure reply
        raises WorkerError (`failed` + its message)."""
        if self._channel is None or self.retired:
            raise WorkerCrashed(f"worker {self.spec.index} (pid {self.pid}) was replaced")
        try:
            async with self._lock:
                reply = await self._channel.send(frame)
        except ConnectionError as exc:
            raise WorkerCrashed(f"worker {self.spec.index} (pid {self.pid}) died") from exc
        if isinstance(reply, frames.Failure):
            raise WorkerError(f"worker {self.spec.index} {failed}{reply.message}")
        return reply

    async def control(self, frame: bytes) -> None:
        """Send a load or unload frame, between two batches of this worker."""
        await self._exchange(frame, "refused: ")

    async def load(self, key: str, slot: int, model: ModelFile) -> None:
        await self.control(frames.load_frame(slot, dataclasses.asdict(model)))
        self.loaded[key] = (slot, model)

    async def unload(self, key: str) -> None:
        slot, _ = self.loaded.pop(key)
        await self.control(frames.unload_frame(slot))

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive() and \
            (self._channel is None or not self._channel.closed)

    def stop(self, timeout: float = 5.0) -> None:
        """Close the socket (the worker exits on EOF), then make sure the process is gone."""
        if self._sock is not None:
            # At once, not on the loop's next turn (as transport.close would): the worker reads
            # EOF now, so the join below does not wait for a worker that was never told to stop.
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            if self._channel is not None and self._channel.transport is not None:
                self._channel.transport.close()
            else:
                self._sock.close()
        if self.process is not None:
            self.process.join(timeout)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(timeout)


def _device(spec: WorkerSpec) -> dict[str, int]:
    """The GPU a worker runs on, when its first provider names one."""
    first = spec.providers[0]
    if isinstance(first, str) or "device_id" not in first[1]:
        return {}
    return {"device_id": int(first[1]["device_id"])}


class IdleWorkers:
    """The pool's idle workers, the one that finished last handed out first: a lone request then
    runs on the core that just ran the model (awake, its caches holding the weights), not on the
    one that has slept longest; under load every worker is busy and the order does not matter."""

    def __init__(self) -> None:
        self._workers: list[Worker] = []  # by release time, the latest last
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def qsize(self) -> int:
        return len(self._workers)

    def put_nowait(self, worker: Worker) -> None:
        worker.released_at = time.perf_counter()
        self._workers.append(worker)
        self._wake_one()

    async def get(self) -> Worker:
        while not self._workers:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if not waiter.cancelled():  # woken, then cancelled: pass the wake-up on
                    self._wake_one()
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        return self._workers.pop()

    def fresher(self, held: Worker) -> Worker:
        """`held` (taken before its batch was formed), or an idle worker that finished after it
        was taken, `held` going back among the idle in its place."""
        if not self._workers or self._workers[-1].released_at <= held.released_at \
                or not self._workers[-1].alive():
            return held
        newest = self._workers.pop()
        bisect.insort(self._workers, held, key=lambda w: w.released_at)
        return newest

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


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
        self.workers = [Worker(spec, self._lost) for spec in specs]
        # What every worker serves now (a restarted worker starts with it): key -> file, slot.
        self.models: dict[str, ModelFile] = dict(specs[0].models) if specs else {}
        self.slots: dict[str, int] = dict(zip(self.models, specs[0].slot_numbers(),
                                              strict=True)) if specs else {}
        self.start_timeout = start_timeout
        self.restarts = 0
        self._on_restart = on_restart
        self._check_interval = check_interval
        self._idle = IdleWorkers()
        self._restarting: set[asyncio.Task[None]] = set()
        self._monitor: asyncio.Task[None] | None = None
        self._crashes: dict[int, collections.deque[float]] = {}
        self._stopping = False

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

    async def run(self, worker: Worker, key: str,
                  work: dict[str, np.ndarray] | Sequence[TextInput]) -> frames.Logits:
        return await worker.run(key, work)

    async def load(self, key: str, model: ModelFile) -> None:
        """Load a model into every worker, one worker at a time between its batches (the others
        keep serving). If a worker refuses it, the others unload it again and the error is
        raised: the pool then serves exactly what it served before."""
        used = set(self.slots.values())
        free = next((slot for slot in range(MAX_SLOTS) if slot not in used), None)
        if free is None:
            raise WorkerError(f"a worker holds at most {MAX_SLOTS} models")
        self.slots[key], self.models[key] = free, model
        try:
            await self._each_worker(lambda w: w.load(key, free, model),
                                    lambda w: key in w.loaded)
        except WorkerError:
            await self.unload(key)
            raise

    async def unload(self, key: str) -> None:
        """Unload a model from every worker (no batch of it may be waiting or running)."""
        self.models.pop(key, None)

        async def unload(worker: Worker) -> None:
            with contextlib.suppress(WorkerCrashed):  # it restarts without the model
                await worker.unload(key)

        await self._each_worker(unload, lambda w: key not in w.loaded)
        self.slots.pop(key, None)

    async def _each_worker(self, act: Callable[[Worker], Awaitable[None]],
                           done: Callable[[Worker], bool]) -> None:
        """Run `act` on each live worker that is not `done`, one after the other (a batch for
        that worker waits for it; the others serve). A worker that restarts meanwhile starts
        with the pool's models."""
        for worker in list(self.workers):
            if self.usable(worker) and worker.pid is not None and not done(worker):
                await act(worker)

    async def _sync(self, worker: Worker) -> None:
        """Bring a (re)started worker to what the pool serves now (a load or unload may have
        happened while it started)."""
        for key in [k for k in worker.loaded if k not in self.models]:
            await worker.unload(key)
        for key, model in self.models.items():
            if key not in worker.loaded:
                await worker.load(key, self.slots[key], model)

    def _spec_now(self, spec: WorkerSpec) -> WorkerSpec:
        return dataclasses.replace(spec, models=dict(self.models),
                                   slots=tuple(self.slots[key] for key in self.models))

    def _lost(self, worker: Worker) -> None:
        """A worker's socket closed: it died (or is stopping); replace it unless it was retired."""
        if worker.pid is not None and not worker.retired and self._monitor is not None \
                and not self._stopping:
            self._schedule_restart(worker)

    def usable(self, worker: Worker) -> bool:
        return worker.alive() and not worker.retired

    def idle_count(self) -> int:
        return self._idle.qsize()

    def fresher(self, worker: Worker) -> Worker:
        """The worker to run a batch just formed: `worker` (acquired while the batcher waited
        for rows), or an idle one that finished since (see IdleWorkers)."""
        return self._idle.fresher(worker)

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
        if dead.process is not None and dead.process.is_alive():
            dead.process.kill()  # its socket closed but it lingers: it is no use to anyone
        dead.stop(timeout=0.5)
        log.warning("pool %s: worker %d (pid %s) died; restarting", self.name, dead.spec.index,
                    dead.pid)
        await asyncio.sleep(self._crash_backoff(dead.spec.index))
        delay = 0.5
        while True:
            fresh = Worker(self._spec_now(dead.spec), self._lost)
            self.workers[index] = fresh
            self.restarts += 1
            if self._on_restart is not None:
                self._on_restart(self.name)
            fresh.start()
            try:
                await fresh.wait_ready(self.start_timeout)
                await self._sync(fresh)
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
             "alive": w.alive(), "providers": [provider_name(p) for p in w.spec.providers],
             **_device(w.spec)}
            for w in self.workers
        ]

    def stop(self) -> None:
        self._stopping = True
        if self._monitor is not None:
            self._monitor.cancel()
        for task in self._restarting:
            task.cancel()
        for worker in self.workers:
            worker.stop()
