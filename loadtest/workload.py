"""Request bodies for load tests: a task's real data (single texts or pairs) or a text file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from compress.tasks import Split, get_task, load_split
from loadtest.openloop import Request


def task_requests(task: str, data_dir: Path | None, split: Split = "dev",
                  inputs_per_request: int = 1) -> list[Request]:
    """`/v1/classify/<task>` bodies from the task's data, `inputs_per_request` examples each."""
    examples = load_split(get_task(task), split, data_dir)
    inputs = [text if isinstance(text, str) else list(text) for text in examples.texts]
    return _bodies(task, inputs, inputs_per_request)


def file_requests(task: str, path: Path, inputs_per_request: int = 1) -> list[Request]:
    """Bodies from a text file: one input per line; a tab splits a line into a pair."""
    lines = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
    inputs: list[str | list[str]] = [line.split("\t", 1) if "\t" in line else line
                                     for line in lines if line.strip()]
    if not inputs:
        raise ValueError(f"{path}: no inputs")
    return _bodies(task, inputs, inputs_per_request)


def _bodies(task: str, inputs: Sequence[object], per_request: int) -> list[Request]:
    if per_request < 1:
        raise ValueError("inputs_per_request must be at least 1")
    return [Request(f"/v1/classify/{task}", {"inputs": list(inputs[i : i + per_request])})
            for i in range(0, len(inputs) - per_request + 1, per_request)]
