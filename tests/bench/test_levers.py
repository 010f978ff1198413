"""`python -m bench levers`: the accuracy levers side by side on the tiny task, with one teacher,
one logit cache and one step budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import levers
from compress.device import TrainRuntime
from compress.pipeline import task_splits
from compress.recipe import Recipe
from compress.stages import read_record
from tests.compress.test_recipe_run import _recipe
from tests.conftest import TinyRepo

INTERMEDIATE = {"epochs": 1, "batch_size": 16, "learning_rate": 2e-3, "max_length": 64,
                "hidden_weight": 1.0, "attention_weight": 1.0, "logit_weight": 0.0}


@pytest.fixture(scope="module")
def measured(tiny_repo: TinyRepo, tmp_path_factory: pytest.TempPathFactory) -> \
        tuple[Recipe, list[levers.LeverRow]]:
    base = _recipe(tiny_repo, tmp_path_factory.mktemp("levers") / "run",
                   augment={"copies": 2, "min_words": 4, "max_sources": 150},
                   student__intermediate=INTERMEDIATE)
    return base, levers.measure(base, None, TrainRuntime("cpu", "fp32", 1), log=lambda _: None)


def test_every_lever_gets_a_scored_row_in_order(
        measured: tuple[Recipe, list[levers.LeverRow]]) -> None:
    _, rows = measured
    assert [row.lever for row in rows] == list(levers.LEVERS)
    for row in rows:
        assert 0.5 <= row.fp32_accuracy <= 1.0 and 0.5 <= row.int8_accuracy <= 1.0


def test_every_row_trains_its_prediction_layer_for_the_same_number_of_steps(
        tiny_repo: TinyRepo, measured: tuple[Recipe, list[levers.LeverRow]]) -> None:
    base, rows = measured
    train, _, _ = task_splits(base, None)  # train less the validation split held out of it
    assert {row.steps for row in rows} == {base.distil.steps_for(len(train))}


def test_only_the_rows_with_a_lever_pay_for_its_stage(
        measured: tuple[Recipe, list[levers.LeverRow]]) -> None:
    _, rows = measured
    built = [set(row.seconds) for row in rows]
    assert built == [{"student"}, {"augment", "student"}, {"student-intermediate", "student"},
                     {"augment", "student-intermediate", "student"}]
    assert all(row.cpu_seconds["student"] > 0 for row in rows)


def test_the_variants_share_one_teacher_and_one_logit_cache(
        measured: tuple[Recipe, list[levers.LeverRow]]) -> None:
    base, _ = measured
    variants = [p for p in (base.output / "levers").iterdir() if p.is_dir()]
    assert len(variants) == 4
    assert not any((v / "teacher").exists() or (v / "cache").exists() for v in variants)
    assert (base.output / "teacher" / "stage.json").is_file()


def test_the_table_reads_against_the_logits_only_row(
        measured: tuple[Recipe, list[levers.LeverRow]], tmp_path: Path) -> None:
    _, rows = measured
    path = levers.write(rows, tmp_path, 120)
    text = path.read_text()
    assert text.count("\n| ") == 1 + len(rows) and "| logits only |" in text
    assert "| +0.00 |" in text
    assert (tmp_path / "levers.json").is_file()


def test_both_levers_reuse_the_intermediate_stage_the_intermediate_row_built(
        measured: tuple[Recipe, list[levers.LeverRow]]) -> None:
    base, _ = measured
    built = read_record(base.output / "levers" / "intermediate" / "student-intermediate")
    assert built is not None
    assert read_record(base.output / "levers" / "both" / "student-intermediate") == built


def test_a_recipe_without_an_intermediate_stage_gets_the_measured_one_in_its_lever_rows(
        tiny_repo: TinyRepo, tmp_path: Path) -> None:
    # The shipped SST-2 recipe dropped its intermediate stage; `make levers` must still measure
    # the 16,000-row stage the docs report, not one over the whole training split.
    base = _recipe(tiny_repo, tmp_path / "run")
    made = levers.lever_recipes(base, tmp_path / "teacher", train_rows=100_000)
    intermediate = {lever: recipe.student.intermediate for lever, recipe in made.items()}
    assert intermediate["logits only"] is None and intermediate["+ augmentation"] is None
    for lever in ("+ intermediate layers", "+ both"):
        config = intermediate[lever]
        assert config is not None and config.max_examples == 16000
        assert config.needs_online_teacher and config.logit_weight == 0.0
