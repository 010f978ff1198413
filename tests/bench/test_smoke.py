"""The benchmarks without a test of their own run end to end on the tiny model (their figures come
from full runs: docs/benchmarks.md). Loopback only; each stops by itself."""

from __future__ import annotations

import pytest

from bench.__main__ import entry_point
from tests.conftest import TinyRepo


def test_serving_core_one_client_prints_http_beside_in_process(
        tiny_repo: TinyRepo, capsys: pytest.CaptureFixture[str]) -> None:
    assert entry_point("serving-core")(
        ["--data-dir", str(tiny_repo.data_dir), "--rounds", "1", "one-client", "--artifact",
         str(tiny_repo.root / "sst2"), "--requests", "20", "--gaps", "0"]) == 0
    out = capsys.readouterr().out
    assert "in-process p50" in out and "HTTP p50" in out and "API CPU" in out


def test_int8_compares_the_variants_with_fp32_on_the_same_texts(
        tiny_repo: TinyRepo, capsys: pytest.CaptureFixture[str]) -> None:
    assert entry_point("int8")(
        [str(tiny_repo.root / "sst2"), "--data-dir", str(tiny_repo.data_dir), "--rounds", "1",
         "--speed-examples", "20", "--calibration", "40"]) == 0
    out = capsys.readouterr().out
    assert "fp32" in out and "int8 static s7 a0.8" in out and "int8 static s8 a0.8" in out
