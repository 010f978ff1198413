"""The one classification path every protocol shares: validate, tokenize, batch, score.

The protocol doors (api/v1.py, api/v2.py, behind api/handle.py) translate their request and
response shapes and map the typed errors raised here (core/errors.py) to their own codes; limits,
rows, batching and the deadline are decided here once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from app.core.answers import aggregation_for, fold_windows
from app.core.batching import Pending, QueueFull, Row, TextRow
from app.core.errors import (
    ClientGone,
    DeadlinePassed,
    InputTooLarge,
    InvalidRequest,
    Overloaded,
    ServingError,
    WorkerFailed,
)
from app.core.inputs import parse_inputs
from app.core.registry import Loaded
from app.core.repository import LoadedModel
from app.core.routing import pool_variant
from app.core.service import Service
from app.core.tracing import current_trace
from app.runtime.workers import WorkerError
from contract.artifact import ProblemType
from contract.encoding import (
    TextInput,
    WindowError,
    encode,
    encode_windows,
)

log = logging.getLogger(__name__)
# The response's variant when a request's inputs were answered by different variants (a hybrid
# task's short and long inputs, or rows that spilled): each result then names its own.
MIXED = "mixed"
TIMEOUT_HEADER = "X-Request-Timeout-Ms"
# A request's own choice for inputs over max_length (TEI's `truncate`): cut them, or refuse them;
# None: the server's limits.truncation.
Truncation = Literal["truncate", "reject"]


def deadline_for(service: Service, started: float, header: str | None,
                 protocol_timeout_s: float | None = None) -> float:
    """perf_counter() time by which the request must be answered.

    The server's `limits.request_timeout_s` is the ceiling; a client may ask for less with the
    X-Request-Timeout-Ms header (or the v2 `timeout` parameter), never for more.
    """
    limit = service.settings.limits.request_timeout_s
    asked: float | None = protocol_timeout_s
    if header is not None:
        try:
            asked = float(header) / 1000
        except ValueError:
            raise InvalidRequest(f"{TIMEOUT_HEADER} must be a number of milliseconds, "
                                 f"got {header!r}") from None
    if asked is not None and asked <= 0:
        raise InvalidRequest(f"the request timeout must be positive, got {asked * 1000:g} ms")
    return started + min(limit, asked if asked is not None else limit)


def priority_level(service: Service, asked: object) -> int:
    """The priority level a request asked for (v2's `parameters.priority`, /v1's X-Priority):
    1 is the highest; None or 0 (Triton's "default") is settings.priorities.default."""
    priorities = service.settings.priorities
    if asked is None or asked == 0:
        return priorities.default
    if isinstance(asked, str) and asked.strip().isdigit():
        asked = int(asked)
    if not isinstance(asked, int) or isinstance(asked, bool) or not 1 <= asked <= \
            priorities.levels:
        raise InvalidRequest(f"priority must be an integer from 1 (highest) to "
                             f"{priorities.levels}, or 0 for the default; got {asked!r}")
    return asked


@dataclass(frozen=True)
class Classified:
    """Scores of a request's inputs, in input order (a chunked input's windows folded)."""

    name: str  # the model's name
    version: int  # the version that answered
    variant: str  # the variant that answered every input, or MIXED
    labels: list[str]
    problem_type: ProblemType
    truncated: list[bool]
    chunks: list[int] | None  # windows per input when the server chunks long texts
    logits: np.ndarray  # [inputs, labels], float32
    probabilities: np.ndarray  # [inputs, labels], float64: softmax, or a sigmoid per label
    variants: list[str] | None = None  # per input, when not one variant answered them all

    def best(self) -> list[tuple[str, float]]:
        """Label and probability of the top class of each input."""
        indices = self.probabilities.argmax(axis=-1)
        return [(self.labels[int(i)], float(self.probabilities[n, i]))
                for n, i in enumerate(indices)]


async def classify(service: Service, loaded: Loaded, raw_inputs: list[Any],
                   deadline: float | None = None,
                   gone: asyncio.Future[None] | None = None,
                   truncation: Truncation | None = None, priority: int | None = None) \
        -> Classified:
    """Validate and classify texts or [text, text] pairs with one loaded version of a model,
    which the caller holds a lease on (`service.registry.lease`); raises the core's errors.
    `truncation` overrides the server's limits.truncation for this request; `priority` is its
    level (`priority_level`: 1 the highest; None: settings.priorities.default).

    One timer per request: at `deadline` (perf_counter time, default: now +
    limits.request_timeout_s) the request's future fails, even while its batch runs, and its rows
    that have not started are dropped; the same happens when `gone` (the client's disconnect)
    completes first.
    """
    trace = current_trace.get() if service.tracing is not None else None
    began = time.perf_counter()
    model = loaded.model
    name = model.served_name
    manifest = model.manifest
    inputs = parse_inputs(raw_inputs, manifest.input_kind, name, service.settings.limits)
    if service.settings.log_payloads:
        log.debug("payload for %s", name, extra={"model": name, "inputs": inputs})
    mode = truncation or service.settings.limits.truncation
    rows, counts = _rows(service, model, inputs, mode)
    route = loaded.route
    if deadline is None:
        deadline = time.perf_counter() + service.settings.limits.request_timeout_s
    if trace is not None:
        trace.child("validate", began, time.perf_counter(),
                    {"ffs.inputs": len(inputs), "ffs.rows": len(rows)})
    level = service.settings.priorities.default if priority is None else priority
    scored = await _scored_rows(service, loaded, rows, counts, deadline, gone, trace is not None,
                                level)
    if trace is not None:
        trace.answered = time.perf_counter()
        if scored.batches:
            trace.batches(scored.batches)
    stacked = _stacked(scored.results)
    variant, variants = (route.variant, None) if route.single_pool else \
        _answered_by(service, model.cpu_variant, scored.pools, counts)
    if counts is None:
        truncated = [row.truncated or cut for row, cut in zip(rows, scored.truncated, strict=True)]
        _refuse_truncated(model, truncated, mode)
        return Classified(name=name, version=model.version, variant=variant,
                          labels=manifest.labels,
                          problem_type=manifest.problem_type, truncated=truncated, chunks=None,
                          logits=stacked, probabilities=_stacked(scored.scores),
                          variants=variants)
    how = aggregation_for(manifest.problem_type, service.settings.limits.chunk_aggregation)
    folded, scores = fold_windows(stacked, counts, manifest.problem_type, how)
    return Classified(name=name, version=model.version, variant=variant,
                      labels=manifest.labels,
                      problem_type=manifest.problem_type, truncated=[False] * len(counts),
                      chunks=counts, logits=folded, probabilities=scores, variants=variants)


def _answered_by(service: Service, cpu_variant: str, pools: list[str],
                 counts: list[int] | None) -> tuple[str, list[str] | None]:
    """The variant that answered every input, or MIXED and each input's (a chunked input whose
    windows ran on two pools names both, joined by '+')."""
    names = {pool: pool_variant(pool, service.settings, cpu_variant)  # type: ignore[arg-type]
             for pool in set(pools)}
    if len(names) == 1:
        return next(iter(names.values())), None
    groups: list[list[str]] = []
    start = 0
    for size in counts if counts is not None else [1] * len(pools):
        groups.append(pools[start : start + size])
        start += size
    return MIXED, ["+".join(names[p] for p in dict.fromkeys(group)) for group in groups]


DEADLINE_MESSAGE = ("no answer within the request's deadline; it was dropped (raise "
                    "X-Request-Timeout-Ms, up to limits.request_timeout_s, or retry when the "
                    "server is less busy)")
GONE_MESSAGE = "the client disconnected before the answer"


async def _scored_rows(service: Service, loaded: Loaded, rows: Sequence[Row],
                       counts: list[int] | None, deadline: float,
                       gone: asyncio.Future[None] | None, traced: bool = False,
                       level: int = 1) -> Pending:
    """The rows' logits from the pools' batchers, within the deadline and while the client
    stays."""
    remaining = deadline - time.perf_counter()
    name = loaded.name
    try:
        if remaining <= 0:
            raise DeadlinePassed(DEADLINE_MESSAGE)
        assert service.dispatcher is not None, "the service was not started"
        answer = service.dispatcher.submit(loaded.route, rows, counts, traced, level)
        timer = asyncio.get_running_loop().call_later(remaining, _fail, answer, DeadlinePassed,
                                                      DEADLINE_MESSAGE)
        if gone is not None:
            gone.add_done_callback(functools.partial(_client_left, answer))
        try:
            return await answer
        finally:
            timer.cancel()
    except DeadlinePassed:
        service.metrics.rejected.labels(name, "deadline").inc()
        raise
    except QueueFull as exc:
        service.metrics.rejected.labels(name, "queue_full").inc()
        raise Overloaded(f"server is at capacity ({exc}); retry shortly") from None
    except WorkerError as exc:
        raise WorkerFailed(f"the model worker failed: {exc}; retry the request") from None


def _stacked(rows: list[np.ndarray]) -> np.ndarray:
    return rows[0][None, :] if len(rows) == 1 else np.stack(rows)  # one row: a view, no copy


def _fail(answer: asyncio.Future[Any], error: type[ServingError], message: str) -> None:
    if not answer.done():
        answer.set_exception(error(message))


def _client_left(answer: asyncio.Future[Any], watcher: asyncio.Future[None]) -> None:
    if not watcher.cancelled():
        _fail(answer, ClientGone, GONE_MESSAGE)


_WORDS = re.compile(r"\w+|[^\w\s]")


def estimated_length(text: TextInput, max_length: int) -> int:
    """Tokens a text will have, from its words and punctuation (5 us against ~70 us for the real
    tokenizer): within ~10% for WordPiece on SST-2, and used only to group rows of similar length
    (the worker pads to the real longest row)."""
    pieces = (text,) if isinstance(text, str) else text
    return min(max_length, sum(len(_WORDS.findall(p)) for p in pieces) + 1 + len(pieces))


def _rows(service: Service, model: LoadedModel, inputs: list[TextInput], mode: str) \
        -> tuple[Sequence[Row], list[int] | None]:
    """Rows for the batcher and, when long texts are chunked, how many windows belong to each
    input (None: one row per input)."""
    limits = service.settings.limits
    max_length = model.manifest.max_length
    # window_tokenizer is set exactly when limits.truncation is chunk; a request may opt out.
    chunking = mode == "chunk" and model.window_tokenizer is not None
    if not chunking and service.settings.tokenize == "workers":
        return [TextRow(text, estimated_length(text, max_length)) for text in inputs], None
    if not chunking:
        rows = encode(model.tokenizer, inputs)
        _refuse_truncated(model, [row.truncated for row in rows], mode)
        return rows, None
    assert model.window_tokenizer is not None
    try:
        windows = encode_windows(model.window_tokenizer, inputs)
    except WindowError:
        raise InputTooLarge(f"an input's first text alone exceeds the model's {max_length} "
                            "tokens; chunking cuts only the second text of a pair") from None
    too_many = [i for i, w in enumerate(windows) if len(w) > limits.max_chunks_per_input]
    if too_many:
        raise InputTooLarge(f"inputs {too_many} need more than {limits.max_chunks_per_input} "
                            f"windows of {max_length} tokens (limits.max_chunks_per_input); "
                            "split them")
    return [row for rows in windows for row in rows], [len(w) for w in windows]


def _refuse_truncated(model: LoadedModel, truncated: list[bool], mode: str) -> None:
    """truncation: reject refuses inputs over max_length (found by the API's tokenizer before
    the batch, or by the worker's after it)."""
    too_long = [i for i, cut in enumerate(truncated) if cut]
    if too_long and mode == "reject":
        raise InputTooLarge(f"inputs {too_long} exceed the model's "
                            f"{model.manifest.max_length} tokens; shorten them (this server "
                            "does not truncate)")
