"""The model repository: which models and versions it holds, and each artifact checked before
anything loads it.

Two layouts, side by side in one repository:
- flat: `<root>/<folder>/manifest.json`, served under the manifest's name (`--name`, default its
  task) as version 1;
- versioned (Triton's): `<root>/<name>/<version>/manifest.json` with numeric versions, and an
  optional `<root>/<name>/config.yaml` (version policy, default version, canary weights).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tokenizers import Tokenizer

from app.core.routing import CPU_VARIANT
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

CONFIG_NAME = "config.yaml"


def model_key(name: str, version: int) -> str:
    """How the service's internals (routes, batchers, workers) name one version of a model."""
    return f"{name}:{version}"


@dataclass(frozen=True)
class LoadedModel:
    """One version of a model as the server uses it: manifest, tokenizer and verified files."""

    folder: Path
    manifest: Manifest
    tokenizer: Tokenizer
    files: dict[str, Path]  # variant -> verified path
    # truncation: chunk only: the same tokenizer cutting long texts into overlapping windows.
    window_tokenizer: Tokenizer | None = None
    # variant -> this CPU's answers on the manifest's golden texts against the recorded ones.
    golden: dict[str, GoldenResult] = field(default_factory=dict)
    # What the CPU pool runs: cpu-int8, or fp32 when golden_mismatch: fp32 found INT8 answering
    # differently on this CPU (the reason says so).
    cpu_variant: str = CPU_VARIANT
    cpu_variant_reason: str | None = None
    name: str = ""  # served name ("" : the manifest's)
    version: int = 1
    generation: int = 0  # > 0: the same version loaded again after its files changed

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def served_name(self) -> str:
        return self.name or self.manifest.served_name

    @property
    def key(self) -> str:
        """How the service's internals name this loaded version."""
        key = model_key(self.served_name, self.version)
        return key if not self.generation else f"{key}~{self.generation}"


