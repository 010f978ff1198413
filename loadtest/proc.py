"""CPU a local server spends, read from /proc: its API process(es) and its workers, apart.

The client stays black-box: it only needs the server's pid (the process it started, or
`--server-pid`), and tells API from workers by the process tree: one API process has the workers
as children; a tier's supervisor has API processes, whose children are the workers.
"""

from __future__ import annotations

import os

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            tree.setdefault(parent, []).append(int(entry))
    return tree


def api_and_workers(root: int) -> tuple[list[int], list[int]]:
    """The API process(es) and the worker processes of a server started as `root`: one API
    process has the workers as children; a tier's supervisor has API processes with workers."""
    tree = _children()
    first = tree.get(root, [])
    second = [pid for parent in first for pid in tree.get(parent, [])]
    if second:
        return [root, *first], second
    return [root], first


class ServerCpu:
    """CPU seconds of a server's API and worker processes since this object was made."""

    def __init__(self, root: int) -> None:
        self.api, self.workers = api_and_workers(root)
        self._start = self._now()

    def _now(self) -> tuple[float, float]:
        return (sum(_alive_cpu(p) for p in self.api), sum(_alive_cpu(p) for p in self.workers))

    def spent(self) -> tuple[float, float]:
        """(API seconds, worker seconds) since creation."""
        now = self._now()
        return now[0] - self._start[0], now[1] - self._start[1]


def _alive_cpu(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:  # it exited meanwhile (a restarted worker): its CPU is no longer countable
        return 0.0
