"""The one classification path every protocol shares: look up, validate, tokenize, batch, score.

Protocol modules (server.py for /v1, oip.py for /v2) only translate their request and response
shapes; limits, batching, errors and metrics are decided here once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.batching import QueueFull
from app.repository import TaskModel
from app.schemas import ClientError, parse_inputs
from app.service import Service
from app.workers import WorkerError
from compress.encoding import EncodedText, encode, softmax


@dataclass(frozen=True)
class Classified:
    """Scores of a request's inputs, in input order."""

    task: str
    variant: str
    labels: list[str]
    rows: list[EncodedText]
    logits: np.ndarray  # [inputs, labels], float32
    probabilities: np.ndarray  # [inputs, labels], float64

    def best(self) -> list[tuple[str, float]]:
        """Label and probability of the top class of each input."""
        indices = self.probabilities.argmax(axis=-1)
        return [(self.labels[int(i)], float(self.probabilities[n, i]))
                for n, i in enumerate(indices)]


def task_model(service: Service, task: str) -> TaskModel:
    """The task's model, or a 404 naming the tasks this server has."""
    model = service.models.get(task)
    if model is None:
        raise ClientError(404, f"unknown task {task!r}; this server has: "
                               f"{', '.join(sorted(service.models))}")
    return model


async def classify(service: Service, task: str, raw_inputs: list[Any]) -> Classified:
    """Validate and classify texts or [text, text] pairs; raises ClientError with the status."""
    model = task_model(service, task)
    manifest = model.manifest
    inputs = parse_inputs(raw_inputs, manifest.input_kind, task, service.settings.limits)
    rows = encode(model.tokenizer, inputs)
    if service.settings.limits.truncation == "reject":
        too_long = [i for i, row in enumerate(rows) if row.truncated]
        if too_long:
            raise ClientError(413, f"inputs {too_long} exceed the model's {manifest.max_length} "
                                   "tokens; shorten them (this server does not truncate)")
    route = service.routes[task]
    try:
        logits = await service.batchers[route.pool].submit(task, rows)
    except QueueFull as exc:
        service.metrics.rejected.labels(task, "queue_full").inc()
        raise ClientError(429, f"server is at capacity ({exc}); retry shortly",
                          {"Retry-After": "1"}) from None
    except WorkerError as exc:
        raise ClientError(503, f"the model worker failed: {exc}; retry the request") from None
    stacked = np.stack(logits).astype(np.float32)
    return Classified(task=task, variant=route.variant, labels=manifest.labels, rows=rows,
                      logits=stacked, probabilities=softmax(stacked))


@contextmanager
def tracked(service: Service, task: str) -> Iterator[None]:
    """Count a classify request by task and final status, and time the successful ones."""
    started = time.perf_counter()
    status = 200
    try:
        yield
    except ClientError as exc:
        status = exc.status
        raise
    except Exception:
        status = 500
        raise
    finally:
        known = task if task in service.models else "_unknown"
        service.metrics.requests.labels(known, str(status)).inc()
        if status == 200:
            service.metrics.latency.labels(known).observe(time.perf_counter() - started)
