"""What `compress package` knows of an already fine-tuned classifier: its labels and problem type
come from its config (id2label, problem_type), a task file adds data and may rename nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

from compress.tasks import TaskSpec, TextInput
from contract.artifact import CompressError, InputKind, ProblemType

# Without a task file, inputs are cut at the tokenizer's limit, but no further than this.
DEFAULT_MAX_LENGTH = 512


def checkpoint_labels(checkpoint: Path) -> tuple[list[str], ProblemType]:
    """Label names in logit order and the problem type, from a classifier's config.json."""
    path = checkpoint / "config.json"
    if not path.is_file():
        raise CompressError(f"{checkpoint}: no config.json; is this a Hugging Face model folder?")
    config = json.loads(path.read_text(encoding="utf-8"))
    id2label = config.get("id2label") or {}
    if len(id2label) < 2:
        raise CompressError(f"{path}: id2label names {len(id2label)} label(s); a classifier "
                            "checkpoint has one per output (fine-tune it with compress build)")
    try:
        labels = [str(id2label[str(i)]) for i in range(len(id2label))]
    except KeyError:
        raise CompressError(f"{path}: id2label keys are not 0..{len(id2label) - 1}") from None
    problem: ProblemType = "multi_label" \
        if config.get("problem_type") == "multi_label_classification" else "single_label"
    return labels, problem


def _tokenizer_limit(checkpoint: Path) -> int:
    path = checkpoint / "tokenizer_config.json"
    limit = DEFAULT_MAX_LENGTH
    if path.is_file():
        value = json.loads(path.read_text(encoding="utf-8")).get("model_max_length")
        if isinstance(value, int) and 8 < value < limit:
            limit = value
    return limit


def spec_for_checkpoint(checkpoint: Path, task: TaskSpec | None, name: str | None,
                        input_kind: InputKind, max_length: int | None) -> TaskSpec:
    """The task a checkpoint is packaged as: the task file's (its labels must be the
    checkpoint's), or one made from the checkpoint's config alone."""
    labels, problem = checkpoint_labels(checkpoint)
    if task is not None:
        if task.labels is not None and task.labels != labels:
            raise CompressError(f"{checkpoint}: its labels (id2label) are {labels}, but task "
                                f"{task.name} lists {task.labels}; the logits would be named "
                                "wrongly. Fix the task file's labels (or omit them).")
        if task.problem_type != problem:
            raise CompressError(f"{checkpoint}: config.json says {problem}, task {task.name} "
                                f"says {task.problem_type}")
        return task.with_labels(labels)
    served = name or re.sub(r"[^A-Za-z0-9_.-]", "-", checkpoint.resolve().name)
    columns = ["text"] if input_kind == "single" else ["text", "text_pair"]
    return TaskSpec(name=served, input=input_kind, text_columns=columns, labels=labels,
                    problem_type=problem, max_length=max_length or _tokenizer_limit(checkpoint))


def check_texts_file(path: Path, kind: InputKind) -> list[TextInput]:
    """Texts from a file, one per line; for pair tasks the two texts are tab-separated."""
    texts: list[TextInput] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if kind == "single":
            texts.append(line.strip())
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise CompressError(f"{path}: line {number}: a pair task needs two tab-separated "
                                "texts")
        texts.append((parts[0].strip(), parts[1].strip()))
    if not texts:
        raise CompressError(f"{path}: no texts")
    return texts
