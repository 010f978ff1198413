"""Classification tasks as data: a YAML task file says what the inputs and labels are and where the
data comes from; one generic reader turns any such file into examples.

The benchmark tasks (SST-2, MRPC, RTE, CB, BoolQ) are task files shipped in `compress/task_files/`;
a user's own task is a task file of theirs (see docs/tasks.md). Data are local CSV, TSV, JSONL or
Parquet files read with `datasets`, or, for users with internet, a dataset on the Hugging Face hub.
Every error names the task file, the data file, the field or the row to fix.
"""

from __future__ import annotations

import csv
import os
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contract.artifact import CompressError, InputKind, ProblemType
from contract.encoding import TextInput

Split = Literal["train", "dev"]
FileFormat = Literal["csv", "tsv", "jsonl", "parquet"]
MetricName = Literal["accuracy", "macro_f1", "micro_f1"]
# A single-label row has one class index; a multi-label row the (sorted) indices of its labels.
Label = int | tuple[int, ...]
TASK_FILES = Path(__file__).resolve().parent / "task_files"
FORMATS: dict[str, FileFormat] = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl",
                                  ".json": "jsonl", ".parquet": "parquet"}
_TEMPLATE_FIELD = re.compile(r"\{([^{}]+)\}")


class TaskDataError(CompressError):
    """A task file or its data is missing or not in the expected shape."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSection(_Section):
    """Local files of a task. Relative paths are read from the data folder (`--data-dir`), else
    from the task file's own folder."""

    train: str | None = Field(default=None, description="train file (csv, tsv, jsonl, parquet)")
    dev: str | None = Field(default=None, description="dev file; omitted: dev_fraction of train")
    dev_fraction: float | None = Field(
        default=None, gt=0, lt=1, description="share of train held out as dev (seeded shuffle)")
    seed: int = 0
    format: FileFormat | None = Field(default=None, description="default: from the file suffix")
    quoting: Literal["standard", "none"] = Field(
        default="standard", description="'none' for GLUE TSVs, whose texts hold unbalanced quotes")
    encoding: str = "utf-8"

    @model_validator(mode="after")
    def _dev_from_somewhere(self) -> DataSection:
        if self.dev is not None and self.dev_fraction is not None:
            raise ValueError("give either data.dev or data.dev_fraction, not both")
        if self.dev_fraction is not None and self.train is None:
            raise ValueError("data.dev_fraction needs data.train to hold dev out of")
        return self


def default_data_dir() -> Path | None:
    """DATA_DIR if set, else ../shared/data beside the project when present, else None (hub)."""
    env = os.environ.get("DATA_DIR")
    if env:
        return Path(env)
    beside = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    return beside if beside.is_dir() else None


def _default_splits() -> dict[Split, str]:
    return {"train": "train", "dev": "validation"}


class HubSection(_Section):
    """The same task on the Hugging Face hub (users with internet; `--hub`)."""

    path: str
    name: str | None = None
    splits: dict[Split, str] = Field(default_factory=_default_splits)
    text_columns: list[str] | None = Field(default=None, description="default: the task's")
    label_column: str | None = Field(default=None, description="default: the task's")


