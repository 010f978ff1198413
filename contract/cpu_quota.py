"""How many cores this process may really use: affinity, capped by a cgroup CPU quota (the
serving pool sizes its workers by it, training sets its threads by it).

`docker run --cpus=2` (or a Kubernetes CPU limit) does not change the affinity mask: a container
on a 16-core host sees 16 cores but gets the time of 2. Sizing the worker pool from the mask would
start 16 pinned workers that throttle each other, so the quota caps the count.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs granted by the cgroup quota (v2 `cpu.max`, else v1 CFS files); None if unlimited."""
    v2 = root / "cpu.max"
    if v2.is_file():
        quota_text, _, period_text = v2.read_text(encoding="ascii").strip().partition(" ")
        if quota_text == "max" or not period_text:
            return None
        return int(quota_text) / int(period_text)
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        quota_file, period_file = folder / "cpu.cfs_quota_us", folder / "cpu.cfs_period_us"
        if quota_file.is_file() and period_file.is_file():
            quota = int(quota_file.read_text(encoding="ascii").strip())
            period = int(period_file.read_text(encoding="ascii").strip())
            return None if quota <= 0 or period <= 0 else quota / period
    return None


def usable_cores(root: Path = CGROUP_ROOT) -> list[int]:
    """The affinity cores, cut to the quota (rounded down, at least one) when there is one."""
    allowed = sorted(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(root)
    if limit is None:
        return allowed
    return allowed[: max(1, min(len(allowed), math.floor(limit)))]
