"""`python -m bench table3 --quick` end to end on a tiny teacher: every row measured,
multi-instance pools of real processes, the artifact served by the real server on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.instances import Layout, layouts_for
from bench.recipe_runs import quick_recipe
from bench.table3 import PAIRED_MIN_ROUNDS, Table3, check_ratio, ratio_line
from compress.recipe import Recipe
from compress.stages import cache_root
from tests.conftest import ROOT, TinyRepo, free_port

ROWS = ["1", "2", "3", "4", "5", "6a", "6b", "7"]


def _tiny_recipe(tiny_repo: TinyRepo, out: Path) -> dict[str, Any]:
    return {
        "name": "tiny-table3", "task": "sst2", "data_dir": str(tiny_repo.data_dir),
        "out_dir": str(out),
        "teacher": {"checkpoint": str(tiny_repo.sst2_teacher)},
        "student": {"init": "teacher", "layers": 1},
        "distil": {"epochs": 2, "batch_size": 16, "learning_rate": 2e-3, "max_length": 64},
        "prune": {"levels": [1.0, 0.5, 0.25], "importance_examples": 100,
                  "distil": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3,
                             "max_length": 64},
                  "max_accuracy_drop": 50.0, "budget_reference": "teacher"},
        "evaluate": {"speed_examples": 20, "rounds": 1},
    }


@pytest.fixture(scope="module")
def table(tiny_repo: TinyRepo, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("table3")
    recipe_path = work / "tiny.yaml"
    recipe_path.write_text(yaml.safe_dump(_tiny_recipe(tiny_repo, work / "run")))
    result = subprocess.run(
        [sys.executable, "-m", "bench", "table3", "--task", "sst2", "--quick",
         "--recipe", str(recipe_path), "--speed-examples", "24", "--http-seconds", "1",
         "--port", str(free_port())],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    out = work / "run-quick" / "table3"
    return out, json.loads((out / "table3.json").read_text())


def test_every_row_is_measured_in_every_round(table: tuple[Path, dict]) -> None:
    _, data = table
    assert [row["row"] for row in data["rows"]] == ROWS
    for row in data["rows"]:
        rounds = PAIRED_MIN_ROUNDS if row["row"] == "7" else 2
        assert len(row["rounds"]) == rounds and all(rate > 0 for rate in row["rounds"])
        assert row["sentences_per_s"] > 0 and row["usd_per_100m"] > 0


def test_cumulative_speedup_is_relative_to_the_padded_teacher(table: tuple[Path, dict]) -> None:
    _, data = table
    base = data["rows"][0]["sentences_per_s"]
    for row in data["rows"]:
        assert row["cumulative_speedup"] == pytest.approx(row["sentences_per_s"] / base)
    row5 = data["rows"][4]["sentences_per_s"]
    assert data["rows"][5]["per_row_speedup"] == pytest.approx(data["rows"][5]["sentences_per_s"]
                                                              / row5)


def test_http_row_reports_its_overhead_against_the_pool_it_serves(
        table: tuple[Path, dict]) -> None:
    _, data = table
    check = data["http_check"]
    assert data["rows"][-1]["per_row_speedup"] == pytest.approx(check["ratio"])
    assert check["low"] <= check["ratio"] <= check["high"]
    assert check["reference_alone"] > 0 and check["reference_paired"] > 0
    # The ratio is published only when its reference held still beside the server.
    assert data["http_overhead"] in (None, pytest.approx(check["ratio"]))
    assert data["rows"][-1]["layout"] in data["layouts"][_served_level(data)]


def test_a_ratio_whose_reference_slowed_beside_the_server_is_refused() -> None:
    alone = [1000.0, 1050.0, 1100.0]  # its own rounds: a 10% spread
    steady = check_ratio([900.0, 950.0], [1040.0, 1060.0], alone)
    assert steady.stands and steady.ratio == pytest.approx((900 / 1040 + 950 / 1060) / 2)
    slowed = check_ratio([700.0, 720.0], [500.0, 620.0], alone)
    assert not slowed.stands and slowed.moved == pytest.approx(560 / 1050 - 1)


def test_a_refused_ratio_is_said_so_in_the_table() -> None:
    check = check_ratio([700.0, 720.0], [500.0, 620.0], [1000.0, 1050.0, 1100.0])
    table = Table3("sst2", "m", 2, 1, 1, 1, 1, 2, {}, [], {}, "wrk", None, {}, 128, 10.0,
                   http_check=check)
    line = ratio_line(table)
    assert "**refused**" in line and "-47%" in line


def _served_level(data: dict) -> str:
    stage: str = data["rows"][-1]["stage"]
    return stage.removeprefix("served over HTTP (").removesuffix(")")


def test_every_layout_using_all_cores_is_tried_for_every_graph(table: tuple[Path, dict]) -> None:
    _, data = table
    names = {layout.name for layout in layouts_for(len(os.sched_getaffinity(0)))}
    assert len(data["layouts"]) == 3
    for rates in data["layouts"].values():
        assert set(rates) == names


def test_served_labels_match_the_int8_graph_of_the_served_level(table: tuple[Path, dict]) -> None:
    _, data = table
    served = data["rows"][-1]
    level = _served_level(data)
    same = [row for row in data["rows"][5:7] if level in row["stage"]]
    # INT8 activations are quantized per batch, and the server batches differently: allow a few.
    assert same and served["accuracy"] == pytest.approx(same[0]["accuracy"], abs=0.03)


def test_quick_run_writes_its_own_folder_with_table_and_plot(table: tuple[Path, dict]) -> None:
    out, data = table
    assert data["recipe"]["name"] == "tiny-table3-quick"
    assert (out.parent / "artifact" / "manifest.json").is_file()
    markdown = (out / "table3.md").read_text()
    assert "| 6b | + structured pruning" in markdown and "a projection" in markdown
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_caps_every_example_count() -> None:
    recipe = Recipe.model_validate({"name": "t3", "task": "sst2",
                                    "teacher": {"finetune": {"max_examples": 12000}},
                                    "distil": {"max_examples": None}})
    quick = quick_recipe(recipe)
    assert quick.teacher.finetune.max_examples == 1500
    assert quick.distil.max_examples == 4800
    assert quick.evaluate.max_dev_examples == 400
    runs = cache_root() / "runs"
    assert quick.output == runs / "t3-quick" and quick.artifact == runs / "t3-quick" / "artifact"


def test_quick_caps_the_levers_too() -> None:
    recipe = Recipe.model_validate({
        "name": "t3", "task": "sst2", "augment": {"copies": 4},
        "student": {"intermediate": {"hidden_weight": 1.0, "logit_weight": 0.0}}})
    quick = quick_recipe(recipe)
    assert quick.student.intermediate is not None
    assert quick.student.intermediate.max_examples == 400
    assert quick.augment is not None and quick.augment.max_sources == 500


def test_layouts_split_the_cores_into_disjoint_sets() -> None:
    assert [layout.name for layout in layouts_for(4)] == ["1x4", "2x2", "4x1"]
    assert Layout(2, 2).core_sets([0, 1, 2, 3]) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="needs 4 cores"):
        Layout(2, 2).core_sets([0, 1])