class TaskSpec(_Section):
    """A task file (YAML): what a classifier reads, what it answers, and its data."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="the task's name; also the served model's name")
    input: InputKind = Field(default="single", description="single texts or (text, text) pairs")
    text_columns: list[str] = Field(
        min_length=1, max_length=2,
        description="column per text; a template like '{title} -- {passage}' joins columns")
    label_column: str = "label"
    labels: list[str] | None = Field(
        default=None, description="label names in logit order; omitted: read from the data")
    label_map: dict[str, str] | None = Field(
        default=None, description="raw value in the data -> label name (default: the value is "
                                  "the name, or its index in `labels`)")
    problem_type: ProblemType = "single_label"
    label_separator: str | None = Field(
        default=None, description="multi-label in CSV/TSV/Parquet text cells: splits a cell "
                                  "into labels (JSONL may hold a list instead)")
    max_length: int = Field(default=128, gt=8, le=8192)
    metrics: list[MetricName] | None = Field(
        default=None, description="default: accuracy + macro_f1 (single), micro_f1 + macro_f1 "
                                  "(multi)")
    data: DataSection = Field(default_factory=DataSection)
    hub: HubSection | None = None
    # Where relative data paths start when no data folder is given (the task file's folder).
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, labels: list[str] | None) -> list[str] | None:
        if labels is not None:
            if len(labels) < 2:
                raise ValueError("a classifier needs at least 2 labels")
            repeated = sorted(name for name, n in Counter(labels).items() if n > 1)
            if repeated:
                raise ValueError(f"labels repeat: {repeated}")
        return labels

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        wanted = 1 if self.input == "single" else 2
        if len(self.text_columns) != wanted:
            raise ValueError(f"input '{self.input}' needs {wanted} text column(s) in "
                             f"text_columns, got {self.text_columns}")
        allowed = {"single_label": {"accuracy", "macro_f1"},
                   "multi_label": {"micro_f1", "macro_f1", "accuracy"}}[self.problem_type]
        wrong = sorted(set(self.metrics or ()) - allowed)
        if wrong:
            raise ValueError(f"metrics {wrong} do not apply to {self.problem_type}")
        if self.label_map and self.labels:
            unknown = sorted(set(self.label_map.values()) - set(self.labels))
            if unknown:
                raise ValueError(f"label_map maps to {unknown}, which are not in labels")
        return self

    @property
    def input_kind(self) -> InputKind:
        return self.input

    @property
    def metric_names(self) -> list[MetricName]:
        if self.metrics:
            return list(self.metrics)
        if self.problem_type == "multi_label":
            return ["micro_f1", "macro_f1"]
        return ["accuracy", "macro_f1"]

    @property
    def label_names(self) -> list[str]:
        """Labels in logit order (a task whose file names none gets them from its data first)."""
        if self.labels is None:
            raise TaskDataError(f"task {self.name}: labels are not known yet; they are read "
                                "from the train split (load it first) or given in the task file")
        return list(self.labels)

    def with_labels(self, labels: Sequence[str]) -> TaskSpec:
        return self.model_copy(update={"labels": list(labels)})


@dataclass(frozen=True)
class Examples:
    """Texts and gold labels of one split. `texts[i]` is a str or a (str, str) pair; `labels[i]`
    a class index, or a tuple of label indices for a multi-label task."""

    texts: list[TextInput]
    labels: list[Label]

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, count: int | None) -> Examples:
        if count is None or count >= len(self):
            return self
        return Examples(self.texts[:count], self.labels[:count])

    def pick(self, indices: Sequence[int]) -> Examples:
        return Examples([self.texts[i] for i in indices], [self.labels[i] for i in indices])


# -- task files -------------------------------------------------------------------------------

def hold_out(train: Examples, fraction: float, most: int, seed: int = 0) \
        -> tuple[Examples, Examples]:
    """`train` split in two by a seeded shuffle: what stays to train on, and a validation split
    of `fraction` of it (at least 1 example, at most `most`) to make choices on."""
    if len(train) < 2:
        raise CompressError(f"{len(train)} train example(s): too few to hold a validation "
                            "split out of")
    size = min(most, max(1, round(fraction * len(train))), len(train) - 1)
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    return train.pick(sorted(order[size:])), train.pick(sorted(order[:size]))


def builtin_tasks() -> list[str]:
    """Names of the task files shipped with the project."""
    return sorted(path.stem for path in TASK_FILES.glob("*.yaml"))


def load_task_file(path: Path) -> TaskSpec:
    """Read and validate a task file; errors name the file and the field."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TaskDataError(f"{path}: cannot read task file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise TaskDataError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise TaskDataError(f"{path}: a task file is a YAML mapping (name:, text_columns:, ...)")
    try:
        spec = TaskSpec.model_validate(raw)
    except ValidationError as exc:
        raise TaskDataError(f"{path}: invalid task file:\n{_problems(exc)}") from None
    return spec.model_copy(update={"source": path.resolve().parent})


