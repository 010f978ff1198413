"""Counts and times per model version, in the terms of Triton's statistics extension (what its
perf_analyzer and dashboards read from /v2/models/stats).

Recorded at the same two points as the Prometheus metrics (a request's final status, a batch that
ran), so the two agree: `success` / `fail` are requests (end to end), `queue` the rows' waits for
their batch, `inference_count` the rows run and `execution_count` the batches. A batch's time in
the worker (ffs_inference_seconds) is split as Triton splits it: `compute_input` tokenizing and
padding (0 when the API tokenizes, settings.tokenize: api), `compute_infer` the graph,
`compute_output` the scores and the reply. As in Triton, each row of a batch counts the batch's
durations in `inference_stats`; `batch_stats` counts each batch once. One API process's view
(settings.api_processes > 1: each process counts its own requests).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from app.core.batching import BatchStats

NS = 1_000_000_000


@dataclass
class Duration:
    """How many times something happened and its cumulated duration."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * NS)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class Compute:
    """The three parts of a batch's time in the worker."""

    input: Duration = field(default_factory=Duration)
    infer: Duration = field(default_factory=Duration)
    output: Duration = field(default_factory=Duration)

    def add(self, stats: BatchStats, count: int) -> None:
        """A batch's parts, counted `count` times (each of its rows, or the batch once)."""
        output = max(0.0, stats.seconds - stats.input_seconds - stats.infer_seconds)
        for part, seconds in ((self.input, stats.input_seconds),
                              (self.infer, stats.infer_seconds), (self.output, output)):
            part.add(seconds * count, count)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {"compute_input": self.input.as_dict(), "compute_infer": self.infer.as_dict(),
                "compute_output": self.output.as_dict()}


@dataclass
class VersionStatistics:
    """One model version's counts since it was first seen by this process."""

    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute: Compute = field(default_factory=Compute)  # per row
    batches: dict[int, Compute] = field(default_factory=dict)  # rows per batch -> its runs

    def as_triton(self, name: str, version: str) -> dict[str, Any]:
        """The extension's ModelStatistics object."""
        empty = Duration().as_dict()
        return {
            "name": name, "version": version, "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count, "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(), "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(), **self.compute.as_dict(), "cache_hit": empty,
                "cache_miss": empty},
            "batch_stats": [{"batch_size": size, **runs.as_dict()}
                            for size, runs in sorted(self.batches.items())],
            "memory_usage": [],
        }


def _name_version(key: str) -> tuple[str, str]:
    """(name, version) of a service key "name:version" (a reload adds "~generation")."""
    name, _, version = key.partition("~")[0].rpartition(":")
    return name, version


class Statistics:
    """Every model version's statistics in this process."""

    def __init__(self) -> None:
        self._versions: dict[tuple[str, str], VersionStatistics] = {}

    def _of(self, name: str, version: str) -> VersionStatistics:
        found = self._versions.get((name, version))
        if found is None:
            found = self._versions[(name, version)] = VersionStatistics()
        return found

    def request(self, name: str, version: str, status: int, seconds: float) -> None:
        """A classify request's outcome; requests no version answered are not a version's."""
        if not version:
            return
        stats = self._of(name, version)
        (stats.success if status == 200 else stats.fail).add(seconds)

    def batch(self, batch: BatchStats) -> None:
        """A batch of one model version that ran."""
        stats = self._of(*_name_version(batch.key))
        stats.last_inference_ms = int(time.time() * 1000)
        stats.inference_count += batch.rows
        stats.execution_count += 1
        stats.queue.add(sum(batch.queue_waits), batch.rows)
        stats.compute.add(batch, batch.rows)  # as Triton: each row counts its batch's time
        stats.batches.setdefault(batch.rows, Compute()).add(batch, 1)

    def version(self, name: str, version: str) -> VersionStatistics:
        """The statistics of one version (zeros when it has not served yet)."""
        return self._versions.get((name, version)) or VersionStatistics()
