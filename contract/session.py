"""The one way this project opens an ONNX Runtime session to run a model (serving workers, the
build's evaluation, benchmarks): the same options everywhere, so a figure measured offline is the
figure served."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

# A provider as ONNX Runtime takes it: a name, or a name and its options (CUDA: device_id, ...).
Provider = str | tuple[str, dict[str, str]]


class ProviderUnavailable(RuntimeError):
    """An execution provider was asked for but the session runs without it."""


def provider_name(provider: Provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


def open_session(path: str | Path, threads: int | None = None,
                 providers: Sequence[Provider] = ("CPUExecutionProvider",),
                 spinning: bool | None = None) -> Any:
    """A session on `path`: `threads` intra-op threads (None: ORT's default, all cores), one
    inter-op thread, sequential execution; `spinning` False stops the intra-op threads from
    spinning after a run (None: ORT's default, they spin). Raises ProviderUnavailable when ORT
    silently falls back from a requested provider (e.g. CUDA without its libraries or a driver)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), options, providers=list(providers))
    active = session.get_providers()
    missing = [provider_name(p) for p in providers if provider_name(p) not in active]
    if missing:
        raise ProviderUnavailable(
            f"{', '.join(missing)} could not be initialised (the session runs on "
            f"{', '.join(active)}); check the GPU driver (nvidia-smi) and that the CUDA and cuDNN "
            "libraries onnxruntime-gpu needs are installed")
    return session
