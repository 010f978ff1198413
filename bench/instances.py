"""Multi-instance inference: N processes x M ORT threads, each pinned to its own cores.

FastFormers' observation: at batch 1 a transformer does not keep many threads busy, so several
single-threaded (or few-threaded) copies of the model, each on its own cores, serve more sentences per
second than one copy using every core. A pool here is N spawned processes, each loading the graph once
and waiting; a timed run hands every instance an interleaved share of the same sentences at once and
takes the wall time until the last one finishes.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from app.settings import CpuPoolSettings
from contract.predictor import OnnxPredictor

Texts = list[str | tuple[str, str]]


@dataclass(frozen=True)
class Layout:
    """`instances` processes with `threads` intra-op threads each."""

    instances: int
    threads: int

    @property
    def name(self) -> str:
        return f"{self.instances}x{self.threads}"

    def core_sets(self, cores: list[int]) -> list[list[int]]:
        """Disjoint core lists, one per instance, in the order the cores are listed."""
        if self.instances * self.threads > len(cores):
            raise ValueError(f"layout {self.name} needs {self.instances * self.threads} cores, "
                             f"{len(cores)} available")
        return [cores[i * self.threads : (i + 1) * self.threads] for i in range(self.instances)]


def layouts_for(cores: int) -> list[Layout]:
    """Every N x M layout that uses all `cores` (1 x cores ... cores x 1)."""
    return [Layout(n, cores // n) for n in range(1, cores + 1) if cores % n == 0]


@dataclass(frozen=True)
class GraphSpec:
    """What a worker process needs to build its predictor (all picklable)."""

    graph: Path
    tokenizer_json: Path
    input_names: list[str]
    max_length: int
    pad_token_id: int


def _worker(spec: GraphSpec, cores: list[int], threads: int, conn: Connection) -> None:
    os.sched_setaffinity(0, cores)  # before the session exists: ORT's threads inherit the mask
    # The server's session settings (its workers do not spin: cpu_pool.ort_spinning), so that a
    # pool and the server running the same layout compare the same thing.
    predictor = OnnxPredictor(spec.graph, spec.tokenizer_json, spec.input_names, spec.max_length,
                             spec.pad_token_id, threads,
                             spinning=CpuPoolSettings().ort_spinning)
    conn.send("ready")
    while True:
        texts = conn.recv()
        if texts is None:
            return
        labels = []
        started = time.perf_counter()
        for text in texts:
            labels.append(int(predictor.logits([text]).argmax(axis=-1)[0]))
        conn.send((time.perf_counter() - started, labels))


@dataclass(frozen=True)
class PoolRun:
    sentences_per_s: float
    seconds: float
    labels: list[int]


class InstancePool:
    """N pinned worker processes holding one graph; `run` times them together at batch 1."""

    def __init__(self, spec: GraphSpec, layout: Layout, cores: list[int] | None = None,
                 start_timeout: float = 300.0) -> None:
        available = sorted(cores if cores is not None else os.sched_getaffinity(0))
        context = mp.get_context("spawn")  # no torch/ORT state inherited from the parent
        self.layout = layout
        self.connections: list[Connection] = []
        self.processes: list[mp.process.BaseProcess] = []
        for core_set in layout.core_sets(available):
            parent, child = context.Pipe()
            process = context.Process(target=_worker, args=(spec, core_set, layout.threads, child),
                                      daemon=True)
            process.start()
            self.connections.append(parent)
            self.processes.append(process)
        for conn in self.connections:
            if not conn.poll(start_timeout) or conn.recv() != "ready":
                self.close()
                raise RuntimeError(f"instance of {spec.graph} did not start")

    def run(self, texts: Texts) -> PoolRun:
        """Every instance classifies an interleaved share of `texts`, one at a time, all at once;
        throughput is sentences over the wall time until the last instance is done."""
        shares = [texts[i :: len(self.connections)] for i in range(len(self.connections))]
        started = time.perf_counter()
        for conn, share in zip(self.connections, shares, strict=True):
            conn.send(share)
        answers = [conn.recv() for conn in self.connections]
        seconds = time.perf_counter() - started
        labels = [0] * len(texts)
        for index, (_, share_labels) in enumerate(answers):
            labels[index :: len(self.connections)] = share_labels
        return PoolRun(len(texts) / seconds, seconds, labels)

    def close(self) -> None:
        for conn in self.connections:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(None)
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()

    def __enter__(self) -> InstancePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
