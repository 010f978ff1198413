"""`python -m compress run <recipe>` on a tiny teacher: stages, reuse, resume, budget, report."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from compress import pipeline
from compress.recipe import Recipe, RecipeError, load_recipe
from compress.report import Candidate, Report
from compress.stages import stage_summary
from contract.artifact import read_manifest
from tests.conftest import ROOT, TinyRepo

LAST_STAGES = ["ONNX export", "graph fusion", "INT8 quantization"]


def _recipe(tiny_repo: TinyRepo, out: Path, **changes: Any) -> Recipe:
    raw: dict[str, Any] = {
        "name": "tiny", "task": "sst2", "data_dir": str(tiny_repo.data_dir), "out_dir": str(out),
        "teacher": {"model": str(tiny_repo.base_model),
                    "finetune": {"epochs": 4, "batch_size": 16, "learning_rate": 2e-3,
                                 "threads": 1}},
        "student": {"init": "teacher", "layers": 1},
        "distil": {"epochs": 3, "batch_size": 16, "learning_rate": 2e-3, "max_length": 64},
        # Both levels are pruned: which one is faster is a measurement, the table's shape is not.
        "prune": {"levels": [0.5, 0.25], "importance_examples": 200,
                  "distil": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3,
                             "max_length": 64},
                  "max_accuracy_drop": 20.0, "budget_reference": "student"},
        "evaluate": {"speed_examples": 30, "rounds": 2},
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            raw[section] = {**raw[section], field: value}
        else:
            raw[section] = value
    return Recipe.model_validate(raw)


@pytest.fixture(scope="module")
def finished(tiny_repo: TinyRepo, tmp_path_factory: pytest.TempPathFactory) -> tuple[Recipe,
                                                                                     Report]:
    recipe = _recipe(tiny_repo, tmp_path_factory.mktemp("recipe") / "run")
    return recipe, pipeline.run_recipe(recipe, None)


def test_report_has_one_row_per_stage_measured_in_the_same_run(
        finished: tuple[Recipe, Report]) -> None:
    recipe, report = finished
    chosen = next(c for c in report.candidates if c.chosen)
    names = ["teacher", "distilled student", f"pruned {chosen.level}", *LAST_STAGES]
    assert [row.stage for row in report.rows] == names
    for row in report.rows:
        assert len(row.rounds_ms) == 2 and row.ms_per_sentence > 0
        assert 0.0 <= row.accuracy <= 1.0 and row.size_mb > 0
    assert report.rows[2].parameters < report.rows[1].parameters < report.rows[0].parameters
    saved = json.loads((recipe.output / "report.json").read_text())
    assert [row["stage"] for row in saved["rows"]] == names
    markdown = (recipe.output / "report.md").read_text()
    assert "speed-up (cumulative)" in markdown and "| INT8 quantization | ORT int8 |" in markdown
    assert "Attention fusion: 1 of 1 layers fused; attention width 1 heads x 16 = 16 differs " \
        "from hidden 32" in markdown
    assert (recipe.output / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Control, same run: INT8 of the plain export" in markdown
    assert f"chosen on {saved['validation_examples']} validation examples held out of train" \
        in markdown.replace("\n", " ")
    assert set(report.stage_seconds) >= {"teacher", "student", "prune/importance"}


def test_student_stays_close_to_the_teacher_on_the_tiny_task(
        finished: tuple[Recipe, Report]) -> None:
    _, report = finished
    teacher, student = report.rows[0].accuracy, report.rows[1].accuracy
    assert teacher >= 0.9 and student >= teacher - 0.1


def test_sweep_levels_are_judged_on_int8_and_the_chosen_one_is_served(
        finished: tuple[Recipe, Report]) -> None:
    recipe, report = finished
    assert [c.level for c in report.candidates] == ["h1-f32", "h1-f16"]
    chosen = [c for c in report.candidates if c.chosen]
    assert len(chosen) == 1 and chosen[0].meets_budget
    manifest = read_manifest(recipe.artifact)
    assert set(manifest.variants) == {"fp32", "cpu-int8", "gpu-fp16"}
    assert (manifest.architecture.heads, manifest.architecture.ffn) == \
        (1, int(chosen[0].level.split("-f")[1]))
    assert manifest.provenance.recipe["name"] == "tiny"


def test_fp16_variant_gives_the_fp32_labels_on_cpu(finished: tuple[Recipe, Report]) -> None:
    _, report = finished
    assert report.fp16_cpu_agreement >= 0.95


def _forbid(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names:
        def refuse(*_: object, _name: str = name, **__: object) -> None:
            raise AssertionError(f"{_name} ran again")

        monkeypatch.setattr(pipeline, name, refuse)


def _count_distillations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the output folder of every distillation the pipeline runs."""
    calls: list[str] = []
    real_distil = pipeline.distil

    def counting(*args: Any, **kwargs: Any) -> Path:
        calls.append(Path(args[5]).name)
        return real_distil(*args, **kwargs)

    monkeypatch.setattr(pipeline, "distil", counting)
    return calls


