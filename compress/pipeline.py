"""`python -m compress run <recipe>`: teacher -> distil -> prune sweep -> ONNX variants -> report.

The recipe's steps, each a cached stage (compress/stages.py: folders, keys, `stage.json`).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from compress.augment import augment
from compress.augment import sources as augment_sources
from compress.build import (
    Variants,
    assemble_artifact,
    calibration_texts,
    make_variants,
    served_max_length,
)
from compress.checkpoint import load_classifier
from compress.device import TrainRuntime, choose_runtime
from compress.distill import DistilConfig, distil, init_student, soft_loss, teacher_logits_of
from compress.export import ExportResult
from compress.finetune import finetune, hf_tokenize
from compress.model_stats import inspect_config, load_config
from compress.optimize import CPU_GRAPH_FORM, FusionReport
from compress.pretrained import resolve_model
from compress.prune import Importance, PruneLevel, importance_scores, model_shape, prune_model
from compress.quantize import quantize_int8
from compress.recipe import AugmentStage, PruneLevelSpec, Recipe, RecipeError
from compress.report import Candidate, Report, Row, write_report
from compress.speed import (
    Predictor,
    TorchPredictor,
    accuracy,
    batch1_side_by_side,
    predictions,
)
from compress.stages import (
    Stage,
    examples_digest,
    read_record,
    resume_of,
    run_stage,
    stage_key,
    stage_seconds,
)
from compress.tasks import Examples, TaskSpec, ensure_labels, hold_out, load_split
from compress.training import Resume
from contract.artifact import Architecture, Provenance
from contract.predictor import OnnxPredictor

log = logging.getLogger(__name__)
Texts = list[str | tuple[str, str]]
UNFUSED_INT8 = "int8-unfused.onnx"
AUGMENTED_FILE = "augmented.jsonl"


@dataclass
class _Run:
    recipe: Recipe
    spec: TaskSpec
    train: Examples
    validation: Examples  # held out of train: every choice is made on it
    read_dev: Callable[[], Examples]  # the final report's split, read once every choice is made
    out: Path
    runtime: TrainRuntime
    augmented: Examples | None = None
    _dev: Examples | None = None

    @property
    def cache(self) -> Path:
        return self.recipe.cache

    @property
    def dev(self) -> Examples:
        """The dev split, read on first use: only the final report and artifact use it."""
        if self._dev is None:
            self._dev = self.read_dev()
            log.info("dev split read for the final report: %d examples", len(self._dev))
        return self._dev

    def augmented_for(self, stage: AugmentStage) -> Examples | None:
        """The augmented rows a distillation stage trains on, if the recipe gives it any."""
        section = self.recipe.augment
        return self.augmented if section is not None and stage in section.stages else None

    def training_key(self, stage: AugmentStage) -> dict[str, Any]:
        """What a training stage's key adds: its augmentation and a non-fp32 precision."""
        section = self.recipe.augment
        augment = section.model_dump(mode="json") if self.augmented_for(stage) is not None \
            and section is not None else None
        return {"augment": augment, **self.runtime.key_part()}


def run_recipe(recipe: Recipe, data_dir: Path | None,
               runtime: TrainRuntime | None = None) -> Report:
    """Run every stage of `recipe` (reusing finished ones) and write the report and artifact."""
    built = build_stages(recipe, data_dir, runtime)
    report = _measure(built.run, built.teacher, built.student, built.chosen, built.candidates)
    report.budget_reference_accuracy = built.reference_accuracy
    write_report(report, built.run.out)
    return report


@dataclass(frozen=True)
class Built:
    """Every stage of a recipe, built or reused, and the level chosen for the artifact."""

    run: _Run
    teacher: Stage
    student: Stage
    candidates: list[Candidate]
    chosen: Candidate
    reference_accuracy: float | None

    @property
    def train(self) -> Examples:
        return self.run.train

    @property
    def dev(self) -> Examples:
        return self.run.dev

    def int8_predictor(self, candidate: Candidate | None = None) -> OnnxPredictor:
        """A level's INT8 graph (default: the chosen level's), as the sweep ran it."""
        candidate = candidate or self.chosen
        variants = _variants_of(candidate)
        return _ort(self.run, Path(candidate.checkpoint), variants.int8,
                    variants.exported.input_names)


