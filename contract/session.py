"""The one way this project opens an ONNX Runtime session to run a model (serving workers, the
build's evaluation, benchmarks): the same options everywhere, so a figure measured offline is the
figure served."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def open_session(path: str | Path, threads: int | None = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",)) -> Any:
    """A session on `path`: `threads` intra-op threads (None: ORT's default, all cores), one
    inter-op thread, sequential execution."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=list(providers))
