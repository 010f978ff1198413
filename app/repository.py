"""The model repository: one artifact folder per task, each checked before anything loads it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from compress.artifact import (
    MANIFEST_NAME,
    ArtifactError,
    Manifest,
    read_manifest,
    verified_variant_path,
)
from compress.encoding import load_tokenizer


@dataclass(frozen=True)
class TaskModel:
    """A task's artifact as the server uses it: manifest, tokenizer and verified model files."""

    folder: Path
    manifest: Manifest
    tokenizer: Tokenizer
    files: dict[str, Path]  # variant -> verified path

    @property
    def task(self) -> str:
        return self.manifest.task


def find_artifacts(root: Path) -> dict[str, Path]:
    """Task name -> artifact folder, for every folder directly under `root` with a manifest."""
    found: dict[str, Path] = {}
    for folder in sorted(p for p in root.iterdir() if (p / MANIFEST_NAME).is_file()):
        task = read_manifest(folder).task
        if task in found:
            raise ArtifactError(
                f"task {task!r} is in both {found[task]} and {folder}; keep one artifact per "
                "task in the model repository"
            )
        found[task] = folder
    if not found:
        raise ArtifactError(
            f"model repository {root} has no artifacts (folders with {MANIFEST_NAME}); build one "
            "with `python -m compress build --task sst2`"
        )
    return found


def load_task_model(folder: Path, variants: list[str]) -> TaskModel:
    """Read an artifact and verify the sha256 of each variant the server will load."""
    manifest = read_manifest(folder)
    files = {name: verified_variant_path(folder, manifest, name) for name in variants}
    tokenizer_path = folder / manifest.tokenizer
    if not tokenizer_path.is_file():
        raise ArtifactError(f"{folder}: tokenizer file {manifest.tokenizer} is missing")
    tokenizer = load_tokenizer(tokenizer_path, manifest.max_length)
    return TaskModel(folder=folder, manifest=manifest, tokenizer=tokenizer, files=files)
