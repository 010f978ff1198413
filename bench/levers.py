"""`python -m bench levers --task sst2 [--quick]`: each accuracy lever of distillation measured
side by side on the same student, seed and step budget.

Four variants of the task's Table 3 recipe share its teacher, its teacher-logit cache and its
settings, and differ only in the levers: logits only, + teacher-labelled augmentation (the
recipe's `augment` section), + intermediate-layer distillation first (`student.intermediate`),
+ both. Every variant's prediction-layer distillation runs the same number of optimizer steps (the
logits-only recipe's: `distil.max_steps`), so a lever's gain is not a longer training. The
student is not pruned here (the recipe's pruning re-distils with the same levers). Each row gives
the student's dev accuracy in PyTorch fp32 and of its static INT8 graph, and the wall and CPU time
of every stage it built (the teacher's logits of the variants included in the student stage).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from compress.device import TrainRuntime
from compress.distill import DistilConfig
from compress.pipeline import build_stages, build_teacher, task_splits
from compress.recipe import AugmentSection, PruneSection, Recipe
from compress.speed import TorchPredictor, accuracy
from compress.stages import read_record

LEVERS = ("logits only", "+ augmentation", "+ intermediate layers", "+ both")
# Used when the recipe has no section of its own for a lever. The intermediate stage is the one
# docs/compression.md measured (16,000 rows: the teacher runs live at every step); its layer map
# spreads the student's layers evenly over the teacher's.
DEFAULT_AUGMENT = AugmentSection(copies=4, min_words=12)
DEFAULT_INTERMEDIATE = DistilConfig(epochs=1.0, batch_size=32, learning_rate=1e-4,
                                    max_examples=16000, hidden_weight=1.0, attention_weight=1.0,
                                    logit_weight=0.0)
STAGES = ("augment", "student-intermediate", "student")


@dataclass
class LeverRow:
    """One variant: its accuracies and what its stages cost."""

    lever: str
    fp32_accuracy: float
    int8_accuracy: float
    steps: int
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)


def _slug(lever: str) -> str:
    return {"logits only": "logits", "+ augmentation": "augment",
            "+ intermediate layers": "intermediate", "+ both": "both"}[lever]


def lever_recipes(base: Recipe, teacher: Path, train_rows: int) -> dict[str, Recipe]:
    """The four variants of `base`: same teacher, cache, seed and prediction-layer step budget."""
    budget = base.distil.steps_for(train_rows)
    distil = replace(base.distil, max_steps=budget, epochs=max(base.distil.epochs, 100.0))
    augment = base.augment or DEFAULT_AUGMENT
    intermediate = base.student.intermediate or DEFAULT_INTERMEDIATE
    made = {}
    for lever in LEVERS:
        out = base.output / "levers" / _slug(lever)
        student = base.student.model_copy(update={
            "intermediate": intermediate if "intermediate" in lever or "both" in lever else None})
        made[lever] = base.model_copy(update={
            "name": f"{base.name}-{_slug(lever)}", "out_dir": out, "artifact_dir": out / "artifact",
            "cache_dir": base.cache,
            "teacher": base.teacher.model_copy(update={"checkpoint": teacher}),
            "student": student, "distil": distil,
            "augment": augment if "augment" in lever or "both" in lever else None,
            "prune": PruneSection(levels=[1.0])})
    return made


def measure(base: Recipe, data_dir: Path | None, runtime: TrainRuntime,
            log: Callable[[str], None] = print) -> list[LeverRow]:
    """Build every variant (reusing finished stages) and score its student."""
    teacher = build_teacher(base, data_dir, runtime)
    train, _, _ = task_splits(base, data_dir)
    rows = []
    finished: list[Path] = []
    for lever, recipe in lever_recipes(base, teacher, len(train)).items():
        _share_finished_stages(finished, recipe)
        built = build_stages(recipe, data_dir, runtime)
        finished.append(recipe.output)
        student = built.student.folder
        row = LeverRow(lever=lever,
                       fp32_accuracy=accuracy(TorchPredictor(student, built.run.spec.max_length),
                                              built.dev),
                       int8_accuracy=accuracy(built.int8_predictor(), built.dev),
                       steps=recipe.distil.max_steps or 0)
        for stage in STAGES:
            record = read_record(recipe.output / stage)
            if record is not None:
                row.seconds[stage], row.cpu_seconds[stage] = record.seconds, record.cpu_seconds
        rows.append(row)
        log(f"{lever}: fp32 {row.fp32_accuracy:.4f}, int8 {row.int8_accuracy:.4f}")
    return rows


def _share_finished_stages(finished: list[Path], recipe: Recipe) -> None:
    """Copy into `recipe`'s run a stage another variant already built (the intermediate stage of
    `+ intermediate` is the one `+ both` needs): the stage cache reuses it only if its key
    matches, so a copy whose settings differ is rebuilt as usual. A row still reports what the
    stage took to build."""
    wanted = [name for name, used in (("augment", recipe.augment is not None),
                                      ("student-intermediate",
                                       recipe.student.intermediate is not None)) if used]
    for stage in wanted:
        target = recipe.output / stage
        source = next((f / stage for f in finished if read_record(f / stage) is not None), None)
        if source is not None and read_record(target) is None:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)


def markdown(rows: list[LeverRow], dev_examples: int) -> str:
    """The side-by-side table (accuracy points against the logits-only row)."""
    reference = rows[0].fp32_accuracy
    lines = [f"Dev examples: {dev_examples}; prediction-layer steps per row: {rows[0].steps}.",
             "",
             "| lever | student fp32 | vs logits only | INT8 | augment (wall / CPU s) | "
             "intermediate (wall / CPU s) | student (wall / CPU s) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        times = [f"{row.seconds[s]:.0f} / {row.cpu_seconds[s]:.0f}" if s in row.seconds else "-"
                 for s in STAGES]
        lines.append(f"| {row.lever} | {100 * row.fp32_accuracy:.2f}% | "
                     f"{100 * (row.fp32_accuracy - reference):+.2f} | "
                     f"{100 * row.int8_accuracy:.2f}% | " + " | ".join(times) + " |")
    return "\n".join(lines) + "\n"


def write(rows: list[LeverRow], out: Path, dev_examples: int) -> Path:
    """levers.md and levers.json under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "levers.json").write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n",
                                     encoding="utf-8")
    path = out / "levers.md"
    path.write_text(markdown(rows, dev_examples), encoding="utf-8")
    return path
