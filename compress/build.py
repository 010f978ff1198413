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
from compress.export import OPSET, export_onnx
from compress.finetune import FinetuneConfig, finetune
from compress.optimize import operator_counts, optimize
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


def package_artifact(spec: TaskSpec, finetuned: Path, dev: Examples, plan: BuildPlan) -> Manifest:
    """Export, fuse, quantize and evaluate a fine-tuned checkpoint into an artifact folder."""
    staging = plan.out_dir.with_name(plan.out_dir.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    _stage("export")
    exported = export_onnx(finetuned, staging / "fp32" / "model.onnx", dev.texts[:8])
    log.info("export: max |logit diff| vs PyTorch = %.2e", exported.max_abs_diff)

    _stage("optimize")
    fused_path = plan.work_dir / "fused" / "model.onnx"
    fusion = optimize(exported.path, fused_path, exported.architecture)
    if fusion.missing:
        log.warning("fusions that did not apply: %s", ", ".join(fusion.missing))
    log.info("fusions applied: %s", fusion.applied)

    _stage("quantize")
    int8_path = staging / "cpu-int8" / "model.onnx"
    quantize_int8(fused_path, int8_path)

    tokenizer = AutoTokenizer.from_pretrained(finetuned)
    shutil.copyfile(finetuned / "tokenizer.json", staging / "tokenizer.json")
    max_length = min(spec.max_length, int(tokenizer.model_max_length or spec.max_length))
    pad_id = int(tokenizer.pad_token_id or 0)

    variants: dict[str, Variant] = {
        "fp32": describe_variant(staging, "fp32/model.onnx", "fp32", "CPUExecutionProvider",
                                 OPSET, operators=operator_counts(exported.path)),
        "cpu-int8": describe_variant(staging, "cpu-int8/model.onnx", "int8",
                                     "CPUExecutionProvider", OPSET, fusions=fusion.applied,
                                     operators=operator_counts(int8_path)),
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
        provenance=Provenance(
            teacher=plan.base_model,
            student_init=None,
            recipe={
                "stages": ["finetune", "export", "optimize", "quantize", "evaluate"],
                "data": str(plan.data_dir) if plan.data_dir else "hub",
                "finetune": plan.finetune.as_dict(),
                "export_max_abs_logit_diff": exported.max_abs_diff,
                "fusions_missing": fusion.missing,
            },
            versions=_versions(),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        ),
    )
    write_manifest(staging, manifest)
    shutil.rmtree(plan.out_dir, ignore_errors=True)
    staging.rename(plan.out_dir)
    return manifest