def _problems(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  field '{where}': {message}")
    return "\n".join(lines)


def get_task(name: str) -> TaskSpec:
    """A shipped task by name, or an error that lists the known ones."""
    path = TASK_FILES / f"{name}.yaml"
    if not path.is_file():
        raise TaskDataError(f"unknown task {name!r}; known tasks: {', '.join(builtin_tasks())} "
                            "(or pass your own with --task-file)")
    return load_task_file(path)


def resolve_task(task: str | None, task_file: Path | None) -> TaskSpec:
    """The task of a command line: --task NAME (shipped) or --task-file PATH (a user's)."""
    if (task is None) == (task_file is None):
        raise TaskDataError("name the task with either --task NAME or --task-file PATH")
    return load_task_file(task_file) if task_file is not None else get_task(str(task))


# -- data ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Columns:
    """Where a split's texts and labels are, and what to call the data in errors."""

    where: str
    text_columns: list[str]
    label_column: str


def _template_fields(column: str) -> list[str]:
    return _TEMPLATE_FIELD.findall(column) or [column]


def _text_of(column: str, row: Mapping[str, Any]) -> str:
    if not _TEMPLATE_FIELD.search(column):
        value = row[column]
        return "" if value is None else str(value)
    return _TEMPLATE_FIELD.sub(lambda m: "" if row[m.group(1)] is None else str(row[m.group(1)]),
                               column)


def _check_columns(columns: _Columns, present: Sequence[str]) -> None:
    needed = {field for column in columns.text_columns for field in _template_fields(column)}
    missing = sorted((needed | {columns.label_column}) - set(present))
    if missing:
        raise TaskDataError(f"{columns.where}: missing columns {missing}; it has "
                            f"{list(present)} (fix text_columns / label_column in the task file)")


def _raw_labels(spec: TaskSpec, value: Any, where: str) -> list[str]:
    """The raw label value(s) of a row, as strings."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise TaskDataError(f"{where}: the label is empty")
    if spec.problem_type == "single_label":
        if isinstance(value, list):
            raise TaskDataError(f"{where}: a list of labels {value!r} in a single_label task "
                                "(set problem_type: multi_label)")
        return [_label_text(value)]
    if isinstance(value, list):
        return [_label_text(v) for v in value]
    if spec.label_separator is None:
        raise TaskDataError(f"{where}: multi_label rows need a list of labels, or a "
                            f"label_separator for text cells like {value!r}")
    return [part.strip() for part in str(value).split(spec.label_separator) if part.strip()]


def _label_text(value: Any) -> str:
    if isinstance(value, bool):  # BoolQ's answer: true/false, as the label names say
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _label_index(spec: TaskSpec, raw: str, labels: list[str], where: str) -> int:
    if spec.label_map is not None:
        mapped = spec.label_map.get(raw, spec.label_map.get(raw.lower()))
        if mapped is None:
            raise TaskDataError(f"{where}: label {raw!r} is not in label_map "
                                f"({sorted(spec.label_map)})")
        return labels.index(mapped)
    lowered = [name.lower() for name in labels]
    if raw.lower() in lowered:
        return lowered.index(raw.lower())
    if re.fullmatch(r"-?\d+", raw) and 0 <= int(raw) < len(labels):
        return int(raw)
    raise TaskDataError(f"{where}: label {raw!r} is not one of {labels} (nor an index into them)")


def labels_from_rows(spec: TaskSpec, rows: Sequence[Mapping[str, Any]], columns: _Columns) \
        -> list[str]:
    """Label names found in the data: label_map targets, else the distinct raw values (numbers in
    numeric order, other values sorted)."""
    if spec.label_map is not None:
        return list(dict.fromkeys(spec.label_map.values()))
    found: set[str] = set()
    for number, row in enumerate(rows, start=1):
        found.update(_raw_labels(spec, row[columns.label_column], f"{columns.where}: row {number}"))
    numeric = all(re.fullmatch(r"-?\d+", value) for value in found)
    ordered = sorted(found, key=int) if numeric else sorted(found)
    if len(ordered) < 2:
        raise TaskDataError(f"{columns.where}: the data has only the label(s) {ordered}; a "
                            "classifier needs at least 2")
    return ordered


def rows_to_examples(spec: TaskSpec, rows: Sequence[Mapping[str, Any]], columns: _Columns) \
        -> Examples:
    """Texts and label indices of rows, checking every row."""
    labels = spec.label_names
    texts: list[TextInput] = []
    targets: list[Label] = []
    for number, row in enumerate(rows, start=1):
        where = f"{columns.where}: row {number}"
        fields = [_text_of(column, row).strip() for column in columns.text_columns]
        for column, text in zip(columns.text_columns, fields, strict=True):
            if not text:
                raise TaskDataError(f"{where}: text column {column!r} is empty")
        texts.append(fields[0] if spec.input == "single" else (fields[0], fields[1]))
        indices = [_label_index(spec, raw, labels, where)
                   for raw in _raw_labels(spec, row[columns.label_column], where)]
        targets.append(indices[0] if spec.problem_type == "single_label"
                       else tuple(sorted(set(indices))))
    return Examples(texts, targets)


def _file_format(spec: TaskSpec, path: Path) -> FileFormat:
    if spec.data.format is not None:
        return spec.data.format
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        raise TaskDataError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; "
                            f"set data.format to one of csv, tsv, jsonl, parquet")
    return found


def read_rows(spec: TaskSpec, path: Path) -> list[dict[str, Any]]:
    """Every row of a local data file, as read by `datasets` (all CSV/TSV columns as text)."""
    from datasets import Features, Value, load_dataset

    if not path.is_file():
        raise TaskDataError(f"task {spec.name}: {path} does not exist (set --data-dir, or fix "
                            "the data paths of the task file)")
    kind = _file_format(spec, path)
    try:
        if kind in ("csv", "tsv"):
            quoting = csv.QUOTE_NONE if spec.data.quoting == "none" else csv.QUOTE_MINIMAL
            delimiter = "\t" if kind == "tsv" else ","
            # Every column as text: "10" stays the phrase "10", a label "007" stays "007".
            features = Features({name: Value("string")
                                 for name in _header(path, delimiter, spec.data.encoding)})
            dataset = load_dataset("csv", data_files=str(path), split="train",
                                   delimiter=delimiter, quoting=quoting, features=features,
                                   encoding=spec.data.encoding, keep_default_na=False)
        elif kind == "jsonl":
            dataset = load_dataset("json", data_files=str(path), split="train")
        else:
            dataset = load_dataset("parquet", data_files=str(path), split="train")
    except Exception as exc:  # datasets wraps parser errors in many types; the message is what helps
        raise TaskDataError(f"{path}: cannot read it as {kind}: {exc}") from None
    return list(dataset)


def _header(path: Path, delimiter: str, encoding: str) -> list[str]:
    with path.open(encoding=encoding, newline="") as handle:
        first = handle.readline().rstrip("\r\n")
    names = first.split(delimiter) if delimiter == "\t" else next(csv.reader([first]))
    if not any(names):
        raise TaskDataError(f"{path}: the first line should name the columns; it is empty")
    return names


def _local_path(spec: TaskSpec, relative: str, data_dir: Path | None) -> Path:
    path = Path(relative).expanduser()
    if path.is_absolute():
        return path
    root = data_dir if data_dir is not None else spec.source
    return (root or Path.cwd()) / path


def _local_rows(spec: TaskSpec, split: Split, data_dir: Path | None) -> tuple[list[dict[str, Any]], str]:
    data = spec.data
    fraction = data.dev_fraction  # set: dev is a seeded part of train
    source = data.train if split == "train" or fraction is not None else data.dev
    if source is None:
        raise TaskDataError(f"task {spec.name}: no local {split} split is known (data: "
                            f"{data.model_dump(exclude_none=True)}); add data.{split} to the task "
                            "file" + (" or load it from the hub (--hub)" if spec.hub else ""))
    path = _local_path(spec, source, data_dir)
    rows = read_rows(spec, path)
    if not rows:
        raise TaskDataError(f"{path}: no rows")
    if fraction is not None:
        order = list(range(len(rows)))
        random.Random(data.seed).shuffle(order)
        cut = max(1, round(len(rows) * fraction))
        part = order[:cut] if split == "dev" else order[cut:]
        return [rows[i] for i in sorted(part)], f"{path} ({split} part, seed {data.seed})"
    return rows, str(path)


def ensure_labels(spec: TaskSpec, data_dir: Path | None, hub: bool = False) -> TaskSpec:
    """The spec with its label list: as written, or read from the train split's data."""
    if spec.labels is not None:
        return spec
    rows, columns = _split_rows(spec, "train", data_dir, hub)
    return spec.with_labels(labels_from_rows(spec, rows, columns))


def _split_rows(spec: TaskSpec, split: Split, data_dir: Path | None, hub: bool) \
        -> tuple[list[dict[str, Any]], _Columns]:
    if hub:
        return _hub_rows(spec, split)
    rows, where = _local_rows(spec, split, data_dir)
    columns = _Columns(where, spec.text_columns, spec.label_column)
    _check_columns(columns, list(rows[0]))
    return rows, columns


def _hub_rows(spec: TaskSpec, split: Split) -> tuple[list[dict[str, Any]], _Columns]:
    from datasets import load_dataset

    if spec.hub is None:
        raise TaskDataError(f"task {spec.name}: the task file has no hub section")
    hub = spec.hub
    dataset = load_dataset(hub.path, hub.name, split=hub.splits[split])
    columns = _Columns(f"hub {hub.path}/{hub.name or ''}:{hub.splits[split]}",
                       hub.text_columns or spec.text_columns, hub.label_column or spec.label_column)
    _check_columns(columns, dataset.column_names)
    return list(dataset), columns


def load_split(spec: TaskSpec, split: Split, data_dir: Path | None, hub: bool = False) -> Examples:
    """One split of a task: local files (relative to `data_dir`, else the task file's folder), or
    the hub when `hub` is set."""
    rows, columns = _split_rows(spec, split, data_dir, hub)
    if spec.labels is None:
        spec = ensure_labels(spec, data_dir, hub)
    return rows_to_examples(spec, rows, columns)


def majority_label(labels: Sequence[Label]) -> int:
    """The most frequent class of single-label rows (ties: the lowest index)."""
    counts = Counter(label for label in labels if isinstance(label, int))
    return min(counts, key=lambda label: (-counts[label], label))