def test_rerun_reuses_every_finished_stage(finished: tuple[Recipe, Report],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    recipe, first = finished
    _forbid(monkeypatch, "finetune", "distil", "make_variants", "importance_scores",
            "_evaluate_candidates", "assemble_artifact")
    report = pipeline.run_recipe(recipe, None)
    assert len(report.rows) == len(first.rows) and report.rows[-1].stage == LAST_STAGES[-1]


def test_changed_prune_setting_rebuilds_only_the_pruned_stage(
        finished: tuple[Recipe, Report], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe, _ = finished
    out = tmp_path / "run"
    shutil.copytree(recipe.output, out)
    distil_config = dataclasses.replace(recipe.prune.distil, learning_rate=5e-4)
    changed = recipe.model_copy(update={"out_dir": out, "artifact_dir": None, "prune":
                                        recipe.prune.model_copy(update={"distil": distil_config})})
    _forbid(monkeypatch, "finetune", "importance_scores")
    calls = _count_distillations(monkeypatch)
    pipeline.run_recipe(changed, None)
    assert calls == ["h1-f32.partial", "h1-f16.partial"]


def test_new_importance_scores_rebuild_every_pruned_level_but_not_the_student(
        finished: tuple[Recipe, Report], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe, _ = finished
    out = tmp_path / "run"
    shutil.copytree(recipe.output, out)
    changed = recipe.model_copy(update={"out_dir": out, "artifact_dir": None, "prune":
                                        recipe.prune.model_copy(update={"importance_examples": 100})})
    _forbid(monkeypatch, "finetune")
    calls = _count_distillations(monkeypatch)
    pipeline.run_recipe(changed, None)
    assert calls == ["h1-f32.partial", "h1-f16.partial"]
    assert json.loads((out / "prune" / "importance" / "stage.json").read_text())["examples"] == 100


def test_interrupted_run_keeps_finished_stages_and_resumes(
        tiny_repo: TinyRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = _recipe(tiny_repo, tmp_path / "run", prune__levels=[1.0])

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "distil", interrupted)
        with pytest.raises(KeyboardInterrupt):
            pipeline.run_recipe(recipe, None)
    assert stage_summary(recipe.output) == ["teacher"]
    assert not (recipe.output / "student").exists()
    _forbid(monkeypatch, "finetune")
    report = pipeline.run_recipe(recipe, None)
    assert [row.stage for row in report.rows] == ["teacher", "distilled student", *LAST_STAGES]


def _candidate(level: str, accuracy: float, ms: float) -> Candidate:
    return Candidate(level=level, pruned=level != "full", checkpoint="", variants="",
                     parameters=0, int8_accuracy=accuracy, int8_ms=ms)


def test_budget_picks_the_fastest_level_within_it() -> None:
    levels = [_candidate("full", 0.90, 3.0), _candidate("h8", 0.895, 2.0),
              _candidate("h6", 0.87, 1.0)]
    chosen = pipeline.pick_level(levels, floor=0.89)
    assert chosen.level == "h8" and [c.meets_budget for c in levels] == [True, True, False]


def test_budget_no_level_meets_keeps_the_most_accurate() -> None:
    levels = [_candidate("full", 0.90, 3.0), _candidate("h6", 0.80, 1.0)]
    assert pipeline.pick_level(levels, floor=0.95).level == "full"


def test_budget_no_level_meets_serves_the_faster_of_equally_accurate_levels() -> None:
    levels = [_candidate("full", 0.9117, 2.1), _candidate("h4", 0.9117, 1.2),
              _candidate("h8", 0.9094, 1.6)]
    assert pipeline.pick_level(levels, floor=0.915).level == "h4"


def test_without_a_budget_the_fastest_level_is_chosen() -> None:
    levels = [_candidate("full", 0.90, 3.0), _candidate("h6", 0.80, 1.0)]
    assert pipeline.pick_level(levels, floor=None).level == "h6"


def test_recipe_with_an_unknown_key_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\ntask: sst2\ndistil:\n  temprature: 3\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="temprature"):
        load_recipe(path)


def test_recipe_with_an_unknown_task_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\ntask: imdb\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="unknown task 'imdb'"):
        load_recipe(path)


def test_prune_ratio_outside_zero_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\ntask: sst2\nprune:\n  levels: [1.5]\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="not in"):
        load_recipe(path)


