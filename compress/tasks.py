"""Classification tasks: what their inputs and labels are, and where their data comes from.

Data loads from a local folder laid out like GLUE/SuperGLUE downloads (SST-2 and MRPC TSVs,
SuperGLUE JSONL, BoolQ's Google JSONL) or, for users with internet, from the Hugging Face hub by name.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from compress.artifact import InputKind

Split = Literal["train", "dev"]
FileFormat = Literal["tsv", "jsonl"]


class TaskDataError(Exception):
    """Task data is missing or not in the expected shape."""


@dataclass(frozen=True)
class LocalSource:
    """Files of one task inside a data folder, per split, and how to read a row."""

    files: Mapping[str, str]
    file_format: FileFormat
    text_fields: tuple[str, ...]
    label_field: str
    encoding: str = "utf-8"
    # Turns a raw row into its text fields (e.g. BoolQ joins title and passage as SuperGLUE does).
    texts_of: Callable[[Mapping[str, Any]], tuple[str, ...]] | None = None


@dataclass(frozen=True)
class HubSource:
    """The same task on the Hugging Face hub."""

    path: str
    name: str | None
    splits: Mapping[str, str]
    text_fields: tuple[str, ...]
    label_field: str


@dataclass(frozen=True)
class TaskSpec:
    name: str
    input_kind: InputKind
    labels: tuple[str, ...]
    local: LocalSource
    hub: HubSource
    max_length: int = 128
    # Raw label value (as a string) -> index in `labels`.
    label_values: Mapping[str, int] = field(default_factory=dict)

    def label_index(self, raw: object) -> int:
        key = str(raw).strip().lower()
        if key in self.label_values:
            return self.label_values[key]
        raise TaskDataError(
            f"task {self.name}: label {raw!r} is not one of {sorted(self.label_values)}"
        )


@dataclass(frozen=True)
class Examples:
    """Texts and gold labels of one split. `texts[i]` is a str or a (str, str) pair."""

    texts: list[str | tuple[str, str]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, count: int | None) -> Examples:
        if count is None or count >= len(self):
            return self
        return Examples(self.texts[:count], self.labels[:count])


def _boolq_texts(row: Mapping[str, Any]) -> tuple[str, ...]:
    passage = str(row["passage"])
    title = row.get("title")
    # SuperGLUE's BoolQ passage is "title -- passage"; match it so hub and local data agree.
    if title:
        passage = f"{title} -- {passage}"
    return (str(row["question"]), passage)


def _binary(*names: str) -> dict[str, int]:
    return {name: i for i, name in enumerate(names)}


TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec(
        name="sst2",
        input_kind="single",
        labels=("negative", "positive"),
        local=LocalSource(
            files={"train": "sst2/train.tsv", "dev": "sst2/dev.tsv"},
            file_format="tsv",
            text_fields=("sentence",),
            label_field="label",
        ),
        hub=HubSource("nyu-mll/glue", "sst2", {"train": "train", "dev": "validation"},
                      ("sentence",), "label"),
        max_length=128,
        label_values=_binary("0", "1"),
    ),
    "mrpc": TaskSpec(
        name="mrpc",
        input_kind="pair",
        labels=("not_equivalent", "equivalent"),
        local=LocalSource(
            files={"train": "mrpc/train.tsv", "dev": "mrpc/dev.tsv"},
            file_format="tsv",
            text_fields=("#1 String", "#2 String"),
            label_field="Quality",
            encoding="utf-8-sig",
        ),
        hub=HubSource("nyu-mll/glue", "mrpc", {"train": "train", "dev": "validation"},
                      ("sentence1", "sentence2"), "label"),
        max_length=128,
        label_values=_binary("0", "1"),
    ),
    "rte": TaskSpec(
        name="rte",
        input_kind="pair",
        labels=("entailment", "not_entailment"),
        local=LocalSource(
            files={"train": "rte/train.jsonl", "dev": "rte/val.jsonl"},
            file_format="jsonl",
            text_fields=("premise", "hypothesis"),
            label_field="label",
        ),
        hub=HubSource("aps/super_glue", "rte", {"train": "train", "dev": "validation"},
                      ("premise", "hypothesis"), "label"),
        max_length=256,
        label_values={"entailment": 0, "not_entailment": 1, "0": 0, "1": 1},
    ),
    "cb": TaskSpec(
        name="cb",
        input_kind="pair",
        labels=("entailment", "contradiction", "neutral"),
        local=LocalSource(
            files={"train": "cb/train.jsonl", "dev": "cb/val.jsonl"},
            file_format="jsonl",
            text_fields=("premise", "hypothesis"),
            label_field="label",
        ),
        hub=HubSource("aps/super_glue", "cb", {"train": "train", "dev": "validation"},
                      ("premise", "hypothesis"), "label"),
        max_length=256,
        label_values={"entailment": 0, "contradiction": 1, "neutral": 2, "0": 0, "1": 1, "2": 2},
    ),
    "boolq": TaskSpec(
        name="boolq",
        input_kind="pair",
        labels=("false", "true"),
        local=LocalSource(
            # Only the validation split can be had offline; it is BoolQ's dev set.
            files={"dev": "boolq/val.jsonl"},
            file_format="jsonl",
            text_fields=("question", "passage"),
            label_field="answer",
            texts_of=_boolq_texts,
        ),
        hub=HubSource("aps/super_glue", "boolq", {"train": "train", "dev": "validation"},
                      ("question", "passage"), "label"),
        max_length=512,
        label_values={"false": 0, "true": 1, "0": 0, "1": 1},
    ),
}


def get_task(name: str) -> TaskSpec:
    """The spec of a known task, or an error that lists the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise TaskDataError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") \
            from None


