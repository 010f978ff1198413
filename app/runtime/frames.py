"""Compact binary frames between the API process and a worker: a length, a fixed header, raw arrays.

No pickle and no JSON on the hot path: a batch is one `struct` header plus the feeds' bytes, a reply
one header plus the logits' bytes. Every frame starts with its length (4 bytes, little-endian), so
either side reads whole frames from a stream socket.

    batch   <I length> <B BATCH> <B task> <H rows> <H width> <B inputs>  then inputs x int64[rows, width]
    logits  <I length> <B LOGITS> <H rows> <H labels> <d seconds>       then float32[rows, labels]
    error   <I length> <B ERROR> then a UTF-8 message (the model refused the batch)
    ready   <I length> <B READY> then JSON {"pid", "cores"} (once, at start-up)
    failed  <I length> <B FAILED> then a UTF-8 message (the worker could not start)
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BATCH, LOGITS, ERROR, READY, FAILED = 1, 2, 3, 4, 5
LENGTH = struct.Struct("<I")
BATCH_HEADER = struct.Struct("<BBHHB")
LOGITS_HEADER = struct.Struct("<BHHd")
KIND = struct.Struct("<B")


class FrameError(Exception):
    """A frame that does not follow this layout (a bug, or bytes from something else)."""


@dataclass(frozen=True)
class Batch:
    task: int
    feeds: list[np.ndarray]  # int64 [rows, width] each, in the model's input order


@dataclass(frozen=True)
class Logits:
    logits: np.ndarray  # float32 [rows, labels]
    seconds: float  # inside the model call


@dataclass(frozen=True)
class Failure:
    kind: int  # ERROR (the batch failed) or FAILED (the worker could not start)
    message: str


@dataclass(frozen=True)
class Ready:
    pid: int
    cores: list[int]


def _framed(body: bytes) -> bytes:
    return LENGTH.pack(len(body)) + body


def batch_frame(task: int, feeds: Sequence[np.ndarray]) -> bytes:
    """One batch: the task's index in the worker's model list and its padded feeds."""
    rows, width = feeds[0].shape
    header = BATCH_HEADER.pack(BATCH, task, rows, width, len(feeds))
    arrays = [np.ascontiguousarray(feed, dtype=np.int64).tobytes() for feed in feeds]
    return _framed(header + b"".join(arrays))


def logits_frame(logits: np.ndarray, seconds: float) -> bytes:
    rows, labels = logits.shape
    values = np.ascontiguousarray(logits, dtype=np.float32).tobytes()
    return _framed(LOGITS_HEADER.pack(LOGITS, rows, labels, seconds) + values)


def message_frame(kind: int, message: str) -> bytes:
    return _framed(KIND.pack(kind) + message.encode("utf-8", "replace"))


def ready_frame(pid: int, cores: list[int]) -> bytes:
    return _framed(KIND.pack(READY) + json.dumps({"pid": pid, "cores": cores}).encode())


def parse_batch(body: memoryview) -> Batch:
    kind, task, rows, width, count = BATCH_HEADER.unpack_from(body)
    if kind != BATCH:
        raise FrameError(f"expected a batch frame, got kind {kind}")
    size = rows * width * 8
    if len(body) != BATCH_HEADER.size + count * size:
        raise FrameError(f"batch frame of {len(body)} bytes does not hold {count} x "
                         f"[{rows}, {width}] int64 arrays")
    feeds = [np.frombuffer(body, np.int64, rows * width, BATCH_HEADER.size + i * size)
             .reshape(rows, width) for i in range(count)]
    return Batch(task, feeds)


def parse_reply(body: bytes | memoryview) -> Logits | Failure | Ready:
    """A worker's frame: logits of a batch, an error message, or its start-up report."""
    kind = body[0]
    if kind == LOGITS:
        _, rows, labels, seconds = LOGITS_HEADER.unpack_from(body)
        logits = np.frombuffer(body, np.float32, rows * labels, LOGITS_HEADER.size)
        return Logits(logits.reshape(rows, labels), seconds)
    text = bytes(body[KIND.size:]).decode("utf-8", "replace")
    if kind in (ERROR, FAILED):
        return Failure(kind, text)
    if kind == READY:
        fields = json.loads(text)
        return Ready(int(fields["pid"]), [int(c) for c in fields["cores"]])
    raise FrameError(f"unknown frame kind {kind}")


class FrameBuffer:
    """Collects stream bytes and yields whole frame bodies as they complete."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._data += data
        bodies = []
        while len(self._data) >= LENGTH.size:
            (size,) = LENGTH.unpack_from(self._data)
            end = LENGTH.size + size
            if len(self._data) < end:
                break
            bodies.append(bytes(self._data[LENGTH.size:end]))
            del self._data[:end]
        return bodies
