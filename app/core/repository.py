"""The model repository: one artifact folder per task, each checked before anything loads it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

from app.settings import ConfigError
from contract.artifact import (
    MANIFEST_NAME,
    ArtifactError,
    Manifest,
    read_manifest,
    verified_variant_path,
)
from contract.encoding import load_tokenizer
from contract.golden import GoldenResult, check_golden


@dataclass(frozen=True)
class TaskModel:
    """A task's artifact as the server uses it: manifest, tokenizer and verified model files."""

    folder: Path
    manifest: Manifest
    tokenizer: Tokenizer
    files: dict[str, Path]  # variant -> verified path
    # truncation: chunk only: the same tokenizer cutting long texts into overlapping windows.
    window_tokenizer: Tokenizer | None = None
    # variant -> this CPU's answers on the manifest's golden texts against the build's.
    golden: dict[str, GoldenResult] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.manifest.task


def artifact_folders(root: Path) -> list[Path]:
    """Folders directly under `root` that hold a manifest; an error if there are none."""
    folders = sorted(p for p in root.iterdir() if (p / MANIFEST_NAME).is_file())
    if not folders:
        raise ArtifactError(
            f"model repository {root} has no artifacts (folders with {MANIFEST_NAME}); build one "
            "with `python -m compress build --task sst2`"
        )
    return folders


def check_outputs(path: Path, labels: list[str]) -> None:
    """Refuse a model whose logits do not have one score per label of its manifest."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    width = session.get_outputs()[0].shape[-1]
    if isinstance(width, int) and width != len(labels):
        raise ArtifactError(
            f"{path}: the model outputs {width} scores but the manifest lists {len(labels)} "
            f"labels ({', '.join(labels)}); rebuild the artifact or fix its labels"
        )


def load_task_model(folder: Path, variants: list[str], stride: int | None = None) -> TaskModel:
    """Read an artifact, verify the sha256 of each variant the server will load, and run the
    golden check of each CPU variant (do this CPU's answers match the build's?); with `stride`,
    also prepare the windowing tokenizer of truncation: chunk."""
    manifest = read_manifest(folder)
    files = {name: verified_variant_path(folder, manifest, name) for name in variants}
    for path in files.values():
        check_outputs(path, manifest.labels)
    tokenizer_path = folder / manifest.tokenizer
    if not tokenizer_path.is_file():
        raise ArtifactError(f"{folder}: tokenizer file {manifest.tokenizer} is missing")
    tokenizer = load_tokenizer(tokenizer_path, manifest.max_length)
    windows = None
    if stride is not None:
        if stride >= manifest.max_length // 2:
            raise ConfigError(f"limits.chunk_stride ({stride}) must be under half of task "
                              f"{manifest.task}'s max_length ({manifest.max_length})")
        windows = load_tokenizer(tokenizer_path, manifest.max_length, stride,
                                 pairs=manifest.input_kind == "pair")
    golden = {name: result for name, path in files.items()
              if (result := check_golden(folder, manifest, name, path)) is not None}
    return TaskModel(folder=folder, manifest=manifest, tokenizer=tokenizer, files=files,
                     window_tokenizer=windows, golden=golden)