def task_splits(recipe: Recipe, data_dir: Path | None) \
        -> tuple[Examples, Examples, Callable[[], Examples]]:
    """Train, validation (held out of train) and a reader of dev, of the recipe's task. Dev is
    read only when the reader is called (with train_from_dev, train is carved out of dev first;
    the rest is still scored only at the end)."""
    spec = recipe_spec(recipe, data_dir)
    source = data_source(recipe, data_dir)
    most = recipe.evaluate.max_dev_examples
    if recipe.train_from_dev is None:
        train = load_split(spec, "train", source, recipe.hub)

        def read_dev() -> Examples:
            return load_split(spec, "dev", source, recipe.hub).head(most)
    else:
        dev = load_split(spec, "dev", source, recipe.hub)
        if recipe.train_from_dev >= len(dev):
            raise RecipeError(f"train_from_dev: {recipe.train_from_dev} leaves no dev examples "
                              f"of {len(dev)}")
        order = list(range(len(dev)))
        random.Random(0).shuffle(order)
        cut = recipe.train_from_dev
        train, rest = dev.pick(order[:cut]), dev.pick(order[cut:]).head(most)

        def read_dev() -> Examples:
            return rest
    train, validation = hold_out(train, recipe.evaluate.validation_fraction,
                                 recipe.evaluate.max_validation_examples)
    return train, validation, read_dev


def data_source(recipe: Recipe, data_dir: Path | None) -> Path | None:
    """Where the task's data paths start: the recipe's data_dir, else (shipped tasks) the command
    line's, else (task files) the task file's folder."""
    if recipe.hub:
        return None
    return recipe.data_dir or (data_dir if recipe.task is not None else None)


def recipe_spec(recipe: Recipe, data_dir: Path | None) -> TaskSpec:
    """The recipe's task with its labels known (read from the data if the file names none)."""
    return ensure_labels(recipe.task_spec(), data_source(recipe, data_dir), recipe.hub)


def build_stages(recipe: Recipe, data_dir: Path | None,
                 runtime: TrainRuntime | None = None) -> Built:
    """Teacher, student, pruning sweep and the servable artifact of `recipe` (no report)."""
    spec = recipe_spec(recipe, data_dir)
    train, validation, read_dev = task_splits(recipe, data_dir)
    runtime = runtime or choose_runtime()
    log.info("training on %s; choices on %d validation examples held out of train",
             runtime.describe(), len(validation))
    run = _Run(recipe, spec, train, validation, read_dev, recipe.output, runtime)
    run.out.mkdir(parents=True, exist_ok=True)
    run.augmented = _augment_stage(run)
    teacher = _teacher_stage(run)
    student = _student_stage(run, teacher)
    made, full = _sweep(run, teacher, student)
    candidates, chosen, reference = _choice_stage(run, made, full, teacher, student)
    log.info("chosen pruning level: %s", chosen.level)
    built = Built(run, teacher, student, candidates, chosen, reference)
    assemble_level(built, chosen, recipe.artifact)
    return built


def build_teacher(recipe: Recipe, data_dir: Path | None,
                  runtime: TrainRuntime | None = None) -> Path:
    """The recipe's teacher alone (built or reused): a shared starting point for versions of the
    recipe (bench levers)."""
    spec = recipe_spec(recipe, data_dir)
    train, validation, read_dev = task_splits(recipe, data_dir)
    run = _Run(recipe, spec, train, validation, read_dev, recipe.output,
               runtime or choose_runtime())
    return _teacher_stage(run).folder


