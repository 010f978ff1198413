"""Worker count follows the container's CPU quota, not the host's core count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from contract.cpu_quota import cgroup_cpu_limit, usable_cores


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="ascii")


def test_cgroup_v2_quota_is_read_as_cpus(tmp_path: Path) -> None:
    _write(tmp_path / "cpu.max", "150000 100000")
    assert cgroup_cpu_limit(tmp_path) == 1.5


def test_cgroup_v2_without_a_quota_is_unlimited(tmp_path: Path) -> None:
    _write(tmp_path / "cpu.max", "max 100000")
    assert cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_cfs_quota_is_read_as_cpus(tmp_path: Path) -> None:
    _write(tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us", "200000")
    _write(tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us", "100000")
    assert cgroup_cpu_limit(tmp_path) == 2.0


def test_cgroup_v1_minus_one_is_unlimited(tmp_path: Path) -> None:
    _write(tmp_path / "cpu" / "cpu.cfs_quota_us", "-1")
    _write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000")
    assert cgroup_cpu_limit(tmp_path) is None


def test_no_cgroup_files_means_unlimited(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None
    assert usable_cores(tmp_path) == sorted(os.sched_getaffinity(0))


def test_quota_caps_the_cores_rounding_down_but_keeps_one(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)))
    _write(tmp_path / "cpu.max", "250000 100000")
    assert usable_cores(tmp_path) == [0, 1]
    _write(tmp_path / "cpu.max", "50000 100000")
    assert usable_cores(tmp_path) == [0]
