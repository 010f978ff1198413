"""`python -m bench`: one entry point for every benchmark and deploy check."""

from __future__ import annotations

import pytest

from bench.__main__ import BENCHMARKS, entry_point, main


def test_without_a_name_it_lists_every_benchmark_and_fails(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    listed = capsys.readouterr().out
    assert all(f"  {name} " in listed for name in BENCHMARKS)


def test_an_unknown_name_is_refused_with_the_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nonesuch"]) == 2
    assert "no benchmark 'nonesuch'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_each_benchmark_answers_help_under_its_own_name(
        name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        entry_point(name)(["--help"])
    assert exit_.value.code == 0
    assert f"python -m bench {name}" in capsys.readouterr().out
