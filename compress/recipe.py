"""The YAML recipe: one file that says how a teacher becomes a served student.

Sections mirror the stages (teacher finetune -> student distil -> prune sweep -> ONNX variants ->
evaluate). Unknown keys and wrong types are refused at load, naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from compress.augment import AugmentConfig
from compress.distill import DistilConfig
from compress.finetune import FinetuneConfig
from compress.quantize import Int8Settings, WeightFormat
from compress.smooth import DEFAULT_ALPHA as SMOOTH_ALPHA
from compress.stages import cache_root
from compress.tasks import TaskSpec, builtin_tasks, get_task, load_task_file
from contract.artifact import CompressError


class RecipeError(CompressError):
    """The recipe file cannot be read or is invalid."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeacherSection(_Section):
    model: str = Field(default="packaged:minilm-l6", description="encoder to fine-tune into the teacher")
    checkpoint: Path | None = Field(
        default=None, description="an already fine-tuned teacher: no finetune"
    )
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)


class StudentSection(_Section):
    init: str = Field(
        default="teacher",
        description="'teacher' (layer subset of it), packaged:NAME, a local folder or a hub id",
    )
    layers: list[int] | int | Literal["every_other"] | None = Field(
        default=None, description="encoder layers to keep: indices, a count or 'every_other'"
    )
    intermediate: DistilConfig | None = Field(
        default=None,
        description="a first distillation stage on the teacher's hidden states and attention "
        "maps (TinyBERT's order: intermediate layers, then the prediction layer); its "
        "logit_weight is usually 0, layer_map names the teacher layer of each student layer",
    )

    @field_validator("intermediate")
    @classmethod
    def _transfers_layers(cls, config: DistilConfig | None) -> DistilConfig | None:
        if config is not None and not config.needs_online_teacher:
            raise ValueError("intermediate: set hidden_weight and/or attention_weight above 0 "
                             "(else it is plain logit distillation: use distil)")
        return config


AugmentStage = Literal["intermediate", "student", "prune"]


def _default_augmented_stages() -> list[AugmentStage]:
    # Not the intermediate stage by default: it runs the teacher live on every row it trains on.
    return ["student", "prune"]


class AugmentSection(_Section):
    """Teacher-labelled augmented texts made from the training texts (compress/augment.py)."""

    copies: int = Field(default=10, ge=1, description="augmented texts made of each chosen text")
    min_words: int = Field(default=0, ge=0, description="vary only texts of this many words")
    max_sources: int | None = Field(default=None, gt=0, description="vary at most this many")
    mask_prob: float = Field(default=0.1, ge=0, le=1)
    replace_prob: float = Field(default=0.1, ge=0, le=1)
    ngram_prob: float = Field(default=0.25, ge=0, le=1)
    max_ngram: int = Field(default=5, ge=1)
    seed: int = 0
    stages: list[AugmentStage] = Field(
        default_factory=_default_augmented_stages,
        description="distillation stages that train on the augmented texts besides the training "
                    "split")

    def config(self) -> AugmentConfig:
        return AugmentConfig(**self.model_dump(exclude={"stages"}))


class PruneLevelSpec(_Section):
    heads: int = Field(gt=0)
    ffn: int = Field(gt=0)


def _unpruned() -> list[float | PruneLevelSpec]:
    return [1.0]


class PruneSection(_Section):
    levels: list[float | PruneLevelSpec] = Field(
        default_factory=_unpruned,
        description="share of heads and FFN neurons every layer keeps (1.0 = unpruned), or "
        "{heads, ffn} counts",
    )
    importance_examples: int = Field(default=2000, gt=0)
    distil: DistilConfig = Field(default_factory=DistilConfig)
    max_accuracy_drop: float | None = Field(
        default=None,
        ge=0,
        description="accuracy points the served model may lose; the fastest level within it is chosen",
    )
    budget_reference: Literal["teacher", "student"] = "teacher"
    layers_from: Literal["student", "teacher"] = Field(
        default="student",
        description="whose hidden states and attention maps a pruned level learns when "
        "prune.distil weighs them (hidden_weight, attention_weight): the unpruned student, of "
        "the same width and depth, or the teacher; logits always come from the teacher",
    )

    @field_validator("levels")
    @classmethod
    def _ratios_in_range(cls, levels: list[float | PruneLevelSpec]) -> list[float | PruneLevelSpec]:
        if not levels:
            raise ValueError("at least one level")
        for level in levels:
            if isinstance(level, float) and not 0 < level <= 1:
                raise ValueError(f"ratio {level} is not in (0, 1]")
        return levels


