"""The one way this project opens an ONNX Runtime session to run a model (serving workers, the
build's evaluation, benchmarks): the same options everywhere, so a figure measured offline is the
figure served."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

# A provider as ONNX Runtime takes it: a name, or a name and its options (CUDA: device_id, ...).
Provider = str | tuple[str, dict[str, str]]


# Fusions a CPU-only session does without. SkipLayerNormFusion: ORT's CPU SkipLayerNormalization is
# a scalar loop, several times slower than the Add + LayerNormalization it replaces (the build
# splits it in CPU graphs, compress/optimize.py; this keeps ORT from fusing them back at load).
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


class ProviderUnavailable(RuntimeError):
    """An execution provider was asked for but the session runs without it."""


def provider_name(provider: Provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


def default_disabled_optimizers(providers: Sequence[Provider]) -> tuple[str, ...]:
    """The ORT graph optimizations a session on `providers` goes without."""
    cpu_only = all(provider_name(p) == "CPUExecutionProvider" for p in providers)
    return CPU_DISABLED_OPTIMIZERS if cpu_only else ()


def open_session(path: str | Path, threads: int | None = None,
                 providers: Sequence[Provider] = ("CPUExecutionProvider",),
                 spinning: bool | None = None,
                 disabled_optimizers: Sequence[str] | None = None) -> Any:
    """A session on `path`: `threads` intra-op threads (None: ORT's default, all cores), one
    inter-op thread, sequential execution, ORT's graph optimizations but `disabled_optimizers`
    (None: `default_disabled_optimizers`); `spinning` False stops
    the intra-op threads from spinning after a run (None: ORT's default, they spin). Raises
    ProviderUnavailable when ORT silently falls back from a requested provider (e.g. CUDA without
    its libraries or a driver)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if disabled_optimizers is None:
        disabled_optimizers = default_disabled_optimizers(providers)
    session = ort.InferenceSession(str(path), options, providers=list(providers),
                                   disabled_optimizers=list(disabled_optimizers) or None)
    active = session.get_providers()
    missing = [provider_name(p) for p in providers if provider_name(p) not in active]
    if missing:
        raise ProviderUnavailable(
            f"{', '.join(missing)} could not be initialised (the session runs on "
            f"{', '.join(active)}); check the GPU driver (nvidia-smi) and that the CUDA and cuDNN "
            "libraries onnxruntime-gpu needs are installed")
    return session
