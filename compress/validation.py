"""A variant's accuracy measured on this machine's CPU, as the manifest records it: by the build
where it is built, and by `compress check` where it is served (integer kernels differ by CPU
family, so an INT8 graph's accuracy is known for the families it was measured on)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.metrics import score
from compress.tasks import Examples, Label
from contract.artifact import (
    DEFAULT_THRESHOLD,
    Golden,
    Manifest,
    ProblemType,
    Validation,
    read_manifest,
    verified_variant_path,
    write_manifest,
)
from contract.cpu_features import cpu_model_name, int8_kernel_family
from contract.encoding import probabilities
from contract.golden import CPU_VARIANTS, GOLDEN_TOLERANCE, record_golden
from contract.predictor import OnnxPredictor


def decisions(problem_type: ProblemType, probabilities: np.ndarray,
              thresholds: Sequence[float] | None) -> np.ndarray:
    """What a client is told: the label of each row (single-label) or its label set (multi)."""
    if problem_type == "single_label":
        return np.asarray(probabilities.argmax(axis=1))
    count = probabilities.shape[1]
    cut = np.asarray(thresholds if thresholds is not None else [DEFAULT_THRESHOLD] * count)
    return np.asarray(probabilities >= cut)


def labels_equal(problem_type: ProblemType, probabilities: np.ndarray, reference: np.ndarray,
                 thresholds: Sequence[float] | None) -> float:
    """Share of rows whose answer equals the reference's (the whole label set, multi-label)."""
    got = decisions(problem_type, probabilities, thresholds)
    want = decisions(problem_type, reference, thresholds)
    same = got == want if got.ndim == 1 else np.all(got == want, axis=1)
    return float(np.mean(same)) if len(same) else 1.0


def validations(problem_type: ProblemType, scores: dict[str, np.ndarray], gold: Sequence[Label],
                thresholds: Sequence[float] | None, split: str, by: str) -> dict[str, Validation]:
    """One record per variant in `scores` (probabilities on `split`, whose labels are `gold`),
    measured on this CPU: the task's primary metric and labels equal to fp32's."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    family, cpu = int8_kernel_family(), cpu_model_name()
    reference = scores.get("fp32")
    records = {}
    for name, probs in scores.items():
        scored = score(problem_type, probs, gold, thresholds)
        records[name] = Validation.model_validate({
            "by": by, "int8_kernels": family, "cpu": cpu, "metric": scored.primary,
            "value": round(scored.values[scored.primary], 6), "split": split,
            "examples": len(gold), "at": now,
            "labels_equal_fp32": None if reference is None else round(
                labels_equal(problem_type, probs, reference, thresholds), 6)})
    return records


@dataclass(frozen=True)
class CheckResult:
    """`compress check`: what each CPU variant scored here, beside what the build measured."""

    manifest: Manifest  # as written back, with this machine's records
    here: dict[str, Validation]
    built: dict[str, Validation]  # the build's record of each variant, where it made one
    golden_recorded: bool  # this CPU's golden answers were added (they differ from those recorded)


def check_artifact(folder: Path, examples: Examples, split: str = "dev") -> CheckResult:
    """Measure every CPU variant of the artifact in `folder` on `examples` with this machine's
    kernels, append the records to its manifest, and record this CPU's golden answers where they
    differ from those a server here would compare with; the manifest is rewritten in place."""
    manifest = read_manifest(folder)
    names = [name for name in CPU_VARIANTS if name in manifest.variants]
    scores = {}
    for name in names:
        graph = verified_variant_path(folder, manifest, name)
        predictor = OnnxPredictor(graph, folder / manifest.tokenizer, manifest.model_inputs,
                                  manifest.max_length, manifest.pad_token_id)
        scores[name] = probabilities(predictor.logits_in_batches(examples.texts),
                                     manifest.problem_type)
    here = validations(manifest.problem_type, scores, examples.labels, manifest.thresholds,
                       split, "check")
    built = {name: record for name in names for record in manifest.variants[name].validations
             if record.by == "build"}
    for name, record in here.items():
        variant = manifest.variants[name]
        manifest.variants[name] = variant.model_copy(
            update={"validations": [*variant.validations, record]})
    recorded = _record_golden_here(folder, manifest)
    write_manifest(folder, manifest)
    return CheckResult(manifest, here, built, recorded)


def _record_golden_here(folder: Path, manifest: Manifest) -> bool:
    """Add this CPU's golden answers to `manifest` (replacing its family's earlier ones) when
    those a server here would compare with differ from them: another family's, or this family's
    from another runtime. Whether they were added."""
    if manifest.golden is None:
        return False
    family = int8_kernel_family()
    mine = record_golden(folder, manifest, list(manifest.golden.texts))
    current = manifest.golden_for(family)
    assert current is not None
    if current.int8_kernels == family and _same_answers(current, mine):
        return False
    manifest.golden_checked = [g for g in manifest.golden_checked
                               if g.int8_kernels != family] + [mine]
    return True


def _same_answers(first: Golden, second: Golden) -> bool:
    """Both recorded the same logits for every variant, within the load check's tolerance."""
    if set(first.logits) != set(second.logits):
        return False
    return all(np.abs(np.asarray(first.logits[name]) - np.asarray(second.logits[name])).max()
               <= GOLDEN_TOLERANCE for name in first.logits)