def _choice_stage(run: _Run, made: list[_Level], full: PruneLevel, teacher: Stage,
                  student: Stage) -> tuple[list[Candidate], Candidate, float | None]:
    """Judge every level (INT8 accuracy and speed) and pick one; kept like a stage, so that a
    rerun does not evaluate the teacher and every graph on the validation split again."""

    def build(folder: Path) -> dict[str, Any]:
        candidates = _evaluate_candidates(run, made, full)
        _, reference = _choose(run, candidates, teacher, student)
        return {"candidates": [asdict(c) for c in candidates], "reference_accuracy": reference}

    payload = {"levels": [[m.level.name, m.checkpoint.key, m.variants.key] for m in made],
               "teacher": teacher.key, "student": student.key,
               "validation": examples_digest(run.validation),
               "evaluate": run.recipe.evaluate.model_dump(mode="json"),
               "budget": [run.recipe.prune.max_accuracy_drop, run.recipe.prune.budget_reference]}
    stage = run_stage(run.out / "choice", payload, build)
    candidates = [Candidate(**c) for c in stage.record["candidates"]]
    chosen = next(c for c in candidates if c.chosen)
    return candidates, chosen, stage.record["reference_accuracy"]


def assemble_level(built: Built, candidate: Candidate, out_dir: Path) -> Path:
    """A servable artifact of one level of the sweep (the chosen one, or another to compare);
    an artifact already assembled from the same graphs is kept."""
    recipe = built.run.recipe
    record = read_record(Path(candidate.variants))
    source = json.dumps({"variants": candidate.variants, "key": record and record.key,
                         "dev": examples_digest(built.run.dev),
                         "validation": examples_digest(built.run.validation)})
    marker = out_dir / "source.json"
    if (out_dir / "manifest.json").is_file() and marker.is_file() \
            and marker.read_text(encoding="utf-8") == source:
        return out_dir
    assemble_artifact(built.run.spec, Path(candidate.checkpoint), _variants_of(candidate),
                      built.run.dev, out_dir,
                      Provenance(teacher=str(built.teacher.folder),
                                 student_init=recipe.student.init,
                                 recipe=recipe.model_dump(mode="json"), created=""),
                      validation=built.run.validation, chosen_on="validation")
    marker.write_text(source, encoding="utf-8")
    return out_dir


def _teacher_stage(run: _Run) -> Stage:
    section = run.recipe.teacher
    if section.checkpoint is not None:
        weights = section.checkpoint / "model.safetensors"
        stat = weights.stat() if weights.is_file() else None
        return Stage(section.checkpoint, stage_key([str(section.checkpoint.resolve()),
                                               stat.st_size if stat else 0,
                                               stat.st_mtime if stat else 0]), {})

    def build(folder: Path) -> dict[str, Any]:
        finetune(resolve_model(section.model), run.spec, run.train, section.finetune, folder,
                 run.runtime, resume_of(folder))
        return _trained_on(run.runtime)

    payload = {"model": section.model, "finetune": asdict(section.finetune), "task": run.spec.name,
               "train": examples_digest(run.train), **run.runtime.key_part()}
    return run_stage(run.out / "teacher", payload, build)


def _trained_on(runtime: TrainRuntime) -> dict[str, Any]:
    return {"device": runtime.device, "precision": runtime.precision, "threads": runtime.threads}


def _augment_stage(run: _Run) -> Examples | None:
    """The augmented rows (labels still the source rows'), made once and kept as JSON lines."""
    section = run.recipe.augment
    if section is None:
        return None

    def build(folder: Path) -> dict[str, Any]:
        made = augment(run.train, section.config())
        with (folder / AUGMENTED_FILE).open("w", encoding="utf-8") as out:
            for text, label in zip(made.texts, made.labels, strict=True):
                out.write(json.dumps({"text": text, "label": label}) + "\n")
        return {"augmented": len(made), "sources": len(augment_sources(run.train,
                                                                      section.config()))}

    payload = {"train": examples_digest(run.train), "augment": section.config().__dict__}
    stage = run_stage(run.out / "augment", payload, build)
    rows = [json.loads(line) for line in
            (stage.folder / AUGMENTED_FILE).read_text(encoding="utf-8").splitlines()]
    log.info("augmentation: %d augmented texts of %d sources", len(rows), stage.record.get("sources", 0))
    return Examples([tuple(r["text"]) if isinstance(r["text"], list) else r["text"] for r in rows],
                    [r["label"] for r in rows])


