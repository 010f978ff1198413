"""The SkipLayerNormalization benchmark runs end to end (its figures live in docs/benchmarks.md)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT, TinyRepo


def test_layernorm_bench_compares_the_fused_and_split_sessions_on_the_same_labels(
        tiny_repo: TinyRepo) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.layernorm", str(tiny_repo.root / "sst2"),
         "--data-dir", str(tiny_repo.data_dir), "--examples", "40", "--rounds", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    accuracies = re.findall(r"dev accuracy ([\d.]+)%", result.stdout)
    assert len(accuracies) == 2 and accuracies[0] == accuracies[1]
    assert "labels equal 100.00%" in result.stdout
    assert re.search(r"^b1: .* [\d.]+x \(rounds", result.stdout, re.MULTILINE)
    assert re.search(r"^b8: .* [\d.]+x \(rounds", result.stdout, re.MULTILINE)
