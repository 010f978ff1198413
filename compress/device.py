"""Where and how training runs: the device (CUDA when present), the precision (bf16 autocast where
the hardware computes it natively), and the number of CPU threads (the cores this job may use).

The choice is made once per command (`--device`, `--precision`, or FFS_TRAIN_DEVICE /
FFS_TRAIN_PRECISION) and passed to every training stage. Precision changes the numbers a stage
produces, so a non-fp32 precision is part of the stage's cache key; the device is not (a stage
built on a GPU is reused on a CPU machine).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

from contract.artifact import CompressError
from contract.cpu_features import cpu_flags
from contract.cpu_quota import usable_cores

Precision = Literal["fp32", "bf16"]
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
# CPU flags of native bf16 arithmetic: without them autocast to bf16 is emulated and slower.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


class DeviceError(CompressError):
    """The requested training device or precision is not available here."""


@dataclass(frozen=True)
class TrainRuntime:
    """The device, autocast precision and CPU threads of one training command."""

    device: str = "cpu"
    precision: Precision = "fp32"
    threads: int = 1

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision around a forward pass (a no-op in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)

    def move(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A batch on this runtime's device."""
        if self.device == "cpu":
            return batch
        return {name: value.to(self.device, non_blocking=True) for name, value in batch.items()}

    def key_part(self) -> dict[str, str]:
        """What a stage key must include: only a precision that changes the numbers."""
        return {} if self.precision == "fp32" else {"precision": self.precision}

    def apply(self) -> None:
        """Size torch's CPU thread pool for the cores this process may use."""
        torch.set_num_threads(self.threads)

    @property
    def bf16_logits(self) -> bool:
        """Whether a teacher's logits may be computed under bf16 autocast (CPU training in bf16;
        compress/teacher_engine.py still checks the labels)."""
        return self.device == "cpu" and self.precision == "bf16"

    def describe(self) -> str:
        return f"{self.device}, {self.precision}, {self.threads} CPU threads"


def native_bf16_cpu(flags: set[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    found = cpu_flags() if flags is None else flags
    return any(flag in found for flag in BF16_CPU_FLAGS)


def choose_runtime(device: str | None = None, precision: str | None = None,
                   threads: int | None = None, flags: set[str] | None = None) -> TrainRuntime:
    """Resolve `auto` (the default) against this machine: CUDA if torch sees a GPU, else the CPU;
    bf16 on a GPU that supports it or on a CPU with native bf16, else fp32."""
    device = (device or os.environ.get("FFS_TRAIN_DEVICE") or "auto").lower()
    precision = (precision or os.environ.get("FFS_TRAIN_PRECISION") or "auto").lower()
    if device not in DEVICES:
        raise DeviceError(f"device {device!r}: expected one of {', '.join(DEVICES)}")
    if precision not in PRECISIONS:
        raise DeviceError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise DeviceError("device cuda: torch sees no CUDA GPU (a CPU build of torch, or no "
                          "driver); use --device cpu or auto")
    resolved = "cuda" if device == "cuda" or (device == "auto" and cuda) else "cpu"
    if precision == "auto":
        native = torch.cuda.is_bf16_supported() if resolved == "cuda" else native_bf16_cpu(flags)
        precision = "bf16" if native else "fp32"
    cores = threads or len(usable_cores())
    return TrainRuntime(resolved, "bf16" if precision == "bf16" else "fp32", max(1, cores))


@contextlib.contextmanager
def on_device(model: torch.nn.Module, runtime: TrainRuntime) -> Iterator[torch.nn.Module]:
    """The model on the runtime's device while training, back on the CPU after (to be saved)."""
    model.to(runtime.device)
    try:
        yield model
    finally:
        model.to("cpu")
