"""Prometheus metrics of the service, on a registry of its own (one per app instance).

With several API processes (settings.api_processes) the tier sets PROMETHEUS_MULTIPROC_DIR before
it starts them: every process then writes its values to files there, and whichever process a
scrape reaches answers for all of them (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from app.core.batching import BatchStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LENGTH_BUCKETS = (8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # The label "task" holds the model's name (its name since the dashboards were built:
        # docs/deployment.md); version: the version that answered ("" when none did).
        self.requests = Counter("ffs_requests_total", "Classify requests by model, version and "
                                "HTTP status", ["task", "version", "status"], registry=r)
        self.latency = Histogram("ffs_request_latency_seconds", "Classify latency, end to end",
                                 ["task", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("ffs_queue_wait_seconds", "Time a row waited for its batch",
                                    ["pool"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("ffs_batch_size", "Rows per executed batch", ["pool"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_length = Histogram("ffs_batch_padded_length",
                                      "Sequence length each batch was padded to", ["pool"],
                                      buckets=LENGTH_BUCKETS, registry=r)
        self.batch_tokens = Histogram("ffs_batch_tokens", "Rows x padded length per batch",
                                      ["pool"], buckets=TOKEN_BUCKETS, registry=r)
        self.inference = Histogram("ffs_inference_seconds", "Model time per batch in the worker",
                                   ["pool"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("ffs_queue_depth", "Rows waiting for a batch", ["pool"],
                                 registry=r, multiprocess_mode="livesum")
        self.worker_restarts = Counter("ffs_worker_restarts_total", "Workers restarted", ["pool"],
                                       registry=r)
        self.dropped_rows = Counter("ffs_rows_dropped_total", "Rows dropped before they ran "
                                    "(request timed out or its client left)", ["pool"],
                                    registry=r)
        self.disconnects = Counter("ffs_client_disconnects_total", "Requests whose client left "
                                   "before the answer", ["task"], registry=r)
        self.rejected = Counter("ffs_rejected_requests_total", "Requests refused before running",
                                ["task", "reason"], registry=r)
        self.route_fallback = Gauge("ffs_route_fallback", "1 when a model runs on another pool "
                                    "than configured", ["task", "requested", "actual"],
                                    registry=r, multiprocess_mode="max")

        self.spilled_rows = Counter("ffs_rows_spilled_total", "Rows run on another pool than "
                                    "their route's because theirs was down or saturated",
                                    ["task", "from_pool", "to_pool", "reason"], registry=r)
        self.model_loads = Counter("ffs_model_loads_total", "Model versions loaded or refused at "
                                   "run time, by model and outcome (loaded, failed)",
                                   ["task", "outcome"], registry=r)
        self.version_ready = Gauge("ffs_model_version_ready", "1 while a model version serves",
                                   ["task", "version"], registry=r, multiprocess_mode="max")
        self.golden_match = Gauge(
            "ffs_golden_match", "1 when a CPU variant answers its golden texts on this CPU as "
            "recorded (where its accuracy was measured), 0 when it differs; served: the variant "
            "the CPU pool runs for this version (golden_mismatch)",
            ["task", "version", "variant", "served"], registry=r, multiprocess_mode="max")
        self.bulk_lines = Counter("ffs_bulk_lines_total", "Lines of bulk requests answered, "
                                  "by model and outcome (answered, error)", ["task", "outcome"],
                                  registry=r)
        self.pool_ready = Gauge("ffs_pool_ready", "1 while the pool has a live worker", ["pool"],
                                registry=r, multiprocess_mode="max")

        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._pool_children: dict[str, tuple[Any, ...]] = {}

    def count_dropped(self, pool: str, rows: int) -> None:
        self.dropped_rows.labels(pool).inc(rows)

    def start_series(self, pool: str, names: list[str], spills: dict[str, tuple[str, str]]) \
            -> None:
        """Create the counters a pool and the models it serves may raise at 0, so that their
        series exist (and dashboards show 0, not "no data") before the first event. `spills`:
        model name -> (from pool, to pool)."""
        self.dropped_rows.labels(pool)
        self.worker_restarts.labels(pool)
        self.queue_depth.labels(pool).set(0)
        self.pool_ready.labels(pool)
        for name in names:
            for reason in ("queue_full", "deadline"):
                self.rejected.labels(name, reason)
            for outcome in ("answered", "error"):
                self.bulk_lines.labels(name, outcome)
            if name in spills:
                for reason in ("down", "saturated"):
                    self.spilled_rows.labels(name, *spills[name], reason)

    def count_spill(self, name: str, source: str, target: str, reason: str, rows: int) -> None:
        self.spilled_rows.labels(name, source, target, reason).inc(rows)

    def count_restart(self, pool: str) -> None:
        self.worker_restarts.labels(pool).inc()

    def exposition(self) -> bytes:
        """The text a scrape gets: this process's registry, or every API process's values."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)

    def observe_batch(self, pool: str, stats: BatchStats) -> None:
        depth, size, length, tokens, inference, wait = self._batch_children(pool)
        depth.set(stats.queue_depth)
        size.observe(stats.rows)
        length.observe(stats.padded_length)
        tokens.observe(stats.rows * stats.padded_length)
        inference.observe(stats.seconds)
        for seconds in stats.queue_waits:
            wait.observe(seconds)

    def observe_request(self, name: str, version: str, status: int, seconds: float) -> None:
        """One classify request's final status (and its latency when it succeeded)."""
        children = self._request_children.get((name, version, status))
        if children is None:  # labels() takes a lock and builds a key: once per label set
            # A latency series only for answers: a refusal's empty one (no version) would show
            # on the dashboard as a series of nothing.
            children = (self.requests.labels(name, version, str(status)),
                        self.latency.labels(name, version) if status == 200 else None)
            self._request_children[(name, version, status)] = children
        children[0].inc()
        if children[1] is not None:
            children[1].observe(seconds)

    def _batch_children(self, pool: str) -> tuple[Any, ...]:
        children = self._pool_children.get(pool)
        if children is None:
            children = (self.queue_depth.labels(pool), self.batch_size.labels(pool),
                        self.batch_length.labels(pool), self.batch_tokens.labels(pool),
                        self.inference.labels(pool), self.queue_wait.labels(pool))
            self._pool_children[pool] = children
        return children
