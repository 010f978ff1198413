"""The model-repository artifact: one folder per task with a versioned manifest.

`compress/` writes it and `app/` reads it; this module is the whole contract between them, so it must
stay importable without torch or transformers (the serving image has neither).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

InputKind = Literal["single", "pair"]
Precision = Literal["fp32", "fp16", "int8"]
# single_label: softmax, one class per input; multi_label: a sigmoid per label, each over its threshold.
ProblemType = Literal["single_label", "multi_label"]
# A multi-label artifact without tuned thresholds predicts a label at this score.
DEFAULT_THRESHOLD = 0.5


# How an INT8 graph stores its GEMM weights (activations are uint8); compress/quantize.py says
# what each format computes on which CPU family.
WeightFormat = Literal["s7", "s8", "u8"]


class CompressError(Exception):
    """An error a person can act on: its message says what to fix (no traceback needed)."""


class ArtifactError(CompressError):
    """An artifact folder is missing, malformed, or fails its integrity check."""


class Validation(BaseModel):
    """One variant's accuracy measured on one CPU: where it was built, or where it is served
    (`compress check`). Integer kernels differ by CPU family, so an INT8 graph's accuracy holds
    for the families it was measured on."""

    model_config = ConfigDict(extra="forbid")

    by: Literal["build", "check"]
    int8_kernels: str = Field(description="integer-kernel family of the CPU (cpu_features.py)")
    cpu: str = Field(description="the CPU's model name")
    metric: str
    value: float
    split: str
    examples: int
    labels_equal_fp32: float | None = Field(
        default=None, description="share of the split's texts labelled as the fp32 graph labels "
                                  "them on the same CPU")
    at: str = Field(description="UTC time of the measurement, ISO 8601")


class Variant(BaseModel):
    """One ONNX file of the artifact and what is needed to trust and run it."""

    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="path relative to the artifact folder")
    sha256: str
    precision: Precision
    execution_provider: str
    opset: int
    fusions: dict[str, int] = Field(
        default_factory=dict, description="fused operators the ORT optimizer reported"
    )
    fusions_missing: list[str] = Field(
        default_factory=list, description="fusions expected for this model type that did not apply"
    )
    fusions_unsupported: dict[str, str] = Field(
        default_factory=dict, description="fusions ORT has no pattern for in this model type: why"
    )
    operators: dict[str, int] = Field(
        default_factory=dict, description="count of each operator type in the final graph"
    )
    size_bytes: int = 0
    quantization: Literal["static", "dynamic"] | None = Field(
        default=None,
        description="int8 only. static: activation scales calibrated at build, so a row's logits "
        "do not depend on the rows batched with it. dynamic: one scale per tensor per call, taken "
        "over the whole batch and its padding, so a text's logits (rarely its label) depend on "
        "what it is batched with, and served accuracy can differ from the measured one")
    calibration: str | None = Field(
        default=None, description="static int8: the texts the activation scales came from")
    batch_invariant: bool | None = Field(
        default=None, description="measured at build: every check text has the same label and "
        "logits (within 1e-4) alone as in random mixed-length batches; see `checks`")
    fp32_nodes: list[str] = Field(
        default_factory=list, description="int8: nodes kept in fp32, the most sensitive of the "
        "build's per-node sweep (compress/int8_sensitivity.py)")
    weights: WeightFormat | None = Field(
        default=None, description="int8: the weight format. s7 (int8 in [-64, 64]) computes the "
        "same integers on every x86 CPU family; s8 saturates on AVX2 / AVX-512 without VNNI")
    validations: list[Validation] = Field(
        default_factory=list, description="accuracy measured on a CPU: by the build, and by "
        "`compress check` on each machine it was run on (the newest last)")


class Architecture(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_type: str
    layers: int
    hidden: int
    heads: int
    head_size: int
    ffn: int
    parameters: int


class Metric(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    value: float
    dataset: str
    split: str
    variant: str
    examples: int
    baseline: float | None = Field(
        default=None, description="the same metric of the majority-class baseline on this split")


class AgreementCheck(BaseModel):
    """A variant's answers against a reference's on the same texts (no labels needed): the fp32
    graph's, or (reference "batch 1") its own with each text run alone, against random
    mixed-length batches."""

    model_config = ConfigDict(extra="forbid")

    variant: str
    reference: str = "fp32"
    texts: int
    label_agreement: float
    max_abs_logit_diff: float


class Golden(BaseModel):
    """What the build's CPU answered on a few check texts with each CPU variant; a server
    compares its own answers at load (contract/golden.py)."""

    model_config = ConfigDict(extra="forbid")

    int8_kernels: str = Field(description="integer-kernel family of the build CPU: amx-int8, "
                              "avx512-vnni, avx-vnni, avx512bw, avx2, arm-dotprod, ...")
    texts: list[str | tuple[str, str]]
    logits: dict[str, list[list[float]]] = Field(
        default_factory=dict, description="variant -> one row of logits per text")


class Provenance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teacher: str
    student_init: str | None = None
    recipe: dict[str, object] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    created: str


class Manifest(BaseModel):
    """`manifest.json` of an artifact folder (format 1, see docs/architecture.md)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    task: str
    name: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.-]+$",
        description="the name it is served under (default: the task's); a model repository "
                    "may hold several models of one task under different names")
    labels: list[str] = Field(min_length=2, description="label names in logit order")
    problem_type: ProblemType = "single_label"
    thresholds: list[float] | None = Field(
        default=None, description="multi_label: score a label needs to be predicted, per label")
    input_kind: InputKind
    max_length: int = Field(gt=0)
    tokenizer: str = "tokenizer.json"
    pad_token_id: int = 0
    model_inputs: list[str] = Field(min_length=1)
    variants: dict[str, Variant]
    architecture: Architecture
    metrics: list[Metric] = Field(default_factory=list)
    evaluated: bool = Field(
        default=True, description="false: no labelled dev data was given, so no metric was measured")
    checks: list[AgreementCheck] = Field(default_factory=list)
    choices_split: str | None = Field(
        default=None, description="the split the build's choices were made on (pruning level, "
        "accuracy budget, multi-label thresholds): validation, held out of train, so that the "
        "metrics (on dev, read only for the final report) are not the best of several draws; "
        "dev where a package had no other data; null: nothing was chosen")
    golden: Golden | None = Field(
        default=None, description="the build CPU's answers, checked again at load")
    golden_checked: list[Golden] = Field(
        default_factory=list, description="answers `compress check` recorded where a machine "
        "answered differently from the record it is compared with (one per integer-kernel "
        "family); a server of that family compares with those")
    provenance: Provenance

    @property
    def served_name(self) -> str:
        """The name clients ask for: `name`, else the task's."""
        return self.name or self.task

    def golden_for(self, int8_kernels: str) -> Golden | None:
        """The recorded answers a CPU of this kernel family should reproduce: its own family's
        (from `compress check`) when recorded, else the build's."""
        for golden in self.golden_checked:
            if golden.int8_kernels == int8_kernels:
                return golden
        return self.golden

    @model_validator(mode="after")
    def _thresholds_fit(self) -> Manifest:
        if self.thresholds is not None and len(self.thresholds) != len(self.labels):
            raise ValueError(f"{len(self.thresholds)} thresholds for {len(self.labels)} labels")
        return self


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so large models do not load into memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: Path) -> Manifest:
    """Read and validate `folder/manifest.json`; raise ArtifactError naming the folder on failure."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"{folder}: no {MANIFEST_NAME}; is this an artifact folder?")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(raw, dict) and raw.get("format") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: artifact format {raw.get('format')!r} is not supported "
            f"(this build reads format {FORMAT_VERSION}); rebuild it with this version of compress"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ArtifactError(f"{path}: invalid manifest: {exc}") from exc


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Write `manifest.json` into `folder` (pretty-printed, stable key order)."""
    path = folder / MANIFEST_NAME
    path.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


