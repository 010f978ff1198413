"""The minimal chain finetune -> export -> optimize -> quantize -> evaluate, written as an artifact."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from transformers import AutoTokenizer

from compress.artifact import (
    Manifest,
    Metric,
    Provenance,
    Variant,
    describe_variant,
    write_manifest,
)
from compress.evaluate import evaluate
from compress.export import OPSET, ExportResult, export_onnx
from compress.finetune import FinetuneConfig, finetune
from compress.fp16 import convert_fp16
from compress.optimize import FusionReport, operator_counts, optimize
from compress.pretrained import resolve_model
from compress.quantize import quantize_int8
from compress.tasks import Examples, TaskSpec, get_task, load_split

log = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("torch", "transformers", "onnx", "onnxruntime", "tokenizers")


@dataclass(frozen=True)
class BuildPlan:
    task: str
    base_model: str
    out_dir: Path
    work_dir: Path
    data_dir: Path | None = None
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    max_dev_examples: int | None = None


def _versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _stage(name: str) -> float:
    log.info("stage %s ...", name)
    return time.perf_counter()


def build_artifact(plan: BuildPlan) -> Manifest:
    """Run the chain and write `plan.out_dir` (built aside, then moved in whole)."""
    spec = get_task(plan.task)
    train = load_split(spec, "train", plan.data_dir)
    dev = load_split(spec, "dev", plan.data_dir).head(plan.max_dev_examples)
    base = resolve_model(plan.base_model)

    started = _stage("finetune")
    finetuned = finetune(base, spec, train, plan.finetune, plan.work_dir / "finetuned")
    log.info("finetune done in %.0f s", time.perf_counter() - started)
    return package_artifact(spec, finetuned, dev, plan)


@dataclass(frozen=True)
class Variants:
    """The ONNX files made from one checkpoint, and what the export and fusion reported."""

    exported: ExportResult
    fusion: FusionReport
    fp32: Path
    fused: Path
    int8: Path
    fp16: Path


def make_variants(checkpoint: Path, folder: Path, check_texts: list[str | tuple[str, str]]) -> \
        Variants:
    """Export (logit-checked), fuse, quantize to INT8 and convert to FP16 into `folder`."""
    _stage("export")
    exported = export_onnx(checkpoint, folder / "fp32.onnx", check_texts)
    log.info("export: max |logit diff| vs PyTorch = %.2e", exported.max_abs_diff)
    _stage("optimize")
    fusion = optimize(exported.path, folder / "fused.onnx", exported.architecture)
    if fusion.missing:
        log.warning("fusions that did not apply: %s", ", ".join(fusion.missing))
    log.info("fusions applied: %s", fusion.applied)
    _stage("quantize")
    quantize_int8(folder / "fused.onnx", folder / "int8.onnx")
    _stage("fp16")
    convert_fp16(folder / "fused.onnx", folder / "fp16.onnx")
    return Variants(exported, fusion, exported.path, folder / "fused.onnx", folder / "int8.onnx",
                    folder / "fp16.onnx")


def package_artifact(spec: TaskSpec, finetuned: Path, dev: Examples, plan: BuildPlan) -> Manifest:
    """Export, fuse, quantize and evaluate a fine-tuned checkpoint into an artifact folder."""
    variants = make_variants(finetuned, plan.work_dir / "onnx", dev.texts[:8])
    recipe: dict[str, object] = {
        "stages": ["finetune", "export", "optimize", "quantize", "fp16", "evaluate"],
        "data": str(plan.data_dir) if plan.data_dir else "hub",
        "finetune": plan.finetune.as_dict(),
    }
    return assemble_artifact(spec, finetuned, variants, dev, plan.out_dir,
                             Provenance(teacher=plan.base_model, recipe=recipe, created=""))


def assemble_artifact(spec: TaskSpec, checkpoint: Path, made: Variants, dev: Examples,
                      out_dir: Path, provenance: Provenance) -> Manifest:
    """Copy the variants, tokenizer and model config into `out_dir` (built aside, moved in whole),
    evaluate every variant on `dev` and write the manifest."""
    staging = out_dir.with_name(out_dir.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files = {"fp32": made.fp32, "cpu-int8": made.int8, "gpu-fp16": made.fp16}
    for name, source in files.items():
        (staging / name).mkdir()
        shutil.copyfile(source, staging / name / "model.onnx")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    shutil.copyfile(checkpoint / "tokenizer.json", staging / "tokenizer.json")
    # The model's config beside the graphs: `compress inspect` answers from it without weights.
    shutil.copyfile(checkpoint / "config.json", staging / "model_config.json")
    max_length = min(spec.max_length, int(tokenizer.model_max_length or spec.max_length))
    pad_id = int(tokenizer.pad_token_id or 0)
    exported, fusion = made.exported, made.fusion
    variants: dict[str, Variant] = {
        "fp32": describe_variant(staging, "fp32/model.onnx", "fp32", "CPUExecutionProvider",
                                 OPSET, operators=operator_counts(made.fp32)),
        "cpu-int8": describe_variant(staging, "cpu-int8/model.onnx", "int8",
                                     "CPUExecutionProvider", OPSET, fusions=fusion.applied,
                                     operators=operator_counts(made.int8)),
        "gpu-fp16": describe_variant(staging, "gpu-fp16/model.onnx", "fp16",
                                     "CUDAExecutionProvider", OPSET, fusions=fusion.applied,
                                     operators=operator_counts(made.fp16)),
    }
    _stage("evaluate")
    metrics: list[Metric] = []
    for name, variant in variants.items():
        result = evaluate(staging / variant.file, staging / "tokenizer.json", dev,
                          exported.input_names, max_length, pad_id)
        log.info("%s accuracy on %s dev (%d): %.4f", name, spec.name, result.examples,
                 result.accuracy)
        metrics.append(Metric(name="accuracy", value=round(result.accuracy, 6), dataset=spec.name,
                              split="dev", variant=name, examples=result.examples))
    recipe = {**provenance.recipe, "export_max_abs_logit_diff": exported.max_abs_diff,
              "fusions_missing": fusion.missing}
    manifest = Manifest(
        task=spec.name,
        labels=list(spec.labels),
        input_kind=spec.input_kind,
        max_length=max_length,
        pad_token_id=pad_id,
        model_inputs=exported.input_names,
        variants=variants,
        architecture=exported.architecture,
        metrics=metrics,
        provenance=provenance.model_copy(update={
            "recipe": recipe, "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}),
    )
    write_manifest(staging, manifest)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return manifest