def _intermediate_stage(run: _Run, teacher: Stage, config: DistilConfig) -> Stage:
    """TinyBERT's first step: the student's layers learn the teacher's hidden states and
    attention maps (the teacher runs live, for this stage only)."""
    section = run.recipe.student
    init = str(teacher.folder) if section.init == "teacher" else resolve_model(section.init)

    def build(folder: Path) -> dict[str, Any]:
        model, tokenizer = init_student(init, run.spec, section.layers)
        distil(model, tokenizer, teacher.folder, run.train, config, folder, run.cache,
               run.runtime, resume_of(folder), run.augmented_for("intermediate"))
        return _trained_on(run.runtime)

    payload = {"teacher": teacher.key, "init": section.init, "layers": section.layers,
               "distil": config.key_part(), **run.training_key("intermediate")}
    return run_stage(run.out / "student-intermediate", payload, build)


def _student_stage(run: _Run, teacher: Stage) -> Stage:
    section = run.recipe.student
    init = str(teacher.folder) if section.init == "teacher" else resolve_model(section.init)
    first = None
    if section.intermediate is not None:
        first = _intermediate_stage(run, teacher, section.intermediate)

    def build(folder: Path) -> dict[str, Any]:
        if first is not None:
            model, tokenizer = load_classifier(first.folder)
        else:
            model, tokenizer = init_student(init, run.spec, section.layers)
        distil(model, tokenizer, teacher.folder, run.train, run.recipe.distil, folder, run.cache,
               run.runtime, resume_of(folder), run.augmented_for("student"))
        return _trained_on(run.runtime)

    payload = {"teacher": teacher.key, "init": section.init, "layers": section.layers,
               "distil": run.recipe.distil.key_part(), **run.training_key("student")}
    if first is not None:
        payload["intermediate"] = first.key
    return run_stage(run.out / "student", payload, build)


def _levels(run: _Run, model: PreTrainedModel) -> list[PruneLevel]:
    levels: list[PruneLevel] = []
    for spec in run.recipe.prune.levels:
        level = PruneLevel(spec.heads, spec.ffn) if isinstance(spec, PruneLevelSpec) \
            else PruneLevel.from_ratio(model, spec)
        if level not in levels:
            levels.append(level)
    return levels