def describe_variant(
    folder: Path,
    relative_file: str,
    precision: Precision,
    execution_provider: str,
    opset: int,
    fusions: dict[str, int] | None = None,
    operators: dict[str, int] | None = None,
    fusions_missing: list[str] | None = None,
    fusions_unsupported: dict[str, str] | None = None,
    quantization: Literal["static", "dynamic"] | None = None,
    calibration: str | None = None,
    fp32_nodes: list[str] | None = None,
    weights: WeightFormat | None = None,
) -> Variant:
    """Build a Variant entry for a file already written inside the artifact folder."""
    path = folder / relative_file
    return Variant(
        file=relative_file,
        sha256=sha256_file(path),
        precision=precision,
        execution_provider=execution_provider,
        opset=opset,
        fusions=fusions or {},
        fusions_missing=fusions_missing or [],
        fusions_unsupported=fusions_unsupported or {},
        operators=operators or {},
        size_bytes=path.stat().st_size,
        quantization=quantization,
        calibration=calibration,
        fp32_nodes=fp32_nodes or [],
        weights=weights,
    )


def verified_variant_path(folder: Path, manifest: Manifest, variant: str) -> Path:
    """Path of a variant's file after checking it exists and its sha256 matches the manifest."""
    if variant not in manifest.variants:
        raise ArtifactError(
            f"{folder}: task {manifest.task!r} has no {variant!r} variant "
            f"(it has: {', '.join(sorted(manifest.variants))})"
        )
    entry = manifest.variants[variant]
    path = folder / entry.file
    if not path.is_file():
        raise ArtifactError(f"{folder}: variant {variant!r} file {entry.file} is missing")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise ArtifactError(
            f"{path}: sha256 mismatch: manifest says {entry.sha256}, file has {actual}. "
            "The file was changed or corrupted after the artifact was built; refusing to load it."
        )
    return path
