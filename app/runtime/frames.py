"""Compact binary frames between the API process and a worker: a length, a fixed header, raw arrays.

No pickle and no JSON on the hot path: a batch is one `struct` header plus the feeds' bytes, a reply
one header plus the logits' bytes. Every frame starts with its length (4 bytes, little-endian), so
either side reads whole frames from a stream socket.

    batch   <I length> <B BATCH> <B slot> <H rows> <H width> <B inputs>  then inputs x int64[rows, width]
    texts   <I length> <B TEXTS> <B slot> <H rows> <B pair>  then per text <I bytes> UTF-8 (2 if pair)
    logits  <I length> <B LOGITS> <H rows> <H labels> <d seconds> <d input> <d infer>  (seconds in
            the worker for the batch, of which tokenizing and running the graph) then
            float32[rows, labels],
            float64[rows, labels] of scores (softmax or sigmoid, as the task's problem type says:
            computed once per batch in the worker, not per request in the API) and one byte per
            row: 1 where the worker's tokenizer truncated the text
    error   <I length> <B ERROR> then a UTF-8 message (the model refused the batch)
    ready   <I length> <B READY> then JSON {"pid", "cores"} (once, at start-up)
    failed  <I length> <B FAILED> then a UTF-8 message (the worker could not start, or could
            not load a model)
    load    <I length> <B LOAD> <B slot> then JSON of the model's file (a version loaded at run
            time; answered by ready, or failed)
    unload  <I length> <B UNLOAD> <B slot> (answered by ready)

Load and unload are rare control frames (a model version swapped at run time); JSON there costs
nothing that matters.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

BATCH, LOGITS, ERROR, READY, FAILED, TEXTS, LOAD, UNLOAD = 1, 2, 3, 4, 5, 6, 7, 8
LENGTH = struct.Struct("<I")
BATCH_HEADER = struct.Struct("<BBHHB")
LOGITS_HEADER = struct.Struct("<BHHddd")
TEXTS_HEADER = struct.Struct("<BBHB")
TEXT_LENGTH = struct.Struct("<I")
KIND = struct.Struct("<B")
CONTROL_HEADER = struct.Struct("<BB")


class FrameError(Exception):
    """A frame that does not follow this layout (a bug, or bytes from something else)."""


@dataclass(frozen=True)
class Batch:
    slot: int  # the model's index in the worker's list
    feeds: list[np.ndarray]  # int64 [rows, width] each, in the model's input order


@dataclass(frozen=True)
class Texts:
    slot: int  # the model's index in the worker's list
    texts: list[str | tuple[str, str]]


@dataclass(frozen=True)
class Load:
    slot: int
    model: dict[str, Any]  # the fields of a ModelFile


@dataclass(frozen=True)
class Unload:
    slot: int


@dataclass(frozen=True)
class Logits:
    logits: np.ndarray  # float32 [rows, labels]
    scores: np.ndarray  # float64 [rows, labels]
    seconds: float  # in the worker for the batch: tokenizer (texts frames), graph, scores
    truncated: np.ndarray  # bool [rows]
    input_seconds: float = 0.0  # of which tokenizing and padding (texts frames)
    infer_seconds: float = 0.0  # of which running the graph


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


def batch_frame(slot: int, feeds: Sequence[np.ndarray]) -> bytes:
    """One batch: the model's slot (index in the worker's model list) and its padded feeds."""
    rows, width = feeds[0].shape
    header = BATCH_HEADER.pack(BATCH, slot, rows, width, len(feeds))
    arrays = [np.ascontiguousarray(feed, dtype=np.int64).tobytes() for feed in feeds]
    return _framed(header + b"".join(arrays))


def texts_frame(slot: int, texts: Sequence[str | tuple[str, str]]) -> bytes:
    """Texts for a worker that tokenizes itself (all single texts, or all pairs)."""
    pair = not isinstance(texts[0], str)
    parts = [TEXTS_HEADER.pack(TEXTS, slot, len(texts), int(pair))]
    for text in texts:
        for piece in ((text,) if isinstance(text, str) else text):
            raw = piece.encode("utf-8")
            parts += [TEXT_LENGTH.pack(len(raw)), raw]
    return _framed(b"".join(parts))


def logits_frame(logits: np.ndarray, scores: np.ndarray, seconds: float,
                 truncated: np.ndarray | None = None, input_seconds: float = 0.0,
                 infer_seconds: float = 0.0) -> bytes:
    rows, labels = logits.shape
    values = np.ascontiguousarray(logits, dtype=np.float32).tobytes()
    probabilities = np.ascontiguousarray(scores, dtype=np.float64).tobytes()
    flags = bytes(rows) if truncated is None else np.asarray(truncated, np.uint8).tobytes()
    return _framed(LOGITS_HEADER.pack(LOGITS, rows, labels, seconds, input_seconds,
                                      infer_seconds) + values + probabilities + flags)


def message_frame(kind: int, message: str) -> bytes:
    return _framed(KIND.pack(kind) + message.encode("utf-8", "replace"))


def ready_frame(pid: int, cores: list[int]) -> bytes:
    return _framed(KIND.pack(READY) + json.dumps({"pid": pid, "cores": cores}).encode())


def load_frame(slot: int, model: dict[str, Any]) -> bytes:
    """Load a model into `slot` of the worker (a slot is what batch and texts frames name)."""
    return _framed(CONTROL_HEADER.pack(LOAD, slot) + json.dumps(model).encode())


def unload_frame(slot: int) -> bytes:
    return _framed(CONTROL_HEADER.pack(UNLOAD, slot))


def parse_work(body: memoryview) -> Batch | Texts | Load | Unload:
    """A frame the API process sends a worker: padded feeds, texts to tokenize, or a load or
    unload of a model."""
    if body[0] == TEXTS:
        return _parse_texts(body)
    if body[0] in (LOAD, UNLOAD):
        kind, slot = CONTROL_HEADER.unpack_from(body)
        if kind == UNLOAD:
            return Unload(slot)
        return Load(slot, json.loads(bytes(body[CONTROL_HEADER.size:])))
    kind, slot, rows, width, count = BATCH_HEADER.unpack_from(body)
    if kind != BATCH:
        raise FrameError(f"expected a batch frame, got kind {kind}")
    size = rows * width * 8
    if len(body) != BATCH_HEADER.size + count * size:
        raise FrameError(f"batch frame of {len(body)} bytes does not hold {count} x "
                         f"[{rows}, {width}] int64 arrays")
    feeds = [np.frombuffer(body, np.int64, rows * width, BATCH_HEADER.size + i * size)
             .reshape(rows, width) for i in range(count)]
    return Batch(slot, feeds)


def _parse_texts(body: memoryview) -> Texts:
    _, slot, rows, pair = TEXTS_HEADER.unpack_from(body)
    offset = TEXTS_HEADER.size
    pieces = []
    for _ in range(rows * (2 if pair else 1)):
        (size,) = TEXT_LENGTH.unpack_from(body, offset)
        offset += TEXT_LENGTH.size
        pieces.append(bytes(body[offset:offset + size]).decode("utf-8"))
        offset += size
    if offset != len(body):
        raise FrameError(f"texts frame of {len(body)} bytes holds {offset} bytes of texts")
    texts: list[str | tuple[str, str]] = list(pieces) if not pair else \
        [(pieces[i], pieces[i + 1]) for i in range(0, len(pieces), 2)]
    return Texts(slot, texts)


def parse_reply(body: bytes | memoryview) -> Logits | Failure | Ready:
    """A worker's frame: logits of a batch, an error message, or its start-up report."""
    kind = body[0]
    if kind == LOGITS:
        _, rows, labels, seconds, input_seconds, infer_seconds = LOGITS_HEADER.unpack_from(body)
        offset = LOGITS_HEADER.size
        logits = np.frombuffer(body, np.float32, rows * labels, offset)
        offset += 4 * rows * labels
        scores = np.frombuffer(body, np.float64, rows * labels, offset)
        flags = np.frombuffer(body, np.uint8, rows, offset + 8 * rows * labels)
        return Logits(logits.reshape(rows, labels), scores.reshape(rows, labels), seconds,
                      flags.astype(bool), input_seconds, infer_seconds)
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