class EvaluateSection(_Section):
    max_dev_examples: int | None = Field(default=None, gt=0)
    validation_fraction: float = Field(
        default=0.1, gt=0, lt=0.5, description="share of the train examples held out (seeded) as "
        "the validation split every choice is made on (pruning level, budget, thresholds); dev "
        "is read only for the final report")
    max_validation_examples: int = Field(
        default=1000, gt=0, description="the validation split's size at most (large tasks keep "
        "their train data)")
    seed_accuracies: list[float] | None = Field(
        default=None, description="the served level's INT8 dev accuracy under other training "
        "seeds, where measured: reports print the spread beside their one-seed accuracy")
    speed_examples: int = Field(
        default=300, gt=0,
        description="sentences timed at batch 1 (validation ones to choose, dev for the report)")
    rounds: int = Field(default=3, gt=0)
    threads: int = Field(default=1, gt=0, description="threads per model while timing (one instance)")


class Recipe(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    task: str | None = Field(default=None, description="a shipped task (sst2, cb, ...)")
    task_file: Path | None = Field(default=None, description="or a task file of yours")
    data_dir: Path | None = Field(
        default=None, description="local task data; default ../shared/data or $DATA_DIR"
    )
    hub: bool = False
    train_from_dev: int | None = Field(
        default=None, gt=0,
        description="train on this many dev examples (seeded shuffle) and evaluate on the rest: "
        "for tasks whose train split is not available offline (BoolQ)",
    )
    out_dir: Path | None = Field(
        default=None,
        description="stage checkpoints and report; default $FFS_CACHE_DIR/runs/<name>",
    )
    artifact_dir: Path | None = Field(
        default=None, description="the servable artifact; default <out_dir>/artifact"
    )
    cache_dir: Path | None = Field(
        default=None, description="teacher logits (per row) and the teacher's graph; default "
        "<out_dir>/cache (runs that share a teacher may share it)")
    teacher: TeacherSection = Field(default_factory=TeacherSection)
    student: StudentSection = Field(default_factory=StudentSection)
    distil: DistilConfig = Field(default_factory=DistilConfig)
    augment: AugmentSection | None = Field(
        default=None, description="teacher-labelled augmented texts (off if absent)")
    prune: PruneSection = Field(default_factory=PruneSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    int8: Literal["static", "dynamic"] = Field(
        default="static", description="static: activation scales calibrated on train texts "
        "(a row's answer does not depend on its batch); dynamic: ORT's per-call scales")
    int8_keep_fp32: int = Field(
        default=0, ge=0, description="static INT8: keep this many of the most sensitive nodes "
        "(a per-node sweep against fp32) in fp32")
    int8_smooth_alpha: float = Field(
        default=SMOOTH_ALPHA, ge=0.0, le=1.0, description="static INT8: SmoothQuant's migration "
        "strength (outlier activation channels moved into the weights before quantizing; "
        "compress/smooth.py); 0 turns it off")
    int8_weights: WeightFormat = Field(
        default="s7", description="INT8 weight format: s7 (int8 in [-64, 64]: the same integers "
        "on every x86 CPU family, so the accuracy measured at build holds where it is served), "
        "s8 (full int8: saturates on AVX2 / AVX-512 CPUs without VNNI) or u8 (slower kernels)")

    def int8_settings(self) -> Int8Settings:
        """The INT8 fields as the build takes them."""
        return Int8Settings(self.int8, self.int8_keep_fp32, self.int8_smooth_alpha,
                            self.int8_weights)

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str | None) -> str | None:
        if task is not None and task not in builtin_tasks():
            raise ValueError(f"unknown task {task!r}; known: {', '.join(builtin_tasks())} "
                             "(or give task_file)")
        return task

    @model_validator(mode="after")
    def _one_task(self) -> Recipe:
        if (self.task is None) == (self.task_file is None):
            raise ValueError("give either task (a shipped task) or task_file")
        return self

    def task_spec(self) -> TaskSpec:
        """The recipe's task (a task file path is relative to the working directory)."""
        return load_task_file(self.task_file) if self.task_file is not None \
            else get_task(str(self.task))

    @property
    def output(self) -> Path:
        return self.out_dir or cache_root() / "runs" / self.name

    @property
    def cache(self) -> Path:
        return self.cache_dir or self.output / "cache"

    @property
    def artifact(self) -> Path:
        return self.artifact_dir or self.output / "artifact"


def load_recipe(path: Path) -> Recipe:
    """Read and validate a recipe file; errors name the file and the offending key."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc}") from exc
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(f"{path}: invalid recipe:\n{exc}") from exc
