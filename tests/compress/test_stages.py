"""The stage cache of recipe runs: reuse on the same key, rebuild on changed settings or data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.stages import examples_digest, read_record, run_stage
from compress.tasks import Examples


def _counting_build(calls: list[Path]) -> Any:
    def build(folder: Path) -> dict[str, Any]:
        calls.append(folder)
        (folder / "out.txt").write_text("made")
        return {"rows": 3}

    return build


def test_a_stage_with_the_same_key_is_reused(tmp_path: Path) -> None:
    calls: list[Path] = []
    first = run_stage(tmp_path / "s", {"lr": 1}, _counting_build(calls))
    again = run_stage(tmp_path / "s", {"lr": 1}, _counting_build(calls))
    assert len(calls) == 1 and first.key == again.key and again.record == {"rows": 3}


def test_a_changed_setting_rebuilds_the_stage(tmp_path: Path) -> None:
    calls: list[Path] = []
    run_stage(tmp_path / "s", {"lr": 1}, _counting_build(calls))
    run_stage(tmp_path / "s", {"lr": 2}, _counting_build(calls))
    assert len(calls) == 2


def test_the_record_is_typed_and_read_back(tmp_path: Path) -> None:
    stage = run_stage(tmp_path / "s", {"lr": 1}, _counting_build([]))
    record = read_record(stage.folder)
    assert record is not None and record.key == stage.key and record.details == {"rows": 3}
    assert record.seconds >= 0 and read_record(tmp_path / "missing") is None


def test_data_keys_hash_the_rows_not_their_count() -> None:
    one = Examples(["a good film", "a bad film"], [1, 0])
    other = Examples(["a good film", "a dull film"], [1, 0])
    relabelled = Examples(["a good film", "a bad film"], [1, 1])
    digests = {examples_digest(e) for e in (one, other, relabelled)}
    assert len(digests) == 3 and examples_digest(one) == examples_digest(Examples(
        ["a good film", "a bad film"], [1, 0]))
