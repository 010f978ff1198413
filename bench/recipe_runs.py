"""The two benchmarks built from a Table 3 recipe's stages: `python -m bench table3 --task sst2
[--quick]` (the FastFormers Table 3 ablation) and `python -m bench levers --task sst2 [--quick]`
(the accuracy levers side by side, bench/levers.py).

Builds (or reuses) the stages of `recipes/table3-<task>.yaml` - base-size teacher, distilled
student, two pruning levels, the servable artifact - then times every row of the ablation side by
side in one run and writes table3.md, table3.json and pareto.png beside the run's stages.

--quick caps every example count (teacher fine-tuning, distillation, pruning, dev, timed inputs)
so that a fresh run finishes in minutes; its stages live in their own folder, so a quick run never
reuses or overwrites the full run's checkpoints.

Heavy imports live inside the functions: the multi-instance worker processes are spawned and import
this module again, and should not load torch for nothing.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from compress.__main__ import add_device_args

if TYPE_CHECKING:
    from compress.recipe import Recipe


@dataclass(frozen=True)
class QuickCaps:
    """Example counts a --quick run uses at most."""

    teacher_examples: int
    distil_examples: int
    prune_examples: int
    importance_examples: int
    dev_examples: int
    speed_examples: int
    # The levers: the intermediate stage runs the teacher live on every row it trains on.
    intermediate_examples: int = 400
    augment_sources: int = 500


# Long inputs (BoolQ: question + passage, up to 512 tokens) cost ~10x a SST-2 sentence.
QUICK: dict[str, QuickCaps] = {
    "sst2": QuickCaps(1500, 4800, 3000, 500, 400, 100),
    "boolq": QuickCaps(300, 600, 300, 200, 200, 30),
}
DEFAULT_QUICK = QuickCaps(300, 1000, 500, 200, 200, 50)
FULL_ROUNDS, QUICK_ROUNDS = 3, 2


def _cap(value: int | None, cap: int) -> int:
    return cap if value is None else min(value, cap)


def quick_recipe(recipe: Recipe) -> Recipe:
    """The same recipe with every example count capped, writing to its own run folder."""
    caps = QUICK.get(recipe.task or "", DEFAULT_QUICK)
    teacher = recipe.teacher.model_copy(update={"finetune": replace(
        recipe.teacher.finetune,
        max_examples=_cap(recipe.teacher.finetune.max_examples, caps.teacher_examples))})
    distil = replace(recipe.distil, max_examples=_cap(recipe.distil.max_examples,
                                                      caps.distil_examples))
    prune = recipe.prune.model_copy(update={
        "importance_examples": min(recipe.prune.importance_examples, caps.importance_examples),
        "distil": replace(recipe.prune.distil, max_examples=_cap(recipe.prune.distil.max_examples,
                                                                 caps.prune_examples))})
    # The seed spread was measured on the full recipe, not on this capped one.
    evaluate = recipe.evaluate.model_copy(update={
        "max_dev_examples": _cap(recipe.evaluate.max_dev_examples, caps.dev_examples),
        "seed_accuracies": None})
    student, augment = recipe.student, recipe.augment
    if student.intermediate is not None:
        student = student.model_copy(update={"intermediate": replace(
            student.intermediate, max_examples=_cap(student.intermediate.max_examples,
                                                    caps.intermediate_examples))})
    if augment is not None:
        augment = augment.model_copy(update={
            "max_sources": _cap(augment.max_sources, caps.augment_sources)})
    output = recipe.output
    quick_out = output.with_name(output.name + "-quick")
    return recipe.model_copy(update={
        "name": recipe.name + "-quick", "teacher": teacher, "student": student,
        "augment": augment, "distil": distil, "prune": prune, "evaluate": evaluate,
        "out_dir": quick_out,
        "artifact_dir": quick_out / "artifact" if recipe.artifact_dir is None
        else recipe.artifact_dir.with_name(recipe.artifact_dir.name + "-quick")})


def _parser() -> argparse.ArgumentParser:
    from compress.tasks import default_data_dir

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("table3", help="teacher -> served INT8 student ablation, side by side")
    p.add_argument("--task", required=True, help="task of the recipe (sst2, boolq, ...)")
    p.add_argument("--recipe", type=Path,
                   help="recipe to build the rows from (default: recipes/table3-<task>.yaml)")
    p.add_argument("--quick", action="store_true", help="capped example counts: minutes, not hours")
    p.add_argument("--speed-examples", type=int,
                   help="dev inputs timed per row and round (default: all; --quick: a few)")
    p.add_argument("--rounds", type=int, help=f"interleaved rounds (default {FULL_ROUNDS}, "
                   f"--quick {QUICK_ROUNDS})")
    p.add_argument("--build-only", action="store_true",
                   help="build or reuse the stages and stop (time them later on a quiet machine)")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    add_device_args(p)
    p.add_argument("--port", type=int, default=8797, help="loopback port for row 7")
    p.add_argument("--http-seconds", type=float, default=5.0, help="load per HTTP round")
    p.add_argument("--http-connections", type=int, default=32,
                   help="wrk connections (or concurrent httpx requests) for row 7")
    p = sub.add_parser("levers", help="each accuracy lever of distillation side by side: logits "
                                      "only, + augmentation, + intermediate layers, + both")
    p.add_argument("--task", required=True, help="task of the recipe (sst2, ...)")
    p.add_argument("--recipe", type=Path,
                   help="recipe to vary (default: recipes/table3-<task>.yaml)")
    p.add_argument("--quick", action="store_true", help="capped example counts: minutes, not hours")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    add_device_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from compress.recipe import load_recipe
    from contract.artifact import CompressError

    path = args.recipe or Path("recipes") / f"table3-{args.task}.yaml"
    try:
        recipe = load_recipe(path)
        if recipe.task != args.task:
            print(f"error: {path} is a recipe for {recipe.task}, not {args.task}", file=sys.stderr)
            return 2
        if args.quick:
            recipe = quick_recipe(recipe)
        return _levers(recipe, args) if args.bench == "levers" else _table3(recipe, args)
    except CompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished stages are kept and reused by the next run",
              file=sys.stderr)
        return 130


def _levers(recipe: Recipe, args: argparse.Namespace) -> int:
    from bench import levers
    from compress.device import choose_runtime

    runtime = choose_runtime(args.device, args.precision)
    rows = levers.measure(recipe, args.data_dir, runtime)
    dev = len(levers.task_splits(recipe, args.data_dir)[2]())
    path = levers.write(rows, recipe.output / "levers", dev)
    print(levers.markdown(rows, dev))
    print(f"written: {path} (training on {runtime.describe()})")
    return 0


def _table3(recipe: Recipe, args: argparse.Namespace) -> int:
    from bench import table3
    from compress.device import choose_runtime
    from compress.pipeline import build_stages, data_source, recipe_spec
    from compress.tasks import load_split

    built = build_stages(recipe, args.data_dir, choose_runtime(args.device, args.precision))
    if args.build_only:
        print(f"stages built under {recipe.output}; artifact: {recipe.artifact}")
        return 0
    # Speed needs no labels: time the task's whole dev split (BoolQ: all 3,270 val examples),
    # shuffled once so that a capped run still sees short and long inputs alike.
    texts = list(load_split(recipe_spec(recipe, args.data_dir), "dev",
                            data_source(recipe, args.data_dir), recipe.hub).texts)
    random.Random(1).shuffle(texts)
    caps = QUICK.get(recipe.task or "", DEFAULT_QUICK)
    count = args.speed_examples or (caps.speed_examples if args.quick else len(texts))
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else FULL_ROUNDS)
    options = table3.Table3Options(texts[:count], rounds, args.port, args.http_seconds,
                                   args.http_connections)
    table = table3.measure(built, options)
    out = recipe.output / "table3"
    table3.write(table, out)
    print(table3.markdown(table))
    print(f"written: {out}/table3.md, table3.json, pareto.png")
    return 0