def test_the_shipped_recipe_is_valid() -> None:
    recipe = load_recipe(ROOT / "recipes" / "sst2-minilm-l3.yaml")
    assert recipe.student.layers == [0, 2, 4] and recipe.prune.max_accuracy_drop == 1.0


@pytest.mark.parametrize("name", ["table3-sst2", "table3-boolq"])
def test_the_table3_recipes_are_valid(name: str) -> None:
    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml")
    assert recipe.teacher.model == "packaged:mpnet-base" and len(recipe.prune.levels) == 3


def test_the_shipped_recipes_with_levers_are_valid() -> None:
    sst2 = load_recipe(ROOT / "recipes" / "table3-sst2.yaml")
    # SST-2 ships augmentation alone: the intermediate stage cost accuracy there (compression.md).
    assert sst2.augment is not None and sst2.student.intermediate is None
    mrpc = load_recipe(ROOT / "recipes" / "mrpc-levers.yaml")
    assert mrpc.augment is not None and mrpc.student.intermediate is not None
    assert mrpc.student.intermediate.layer_map == (2, 4, 6)


def test_train_from_dev_splits_dev_into_disjoint_train_and_evaluation(tiny_repo: TinyRepo,
                                                                      tmp_path: Path) -> None:
    recipe = _recipe(tiny_repo, tmp_path / "run").model_copy(update={"train_from_dev": 80})
    train, validation, read_dev = pipeline.task_splits(recipe, None)
    dev = read_dev()
    assert len(train) + len(validation) == 80 and len(dev) == 40
    assert not set(train.texts + validation.texts) & set(dev.texts)
    again, _, _ = pipeline.task_splits(recipe, None)
    assert again.texts == train.texts  # seeded: the same split every run


def test_validation_is_a_seeded_part_of_train_held_out_of_it(tiny_repo: TinyRepo,
                                                             tmp_path: Path) -> None:
    recipe = _recipe(tiny_repo, tmp_path / "run", evaluate__validation_fraction=0.2)
    train, validation, _ = pipeline.task_splits(recipe, None)
    whole = len(train) + len(validation)
    assert len(validation) == round(0.2 * whole)
    assert not set(train.texts) & set(validation.texts)
    _, again, _ = pipeline.task_splits(recipe, None)
    assert again.texts == validation.texts


def test_the_dev_split_is_read_only_after_every_choice(
        tiny_repo: TinyRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_load, real_pick, real_report = pipeline.load_split, pipeline.pick_level, \
        pipeline.write_report

    def load_split(spec: Any, split: str, *args: Any) -> Any:
        events.append(f"read {split}")
        return real_load(spec, split, *args)  # type: ignore[arg-type]

    def pick_level(*args: Any) -> Any:
        events.append("chose a level")
        return real_pick(*args)

    def write_report(*args: Any) -> Any:
        events.append("final report")
        return real_report(*args)

    monkeypatch.setattr(pipeline, "load_split", load_split)
    monkeypatch.setattr(pipeline, "pick_level", pick_level)
    monkeypatch.setattr(pipeline, "write_report", write_report)
    recipe = _recipe(tiny_repo, tmp_path / "run", prune__levels=[0.5],
                     teacher__finetune={"epochs": 1, "batch_size": 16, "learning_rate": 2e-3,
                                        "threads": 1})
    pipeline.run_recipe(recipe, None)
    assert events == ["read train", "chose a level", "read dev", "final report"]
    assert read_manifest(recipe.artifact).choices_split == "validation"


def test_train_from_dev_must_leave_examples_to_evaluate(tiny_repo: TinyRepo,
                                                        tmp_path: Path) -> None:
    recipe = _recipe(tiny_repo, tmp_path / "run").model_copy(update={"train_from_dev": 120})
    with pytest.raises(RecipeError, match="leaves no dev examples"):
        pipeline.task_splits(recipe, None)


def test_run_command_reports_an_invalid_recipe_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\ntask: sst2\nstudent: {layers: every_third}\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "compress", "run", str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "invalid recipe" in result.stderr and "Traceback" not in result.stderr


def test_a_recipe_names_exactly_one_of_task_and_task_file(tmp_path: Path) -> None:
    for body in ("name: r\n", "name: r\ntask: sst2\ntask_file: t.yaml\n"):
        path = tmp_path / "recipe.yaml"
        path.write_text(body, encoding="utf-8")
        with pytest.raises(RecipeError, match="give either task"):
            load_recipe(path)


def test_a_recipe_reads_its_task_file(tmp_path: Path) -> None:
    (tmp_path / "task.yaml").write_text("name: mine\ntext_columns: [text]\n", encoding="utf-8")
    path = tmp_path / "recipe.yaml"
    path.write_text(f"name: r\ntask_file: {tmp_path / 'task.yaml'}\n", encoding="utf-8")
    assert load_recipe(path).task_spec().name == "mine"
