"""What the CPU computes with: its feature flags, and the family of integer kernels ONNX Runtime
picks on it for INT8 (MLAS dispatches by these flags).

Integer kernels differ by family: VNNI and AMX accumulate u8 x s8 products exactly in int32,
AVX2 goes through a 16-bit intermediate (vpmaddubsw) that can saturate. The same INT8 graph can
therefore answer differently on two CPU families; an artifact records the family it was built
and checked on, and the server compares its own answers at load (the golden check).
"""

from __future__ import annotations

import platform
from pathlib import Path

# Most capable first: the first family whose flags are all present is the one MLAS uses.
X86_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("amx-int8", ("amx_int8", "amx_tile")),
    ("avx512-vnni", ("avx512_vnni",)),
    ("avx-vnni", ("avx_vnni",)),
    ("avx512bw", ("avx512bw",)),
    ("avx2", ("avx2",)),
    ("sse4.1", ("sse4_1",)),
)
ARM_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("arm-i8mm", ("i8mm",)),
    ("arm-dotprod", ("asimddp",)),
    ("arm-neon", ("asimd",)),
)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (x86 `flags`, Arm `Features`); empty where unreadable."""
    try:
        text = cpuinfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


def int8_kernel_family(flags: set[str] | None = None, machine: str | None = None) -> str:
    """The integer-kernel family of this CPU (e.g. avx512-vnni, avx2, arm-dotprod)."""
    found = cpu_flags() if flags is None else flags
    arch = (machine or platform.machine()).lower()
    families = ARM_FAMILIES if arch in ("aarch64", "arm64") else X86_FAMILIES
    for name, needed in families:
        if all(flag in found for flag in needed):
            return name
    return f"{arch}-generic"


def cpu_model_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (x86 `model name`, else the machine type)."""
    try:
        text = cpuinfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine() or "unknown"