class VersionPolicy(BaseModel):
    """Which of a model's versions are served (Triton's version_policy): the `latest` N, the
    `specific` ones listed, or `all`."""

    model_config = ConfigDict(extra="forbid")

    latest: int | None = Field(default=None, ge=1)
    specific: list[int] | None = Field(default=None, min_length=1)
    all: Literal[True] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> VersionPolicy:
        if sum(v is not None for v in (self.latest, self.specific, self.all)) > 1:
            raise ValueError("give one of latest, specific or all")
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve among `available`."""
        ordered = sorted(available)
        if self.all:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in self.specific]
        return ordered[-(self.latest or 1):]


class ModelConfig(BaseModel):
    """`<name>/config.yaml` of a versioned model: what is served and who gets which version."""

    model_config = ConfigDict(extra="forbid")

    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    default_version: int | None = Field(
        default=None, description="answers requests that name no version (default: the highest "
                                  "served version)")
    canary: dict[int, float] | None = Field(
        default=None, description="version -> weight: requests that name no version are split "
                                  "between these versions, decided per request")

    @model_validator(mode="after")
    def _weights(self) -> ModelConfig:
        weights = self.canary
        if weights is not None and (any(w < 0 for w in weights.values())
                                    or sum(weights.values()) <= 0):
            raise ValueError("canary weights must be >= 0 with a positive sum")
        return self


@dataclass(frozen=True)
class ModelEntry:
    """One model name in the repository: its version folders (all found, not only served),
    its config, and why it cannot be served when it cannot."""

    name: str
    folders: dict[int, Path]
    config: ModelConfig
    error: str | None = None

    def served_versions(self) -> list[int]:
        return self.config.version_policy.select(list(self.folders))


def _read_config(folder: Path) -> ModelConfig:
    path = folder / CONFIG_NAME
    if not path.is_file():
        return ModelConfig()
    try:
        return ModelConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except (yaml.YAMLError, ValidationError) as exc:
        raise ArtifactError(f"{path}: {exc}") from None


def _versions(folder: Path) -> dict[int, Path]:
    return {int(p.name): p for p in folder.iterdir()
            if p.is_dir() and p.name.isdigit() and (p / MANIFEST_NAME).is_file()}


def scan_repository(root: Path, single_name: str | None = None) -> dict[str, ModelEntry]:
    """Every model name under `root`, in either layout; a folder that cannot be read becomes an
    entry with its error (the caller decides whether that stops the server). `root` may also be
    one artifact folder (KServe puts a model at /mnt/models): it is then the one model, named
    `single_name` (default: its manifest's name)."""
    if (root / MANIFEST_NAME).is_file():
        name = single_name or read_manifest(root).served_name
        return {name: ModelEntry(name, {1: root}, ModelConfig())}
    entries = _scan_folders(root)
    if single_name is None:
        return entries
    if len(entries) != 1:  # an archive may unpack the artifact folder one level down
        raise ArtifactError(f"model_name ({single_name}) names one model, but {root} holds "
                            f"{len(entries)} ({', '.join(sorted(entries))}); point "
                            "model_repository at one artifact folder")
    entry = next(iter(entries.values()))
    return {single_name: ModelEntry(single_name, entry.folders, entry.config, entry.error)}


def _scan_folders(root: Path) -> dict[str, ModelEntry]:
    entries: dict[str, ModelEntry] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if (folder / MANIFEST_NAME).is_file():
            _add_flat(entries, folder)
            continue
        versions = _versions(folder)
        if not versions:
            continue
        try:
            config = _read_config(folder)
        except ArtifactError as exc:
            entries[folder.name] = ModelEntry(folder.name, versions, ModelConfig(), str(exc))
            continue
        if folder.name in entries:
            _clash(entries, folder.name, entries[folder.name].folders.get(1, root), folder)
            continue
        entries[folder.name] = ModelEntry(folder.name, versions, config)
    if not entries:
        raise ArtifactError(
            f"model repository {root} has no artifacts (folders with {MANIFEST_NAME}, or "
            f"<name>/<version>/{MANIFEST_NAME}); build one with `python -m compress build "
            "--task sst2`")
    return entries


def _add_flat(entries: dict[str, ModelEntry], folder: Path) -> None:
    try:
        name = read_manifest(folder).served_name
    except ArtifactError as exc:
        entries[folder.name] = ModelEntry(folder.name, {1: folder}, ModelConfig(), str(exc))
        return
    if name in entries:
        _clash(entries, name, entries[name].folders.get(1, folder), folder)
        return
    entries[name] = ModelEntry(name, {1: folder}, ModelConfig())


def _clash(entries: dict[str, ModelEntry], name: str, first: Path, second: Path) -> None:
    entries[name] = ModelEntry(name, entries[name].folders, entries[name].config, (
        f"model {name!r} is in both {first} and {second}; give one another name "
        "(`compress build/package --name`) or make them versions (<name>/<version>/)"))


def check_outputs(path: Path, labels: list[str]) -> None:
    """Refuse a model whose logits do not have one score per label of its manifest."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's own error types: an invalid or unsupported graph
        raise ArtifactError(f"{path}: onnxruntime cannot load this graph ({exc}); rebuild the "
                            "artifact") from None
    width = session.get_outputs()[0].shape[-1]
    if isinstance(width, int) and width != len(labels):
        raise ArtifactError(
            f"{path}: the model outputs {width} scores but the manifest lists {len(labels)} "
            f"labels ({', '.join(labels)}); rebuild the artifact or fix its labels"
        )


def load_model_version(folder: Path, variants: list[str], stride: int | None = None,
                    name: str = "", version: int = 1) -> LoadedModel:
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
    return LoadedModel(folder=folder, manifest=manifest, tokenizer=tokenizer, files=files,
                     window_tokenizer=windows, golden=golden, name=name, version=version)


def golden_mismatch_reason(result: GoldenResult) -> str:
    """What a failed golden check means, for logs, errors and /v1/models."""
    return (f"{result.variant} answers differently on this CPU ({result.here_kernels} integer "
            f"kernels) than where its answers were recorded ({result.recorded_kernels}): labels "
            f"agree on {100 * result.label_agreement:.0f}% of {result.texts} golden texts, logits "
            f"differ by up to {result.max_abs_logit_diff:.3g}, so the served accuracy may differ "
            "from the manifest's; run `python -m compress check` on this machine to measure and "
            "record it, or rebuild the artifact on this CPU family")


def serve_fp32_instead(model: LoadedModel, reason: str) -> LoadedModel:
    """The model with its CPU pool running the fp32 graph in place of cpu-int8 (golden_mismatch:
    fp32). Raises ArtifactError when fp32 does not reproduce its recorded answers either: then
    neither graph serves what the manifest reports."""
    path = verified_variant_path(model.folder, model.manifest, "fp32")
    check_outputs(path, model.manifest.labels)
    result = check_golden(model.folder, model.manifest, "fp32", path)
    if result is not None and not result.matches:
        raise ArtifactError(f"{model.folder}: {golden_mismatch_reason(result)}; the fp32 graph "
                            "differs too, so no graph here serves what the manifest reports")
    golden = {**model.golden, **({"fp32": result} if result is not None else {})}
    return dataclasses.replace(model, files={**model.files, "fp32": path}, golden=golden,
                               cpu_variant="fp32", cpu_variant_reason=reason)