def score_heads_and_neurons(checkpoint: Path, teacher_dir: Path, train: Examples, count: int,
                            max_length: int, temperature: float,
                            cache_dir: Path | None = None, bf16: bool = False) -> Importance:
    """Importance of every head and FFN neuron of `checkpoint` under the distillation loss, on the
    first `count` examples of `train`."""
    picked = list(range(min(count, len(train))))
    texts = train.pick(picked).texts
    targets = torch.from_numpy(teacher_logits_of(teacher_dir, train, picked, max_length,
                                                 cache_dir, bf16))
    model, tokenizer = load_classifier(checkpoint)
    encoded = hf_tokenize(tokenizer, texts, max_length)
    order = sorted(range(len(texts)), key=lambda i: len(encoded["input_ids"][i]))
    chunks = [order[i : i + 32] for i in range(0, len(order), 32)]

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        for picked in chunks:
            features = [{k: encoded[k][i] for k in encoded} for i in picked]
            batch = dict(tokenizer.pad(features, return_tensors="pt"))
            batch["labels"] = torch.tensor(picked)  # row indices into the teacher targets
            yield batch

    def loss_of(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return soft_loss(logits, targets[batch["labels"]], temperature)

    return importance_scores(model, batches(), loss_of, total=len(chunks))


def prune_checkpoint(checkpoint: Path, teacher_dir: Path, train: Examples, level: PruneLevel,
                     importance_examples: int, config: DistilConfig, out: Path,
                     cache_dir: Path | None = None, importance: Importance | None = None,
                     runtime: TrainRuntime | None = None, resume: Resume | None = None,
                     augmented: Examples | None = None, layers_from_student: bool = True) -> Path:
    """Score, cut to `level`, then distil again from the teacher (pruning alone loses
    accuracy), hidden states and attention maps (when `config` weighs them) from the unpruned
    `checkpoint` or the teacher; the pruned checkpoint is written to `out`."""
    if importance is None:
        importance = score_heads_and_neurons(
            checkpoint, teacher_dir, train, importance_examples, config.max_length,
            config.temperature, cache_dir, runtime is not None and runtime.bf16_logits)
    model, tokenizer = load_classifier(checkpoint)
    prune_model(model, importance, level)
    layer_teacher = checkpoint if layers_from_student else teacher_dir
    return distil(model, tokenizer, teacher_dir, train, config, out, cache_dir, runtime, resume,
                  augmented, layer_teacher)


def _importance_stage(run: _Run, teacher: Stage, student: Stage) -> tuple[Importance, str]:
    count = min(run.recipe.prune.importance_examples, len(run.train))
    config = run.recipe.prune.distil

    def build(folder: Path) -> dict[str, Any]:
        scores = score_heads_and_neurons(student.folder, teacher.folder, run.train, count,
                                         config.max_length, config.temperature, run.cache,
                                         run.runtime.bf16_logits)
        scores.save(folder / "importance.npz")
        return {"examples": count}

    payload = {"student": student.key, "examples": examples_digest(run.train.head(count)),
               "max_length": config.max_length,
               "temperature": config.temperature}
    stage = run_stage(run.out / "prune" / "importance", payload, build)
    return Importance.load(stage.folder / "importance.npz"), stage.key


@dataclass(frozen=True)
class _Level:
    level: PruneLevel
    checkpoint: Stage
    variants: Stage


def _sweep(run: _Run, teacher: Stage, student: Stage) -> tuple[list[_Level], PruneLevel]:
    """Every level's checkpoint and ONNX variants (built or reused), and the unpruned shape."""
    model, _ = load_classifier(student.folder)
    levels = _levels(run, model)
    full = PruneLevel(*model_shape(model))
    scored: tuple[Importance, str] | None = None
    made: list[_Level] = []
    for level in levels:
        checkpoint = student
        if level != full:
            scored = scored or _importance_stage(run, teacher, student)
            checkpoint = _pruned_stage(run, teacher, student, scored, level)
        made.append(_Level(level, checkpoint, _variants_stage(run, checkpoint, level.name)))
    return made, full


def _pruned_stage(run: _Run, teacher: Stage, student: Stage, scored: tuple[Importance, str],
                  level: PruneLevel) -> Stage:
    section = run.recipe.prune
    importance, importance_key = scored

    def build(folder: Path) -> dict[str, Any]:
        prune_checkpoint(student.folder, teacher.folder, run.train, level,
                         section.importance_examples, section.distil, folder, run.cache,
                         importance, run.runtime, resume_of(folder), run.augmented_for("prune"),
                         section.layers_from == "student")
        return _trained_on(run.runtime)

    payload = {"student": student.key, "teacher": teacher.key, "level": asdict(level),
               "importance": importance_key, "distil": section.distil.key_part(),
               "layers_from": section.layers_from, **run.training_key("prune")}
    return run_stage(run.out / "prune" / level.name, payload, build)


def _variants_stage(run: _Run, checkpoint: Stage, name: str) -> Stage:
    calibration = calibration_texts(run.train.texts, "train")

    def build(folder: Path) -> dict[str, Any]:
        made = make_variants(checkpoint.folder, folder, run.validation.texts[:8], calibration,
                             served_max_length(run.spec, checkpoint.folder),
                             run.recipe.int8_settings())
        # A control for the report: INT8 of the plain export, without ORT's offline fusion.
        quantize_int8(made.fp32, folder / UNFUSED_INT8)
        return {"input_names": made.exported.input_names,
                "max_abs_diff": made.exported.max_abs_diff,
                "architecture": made.exported.architecture.model_dump(),
                "fusions": made.fusion.applied, "fusions_missing": made.fusion.missing,
                "quantization": made.quantization, "calibration": made.calibration,
                "fp32_nodes": list(made.fp32_nodes), "weights": made.weights}

    payload = {"checkpoint": checkpoint.key, **run.recipe.int8_settings().key(),
               "cpu_graph": CPU_GRAPH_FORM,
               "calibration": examples_digest(Examples(calibration.texts,
                                                       [0] * len(calibration.texts)))}
    return run_stage(run.out / "onnx" / name, payload, build)


def _ort(run: _Run, checkpoint: Path, graph: Path, input_names: list[str]) -> OnnxPredictor:
    tokenizer = load_classifier(checkpoint)[1]
    max_length = min(run.spec.max_length, int(tokenizer.model_max_length or run.spec.max_length))
    return OnnxPredictor(graph, checkpoint / "tokenizer.json", input_names, max_length,
                        int(tokenizer.pad_token_id or 0), run.recipe.evaluate.threads)


def _evaluate_candidates(run: _Run, made: list[_Level], full: PruneLevel) -> list[Candidate]:
    """INT8 accuracy of every level, and INT8 batch-1 speed of all levels side by side."""
    predictors: dict[str, Predictor] = {}
    for item in made:
        names = item.variants.record["input_names"]
        predictors[item.level.name] = _ort(run, item.checkpoint.folder,
                                           item.variants.folder / "int8.onnx", names)
    texts = run.validation.texts[: run.recipe.evaluate.speed_examples]
    speeds = batch1_side_by_side(predictors, texts, rounds=2, threads=run.recipe.evaluate.threads)
    candidates = []
    for item in made:
        stats = inspect_config(load_config(item.checkpoint.folder))
        candidates.append(Candidate(
            level=item.level.name, pruned=item.level != full,
            checkpoint=str(item.checkpoint.folder), variants=str(item.variants.folder),
            parameters=stats.total_parameters,
            int8_accuracy=accuracy(predictors[item.level.name], run.validation),
            int8_ms=speeds[item.level.name].ms_per_sentence))
    return candidates


def _choose(run: _Run, candidates: list[Candidate], teacher: Stage, student: Stage) -> \
        tuple[Candidate, float | None]:
    """The level to serve, and the accuracy the budget was measured from (if there is one)."""
    budget = run.recipe.prune.max_accuracy_drop
    floor = reference = None
    if budget is not None:
        reference_dir = teacher.folder if run.recipe.prune.budget_reference == "teacher" \
            else student.folder
        reference = accuracy(TorchPredictor(reference_dir, run.spec.max_length),
                             run.validation)
        floor = reference - budget / 100.0
    return pick_level(candidates, floor), reference


def pick_level(candidates: list[Candidate], floor: float | None) -> Candidate:
    """The fastest level with INT8 accuracy >= floor; without a floor the fastest; if none
    reaches it, the most accurate, the faster of equally accurate ones (the report then says the
    budget was not met)."""
    if floor is None:
        chosen = min(candidates, key=lambda c: c.int8_ms)
    else:
        for candidate in candidates:
            candidate.meets_budget = candidate.int8_accuracy >= floor
        within = [c for c in candidates if c.meets_budget]
        chosen = min(within, key=lambda c: c.int8_ms) if within else \
            max(candidates, key=lambda c: (c.int8_accuracy, -c.int8_ms))
    chosen.chosen = True
    return chosen


def _variants_of(candidate: Candidate) -> Variants:
    folder = Path(candidate.variants)
    found = read_record(folder)
    if found is None:
        raise RecipeError(f"{folder} has no stage record; rerun the recipe to rebuild it")
    record = found.details
    exported = ExportResult(folder / "fp32.onnx", record["input_names"], record["max_abs_diff"],
                            Architecture.model_validate(record["architecture"]))
    fusion = FusionReport(applied=record["fusions"], missing=record["fusions_missing"])
    return Variants(exported, fusion, folder / "fp32.onnx", folder / "fused.onnx",
                    folder / "int8.onnx", folder / "fp16.onnx",
                    record.get("quantization", "dynamic"), record.get("calibration"),
                    tuple(record.get("fp32_nodes", ())), record.get("weights"))


def _measure(run: _Run, teacher: Stage, student: Stage, chosen: Candidate,
             candidates: list[Candidate]) -> Report:
    """Table 3: every stage's accuracy, and batch-1 speed of all stages side by side."""
    variants = _variants_of(chosen)
    names = variants.exported.input_names
    checkpoint = Path(chosen.checkpoint)
    max_length = run.spec.max_length
    plan: list[tuple[str, str, Path, Predictor, Path]] = [
        ("teacher", "PyTorch fp32", teacher.folder, TorchPredictor(teacher.folder, max_length),
         teacher.folder / "model.safetensors"),
        ("distilled student", "PyTorch fp32", student.folder,
         TorchPredictor(student.folder, max_length), student.folder / "model.safetensors"),
    ]
    if chosen.pruned:
        plan.append((f"pruned {chosen.level}", "PyTorch fp32", checkpoint,
                     TorchPredictor(checkpoint, max_length), checkpoint / "model.safetensors"))
    for stage, runtime, graph in (("ONNX export", "ORT fp32", variants.fp32),
                                  ("graph fusion", "ORT fp32 fused", variants.fused),
                                  ("INT8 quantization", "ORT int8", variants.int8)):
        plan.append((stage, runtime, checkpoint, _ort(run, checkpoint, graph, names), graph))
    texts = run.dev.texts[: run.recipe.evaluate.speed_examples]
    unfused = _ort(run, checkpoint, variants.fp32.with_name(UNFUSED_INT8), names)
    timed: dict[str, Predictor] = {name: p for name, _, _, p, _ in plan}
    speeds = batch1_side_by_side({**timed, UNFUSED_INT8: unfused}, texts,
                                 run.recipe.evaluate.rounds, run.recipe.evaluate.threads)
    rows = []
    for name, runtime, model_dir, predictor, file in plan:
        stats = inspect_config(load_config(model_dir))
        shape = stats.architecture
        rows.append(Row(
            stage=name, runtime=runtime,
            shape=f"{shape.layers}L/{shape.hidden}H/{shape.heads}x{shape.head_size}/{shape.ffn}",
            parameters=stats.total_parameters, size_mb=round(file.stat().st_size / 1e6, 2),
            accuracy=accuracy(predictor, run.dev),
            ms_per_sentence=speeds[name].ms_per_sentence, rounds_ms=speeds[name].rounds_ms,
            flops_per_token=sum(stats.flops_per_token.values())))
    fp16 = _ort(run, checkpoint, variants.fp16, names)
    fp32 = plan[-3][3]
    agreement = _agreement(fp16, fp32, run.dev)
    return Report(recipe=run.recipe.model_dump(mode="json"), task=run.spec.name,
                  dev_examples=len(run.dev), validation_examples=len(run.validation),
                  speed_examples=len(texts),
                  rounds=run.recipe.evaluate.rounds, threads=run.recipe.evaluate.threads,
                  rows=rows, candidates=candidates,
                  budget=run.recipe.prune.max_accuracy_drop,
                  budget_reference=run.recipe.prune.budget_reference,
                  fusions=variants.fusion.applied, fusions_missing=variants.fusion.missing,
                  fp16_cpu_agreement=agreement, artifact=str(run.recipe.artifact),
                  unfused_int8_ms=speeds[UNFUSED_INT8].ms_per_sentence,
                  unfused_int8_accuracy=accuracy(unfused, run.dev),
                  stage_seconds=stage_seconds(run.out))


def _agreement(first: Predictor, second: Predictor, dev: Examples) -> float:
    a, b = predictions(first, dev.texts), predictions(second, dev.texts)
    return float(np.mean(a == b))
