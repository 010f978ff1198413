"""The accuracy levers of a recipe: teacher-labelled augmentation and TinyBERT's intermediate-layer
stage, run through `compress run` on the tiny task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compress import pipeline
from compress.recipe import Recipe, RecipeError, load_recipe
from compress.stages import read_record
from compress.tasks import Examples
from tests.compress.test_recipe_run import _recipe
from tests.conftest import TinyRepo

LEVERS = {
    "student__intermediate": {"epochs": 2, "batch_size": 16, "learning_rate": 2e-3,
                              "max_length": 64, "hidden_weight": 1.0, "attention_weight": 1.0,
                              "logit_weight": 0.0, "layer_map": [2]},
    "augment": {"copies": 3, "min_words": 4, "max_sources": 100},
    "prune__levels": [1.0, 0.5],
}


@pytest.fixture(scope="module")
def levered(tiny_repo: TinyRepo, tmp_path_factory: pytest.TempPathFactory) -> \
        tuple[Recipe, list[tuple[str, int]]]:
    recipe = _recipe(tiny_repo, tmp_path_factory.mktemp("levers") / "run", **LEVERS)
    calls: list[tuple[str, int]] = []
    real = pipeline.distil
    real_load = pipeline.load_classifier

    def loading(folder: Path | str) -> Any:
        calls.append((f"loaded {Path(folder).name}", 0))
        return real_load(folder)

    def recording(*args: Any, **kwargs: Any) -> Path:
        augmented: Examples | None = args[9] if len(args) > 9 else kwargs.get("augmented")
        calls.append((Path(args[5]).name, len(augmented) if augmented is not None else 0))
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "distil", recording)
        patch.setattr(pipeline, "load_classifier", loading)
        pipeline.run_recipe(recipe, None)
    return recipe, calls


def test_intermediate_layers_are_distilled_first_then_the_prediction_layer(
        levered: tuple[Recipe, list[tuple[str, int]]]) -> None:
    _, calls = levered
    trained = [name for name, _ in calls if not name.startswith("loaded ")]
    assert trained == ["student-intermediate.partial", "student.partial", "h1-f32.partial"]


def test_variants_are_made_once_and_trained_on_by_the_student_and_pruned_stages(
        levered: tuple[Recipe, list[tuple[str, int]]]) -> None:
    recipe, calls = levered
    record = read_record(recipe.output / "augment")
    assert record is not None and record.details["augmented"] > 0
    lines = (recipe.output / "augment" / pipeline.AUGMENTED_FILE).read_text().splitlines()
    assert len(lines) == record.details["augmented"]
    made = dict(calls)
    assert made["student-intermediate.partial"] == 0  # default stages: student and prune
    assert made["student.partial"] == made["h1-f32.partial"] == len(lines)


def test_the_teacher_labels_every_variant_once_in_its_own_cache(
        levered: tuple[Recipe, list[tuple[str, int]]]) -> None:
    recipe, _ = levered
    count = len((recipe.output / "augment" / pipeline.AUGMENTED_FILE).read_text().splitlines())
    # One rows cache for the training split, one for the variants.
    caches = list((recipe.output / "cache").glob("teacher-logits-*.rows.npz"))
    sizes = sorted(int(np.load(path)["done"].sum()) for path in caches)
    assert count in sizes and len(caches) == 2


def test_the_student_stage_starts_from_the_intermediate_one(
        levered: tuple[Recipe, list[tuple[str, int]]]) -> None:
    _, calls = levered
    assert ("loaded student-intermediate", 0) in calls


def test_an_intermediate_stage_without_layer_losses_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\ntask: sst2\nstudent: {intermediate: {epochs: 1}}\n")
    with pytest.raises(RecipeError, match="hidden_weight"):
        load_recipe(path)


def test_augment_stages_are_checked_by_name(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\ntask: sst2\naugment: {stages: [teacher]}\n")
    with pytest.raises(RecipeError, match="stages"):
        load_recipe(path)


def test_pruned_levels_learn_layers_from_the_unpruned_student_unless_told_otherwise(
        tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\ntask: sst2\n")
    assert load_recipe(path).prune.layers_from == "student"
    path.write_text("name: x\ntask: sst2\nprune: {layers_from: teacher}\n")
    assert load_recipe(path).prune.layers_from == "teacher"
    path.write_text("name: x\ntask: sst2\nprune: {layers_from: unpruned}\n")
    with pytest.raises(RecipeError, match="layers_from"):
        load_recipe(path)


def test_a_pruned_level_takes_hidden_states_from_the_model_layers_from_names(
        tiny_repo: TinyRepo, tmp_path: Path) -> None:
    layered = {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "max_length": 64,
               "hidden_weight": 1.0}
    pruned: list[str] = []
    real = pipeline.distil

    def recording(*args: Any, **kwargs: Any) -> Path:
        source = args[10] if len(args) > 10 else kwargs.get("layer_teacher")
        if source is not None:  # the pruned stage; the student stage passes none
            pruned.append(Path(source).name)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "distil", recording)
        for source in ("student", "teacher"):
            recipe = _recipe(tiny_repo, tmp_path / "run", prune__levels=[0.5],
                             prune__distil=layered, prune__layers_from=source)
            pipeline.build_stages(recipe, None)
    # Changing layers_from rebuilds the pruned level (its key), with the other model's layers.
    assert pruned == ["student", "teacher"]