def _rows_to_examples(
    spec: TaskSpec,
    rows: list[Mapping[str, Any]],
    texts_of: Callable[[Mapping[str, Any]], tuple[str, ...]],
    label_field: str,
) -> Examples:
    texts: list[str | tuple[str, str]] = []
    labels: list[int] = []
    for row in rows:
        fields = tuple(str(t).strip() for t in texts_of(row))
        texts.append(fields[0] if spec.input_kind == "single" else (fields[0], fields[1]))
        labels.append(spec.label_index(row[label_field]))
    return Examples(texts, labels)


def load_local(spec: TaskSpec, split: Split, data_dir: Path) -> Examples:
    """Read one split of a task from a local data folder (the layout of GLUE/SuperGLUE files)."""
    from datasets import load_dataset

    source = spec.local
    if split not in source.files:
        raise TaskDataError(
            f"task {spec.name}: no local {split} split is known (local files: "
            f"{dict(source.files)}); load it from the hub instead"
        )
    path = data_dir / source.files[split]
    if not path.is_file():
        raise TaskDataError(f"task {spec.name}: {path} does not exist (set DATA_DIR or --data-dir)")
    if source.file_format == "tsv":
        # GLUE TSVs contain unbalanced quotes: read without quote handling, all columns as text.
        dataset = load_dataset(
            "csv", data_files=str(path), split="train", delimiter="\t",
            quoting=csv.QUOTE_NONE, encoding=source.encoding, keep_default_na=False,
        )
    else:
        dataset = load_dataset("json", data_files=str(path), split="train")
    missing = {*source.text_fields, source.label_field} - set(dataset.column_names)
    if missing:
        raise TaskDataError(
            f"{path}: missing columns {sorted(missing)}; it has {dataset.column_names}"
        )

    def fields_of(row: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(str(row[name]) for name in source.text_fields)

    return _rows_to_examples(spec, list(dataset), source.texts_of or fields_of, source.label_field)


def load_hub(spec: TaskSpec, split: Split) -> Examples:
    """Read one split of a task from the Hugging Face hub (needs internet)."""
    from datasets import load_dataset

    hub = spec.hub
    dataset = load_dataset(hub.path, hub.name, split=hub.splits[split])

    def fields_of(row: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(str(row[name]) for name in hub.text_fields)

    return _rows_to_examples(spec, list(dataset), fields_of, hub.label_field)


def load_split(spec: TaskSpec, split: Split, data_dir: Path | None) -> Examples:
    """Local folder when `data_dir` is given, else the hub."""
    return load_local(spec, split, data_dir) if data_dir is not None else load_hub(spec, split)
