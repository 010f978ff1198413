"""Counts and times per model version, in the terms of Triton's statistics extension (what its
perf_analyzer and dashboards read from /v2/models/stats).

Recorded at the same two points as the Prometheus metrics (a request's final status, a batch that
ran), so the two agree: `success` / `fail` are requests (end to end), `queue` the rows' waits for
their batch, `compute_infer` the workers' time per batch (tokenizer and model), `inference_count`
the rows run and `execution_count` the batches. Input and output are not timed apart from the
inference (the worker tokenizes and scores in one call): their durations are 0. One API process's
view (settings.api_processes > 1: each process counts its own requests).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

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
class VersionStatistics:
    """One model version's counts since it was first seen by this process."""

    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    batches: dict[int, Duration] = field(default_factory=dict)  # rows per batch -> its runs

    def as_triton(self, name: str, version: str) -> dict[str, Any]:
        """The extension's ModelStatistics object."""
        rows = Duration(self.queue.count, 0)  # input and output: counted, not timed apart
        empty = Duration().as_dict()
        return {
            "name": name, "version": version, "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count, "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(), "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(), "compute_input": rows.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": rows.as_dict(), "cache_hit": empty, "cache_miss": empty},
            "batch_stats": [
                {"batch_size": size, "compute_input": Duration(runs.count, 0).as_dict(),
                 "compute_infer": runs.as_dict(),
                 "compute_output": Duration(runs.count, 0).as_dict()}
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

    def batch(self, key: str, rows: int, waits: list[float], seconds: float) -> None:
        """A batch of `rows` rows of one model version ran in `seconds` after `waits`."""
        stats = self._of(*_name_version(key))
        stats.last_inference_ms = int(time.time() * 1000)
        stats.inference_count += rows
        stats.execution_count += 1
        stats.queue.add(sum(waits), rows)
        stats.compute_infer.add(seconds * rows, rows)  # as Triton: each row's batch time
        stats.batches.setdefault(rows, Duration()).add(seconds)

    def version(self, name: str, version: str) -> VersionStatistics:
        """The statistics of one version (zeros when it has not served yet)."""
        return self._versions.get((name, version)) or VersionStatistics()
