"""The serving-overhead benchmark runs end to end (its figures live in docs/benchmarks-log.md)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, TinyRepo, free_port


def test_overhead_benchmark_prints_the_http_to_in_process_ratio(tiny_repo: TinyRepo) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "overhead", "--artifact", str(tiny_repo.root / "sst2"),
         "--data-dir", str(tiny_repo.data_dir), "--texts", "40", "--rounds", "1",
         "--client", "httpx", "--concurrency", "4", "--port", str(free_port())],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert "HTTP / in-process:" in result.stdout
    assert "round 1: in-process" in result.stdout
