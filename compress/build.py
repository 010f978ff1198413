"""The minimal chain finetune -> export -> optimize -> quantize -> evaluate, written as an artifact."""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from compress.evaluate import agreement, batch_invariance, is_batch_invariant
from compress.export import OPSET, ExportResult, export_onnx
from compress.finetune import FinetuneConfig, finetune, hf_tokenize
from compress.fp16 import convert_fp16
from compress.int8_sensitivity import most_sensitive, sensitivity
from compress.metrics import score, tune_thresholds
from compress.optimize import FusionReport, operator_counts, optimize, split_skip_layer_norm
from compress.pretrained import resolve_model
from compress.quantize import (
    CALIBRATION_PERCENTILE,
    Int8Settings,
    Quantization,
    WeightFormat,
    calibration_batches,
    quantize_int8,
    quantize_static_int8,
)
from compress.tasks import Examples, TaskSpec, TextInput, ensure_labels, hold_out, load_split
from compress.validation import validations
from contract.artifact import (
    AgreementCheck,
    CompressError,
    InputKind,
    Manifest,
    Metric,
    Provenance,
    Validation,
    Variant,
    describe_variant,
    write_manifest,
)
from contract.encoding import encode, load_tokenizer, probabilities
from contract.golden import CPU_VARIANTS, record_golden
from contract.predictor import OnnxPredictor

log = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("torch", "transformers", "onnx", "onnxruntime", "tokenizers")


@dataclass(frozen=True)
class BuildPlan:
    spec: TaskSpec
    base_model: str
    out_dir: Path
    work_dir: Path
    data_dir: Path | None = None
    hub: bool = False
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    max_dev_examples: int | None = None
    int8: Int8Settings = field(default_factory=Int8Settings)


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
    spec = ensure_labels(plan.spec, plan.data_dir, plan.hub)
    train = load_split(spec, "train", plan.data_dir, plan.hub)
    validation = None
    if spec.problem_type == "multi_label":  # thresholds are chosen: on data held out of train
        train, validation = hold_out(train, VALIDATION_FRACTION, MAX_VALIDATION_EXAMPLES)
    base = resolve_model(plan.base_model)

    started = _stage("finetune")
    finetuned = finetune(base, spec, train, plan.finetune, plan.work_dir / "finetuned")
    log.info("finetune done in %.0f s", time.perf_counter() - started)
    dev = load_split(spec, "dev", plan.data_dir, plan.hub).head(plan.max_dev_examples)
    return package_artifact(spec, finetuned, dev, plan,
                            calibration=calibration_texts(train.texts, "train"),
                            validation=validation)


@dataclass(frozen=True)
class Variants:
    """The ONNX files made from one checkpoint, and what the export and fusion reported."""

    exported: ExportResult
    fusion: FusionReport
    fp32: Path
    fused: Path
    int8: Path
    fp16: Path
    quantization: Quantization = "dynamic"
    calibration: str | None = None
    fp32_nodes: tuple[str, ...] = ()
    weights: WeightFormat | None = None  # None: made before the format was recorded


@dataclass(frozen=True)
class Calibration:
    """Texts to calibrate static INT8 on, and where they came from (for the manifest)."""

    texts: list[TextInput]
    source: str


# `compress build` holds this much of train out to tune multi-label thresholds on (recipes: the
# evaluate section's settings).
VALIDATION_FRACTION = 0.1
MAX_VALIDATION_EXAMPLES = 1000
CALIBRATION_TEXTS = 500
MIN_CALIBRATION_TEXTS = 100
# Dev texts each checked alone and in mixed batches (one run per text per variant).
INVARIANCE_TEXTS = 256
# Calibration texts the INT8 sensitivity sweep scores each node on.
SENSITIVITY_TEXTS = 200


def calibration_texts(texts: Sequence[TextInput], source: str,
                      count: int = CALIBRATION_TEXTS) -> Calibration:
    """A seeded sample of `count` texts."""
    picked = random.Random(0).sample(range(len(texts)), min(count, len(texts)))
    return Calibration([texts[i] for i in picked], f"{len(picked)} {source} texts")


def make_variants(checkpoint: Path, folder: Path, check_texts: Sequence[TextInput],
                  calibration: Calibration | None = None, max_length: int = 512,
                  int8: Int8Settings | None = None) -> Variants:
    """Export (logit-checked), fuse, quantize to INT8 and convert to FP16 into `folder`.

    Static INT8 is SmoothQuant-ed (`int8.smooth_alpha`, 0 = off) and calibrated on `calibration`
    (the check texts when none are given); with `int8.keep_fp32`, that many of its most sensitive
    nodes (a per-node sweep) stay fp32 (default: `Int8Settings()`)."""
    int8 = int8 or Int8Settings()
    _stage("export")
    exported = export_onnx(checkpoint, folder / "fp32.onnx", list(check_texts))
    log.info("export: inputs %s, max |logit diff| vs PyTorch = %.2e", exported.input_names,
             exported.max_abs_diff)
    _stage("optimize")
    fusion = optimize(exported.path, folder / "fused.onnx", exported.architecture)
    if fusion.missing:
        log.warning("fusions expected for %s that did not apply: %s",
                    exported.architecture.model_type, ", ".join(fusion.missing))
    for name, why in fusion.unsupported.items():
        log.warning("no %s fusion for %s: %s", name, exported.architecture.model_type, why)
    log.info("fusions applied: %s", fusion.applied)
    _stage(f"quantize ({int8.quantization}, {int8.describe()})")
    source = None
    fp32_nodes: list[str] = []
    if int8.quantization == "static":
        calibration = calibration or Calibration(list(check_texts), f"{len(check_texts)} check texts")
        source = (f"{calibration.source}, percentile {CALIBRATION_PERCENTILE:g} of per-text "
                  f"ranges, {int8.describe()}")
        if len(calibration.texts) < MIN_CALIBRATION_TEXTS:
            log.warning("static INT8 calibrated on only %d texts: activation ranges may not cover "
                        "real inputs; give train data or more --check-texts (%d+)",
                        len(calibration.texts), MIN_CALIBRATION_TEXTS)
        batches = list(calibration_batches(checkpoint / "tokenizer.json", calibration.texts,
                                           exported.input_names, max_length))
        if int8.keep_fp32:
            scores = sensitivity(folder / "fused.onnx", lambda: batches[:SENSITIVITY_TEXTS],
                                 int8.smooth_alpha, int8.weights)
            fp32_nodes = most_sensitive(scores, int8.keep_fp32)
            log.info("INT8 sensitivity (logit MSE against fp32, label flips of %d texts): %s; "
                     "kept in fp32: %s", min(len(batches), SENSITIVITY_TEXTS),
                     ", ".join(f"{s.node} {s.mse:.2e} {s.label_flips}" for s in scores[:8]),
                     ", ".join(fp32_nodes))
        quantize_static_int8(folder / "fused.onnx", folder / "int8.onnx", batches,
                             keep_fp32=fp32_nodes, smooth_alpha=int8.smooth_alpha,
                             weights=int8.weights)
    else:
        quantize_int8(folder / "fused.onnx", folder / "int8.onnx", weights=int8.weights)
    log.info("CPU graph: %d SkipLayerNormalization split into Add + LayerNormalization",
             split_skip_layer_norm(folder / "int8.onnx"))
    _stage("fp16")
    convert_fp16(folder / "fused.onnx", folder / "fp16.onnx")
    return Variants(exported, fusion, exported.path, folder / "fused.onnx", folder / "int8.onnx",
                    folder / "fp16.onnx", int8.quantization, source, tuple(fp32_nodes),
                    int8.weights)


def package_artifact(spec: TaskSpec, checkpoint: Path, dev: Examples | None, plan: BuildPlan,
                     check_texts: Sequence[TextInput] | None = None,
                     calibration: Calibration | None = None,
                     validation: Examples | None = None) -> Manifest:
    """Export, fuse, quantize and (with dev data) evaluate a fine-tuned checkpoint into an
    artifact folder; without dev data the variants are checked against fp32 on `check_texts`.
    Static INT8 is calibrated on `calibration`, else on the check texts; multi-label thresholds
    are tuned on `validation` (else on dev, and the manifest says so)."""
    texts = check_texts_for(checkpoint, spec, dev, check_texts)
    calibration = calibration or calibration_texts(texts, "check")
    variants = make_variants(checkpoint, plan.work_dir / "onnx", texts[:8], calibration,
                             served_max_length(spec, checkpoint), plan.int8)
    recipe: dict[str, object] = {
        "stages": ["finetune", "export", "optimize", "quantize", "fp16", "evaluate"],
        "data": "hub" if plan.hub else str(plan.data_dir or spec.source or ""),
        "finetune": plan.finetune.as_dict(),
        **plan.int8.key(),
    }
    return assemble_artifact(spec, checkpoint, variants, dev, plan.out_dir,
                             Provenance(teacher=plan.base_model, recipe=recipe, created=""), texts,
                             validation)


def check_texts_for(checkpoint: Path, spec: TaskSpec, dev: Examples | None,
                    given: Sequence[TextInput] | None, count: int = 64) -> list[TextInput]:
    """Texts to compare variants on: the given ones, else dev texts, else generated from the
    checkpoint's vocabulary."""
    if given:
        return list(given)
    if dev is not None and len(dev):
        return list(dev.texts[:count])
    return generated_texts(checkpoint / "tokenizer.json", spec.input_kind, count)


def generated_texts(tokenizer_json: Path, kind: InputKind, count: int, seed: int = 0) \
        -> list[TextInput]:
    """Texts made of random words of a tokenizer's vocabulary, of varied lengths (for checking
    variants against each other when no data is given; not for accuracy)."""
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    specials = {token.content for token in tokenizer.get_added_tokens_decoder().values()}
    words = sorted(word for word in tokenizer.get_vocab() if word not in specials
                   and word.strip("#▁Ġ") and word.strip("#▁Ġ").isalpha())
    if not words:
        raise CompressError(f"{tokenizer_json}: no word pieces to make check texts from; pass "
                            "texts with --check-texts")
    rng = random.Random(seed)

    def text() -> str:
        return " ".join(rng.choice(words).strip("#▁Ġ") for _ in range(rng.randint(3, 40)))

    return [text() if kind == "single" else (text(), text()) for _ in range(count)]


def _copy_files(made: Variants, checkpoint: Path, staging: Path) -> None:
    for name, source in {"fp32": made.fp32, "cpu-int8": made.int8, "gpu-fp16": made.fp16}.items():
        (staging / name).mkdir()
        shutil.copyfile(source, staging / name / "model.onnx")
    if not (checkpoint / "tokenizer.json").is_file():
        raise CompressError(f"{checkpoint}: no tokenizer.json; the server tokenizes with the fast "
                            "(tokenizers) form: re-save the tokenizer with a fast tokenizer class")
    shutil.copyfile(checkpoint / "tokenizer.json", staging / "tokenizer.json")
    # The model's config beside the graphs: `compress inspect` answers from it without weights.
    shutil.copyfile(checkpoint / "config.json", staging / "model_config.json")


def served_max_length(spec: TaskSpec, checkpoint: Path,
                      tokenizer: PreTrainedTokenizerBase | None = None) -> int:
    """The task's max length, capped by what the checkpoint's tokenizer declares."""
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(checkpoint)
    return min(spec.max_length, int(tokenizer.model_max_length or spec.max_length))


def check_tokenizer_parity(checkpoint: Path, tokenizer: PreTrainedTokenizerBase, served: Path,
                           texts: Sequence[TextInput], max_length: int) -> None:
    """The serving encoder must give the ids the checkpoint's own tokenizer gives (the model
    was trained and checked on those); refuse an artifact where they differ."""
    hf = hf_tokenize(tokenizer, list(texts), max_length)
    ours = encode(load_tokenizer(served, max_length), list(texts))
    for index, (expected, got) in enumerate(zip(hf["input_ids"], ours, strict=True)):
        if list(expected) != got.ids.tolist():
            raise CompressError(
                f"{checkpoint}: tokenizer.json encodes text {index} as {got.ids.tolist()[:12]}... "
                f"but the checkpoint's tokenizer gives {list(expected)[:12]}...; the served "
                "model would see other ids than it was trained on")


def _variant_entries(staging: Path, made: Variants) -> dict[str, Variant]:
    fusion = made.fusion
    return {
        "fp32": describe_variant(staging, "fp32/model.onnx", "fp32", "CPUExecutionProvider",
                                 OPSET, operators=operator_counts(made.fp32)),
        "cpu-int8": describe_variant(staging, "cpu-int8/model.onnx", "int8",
                                     "CPUExecutionProvider", OPSET,
                                     operators=operator_counts(made.int8),
                                     fusions=fusion.applied, fusions_missing=fusion.missing,
                                     fusions_unsupported=fusion.unsupported,
                                     quantization=made.quantization,
                                     calibration=made.calibration,
                                     fp32_nodes=list(made.fp32_nodes),
                                     weights=made.weights),
        "gpu-fp16": describe_variant(staging, "gpu-fp16/model.onnx", "fp16",
                                     "CUDAExecutionProvider", OPSET,
                                     operators=operator_counts(made.fp16),
                                     fusions=fusion.applied, fusions_missing=fusion.missing,
                                     fusions_unsupported=fusion.unsupported),
    }


@dataclass(frozen=True)
class Quality:
    metrics: list[Metric]
    thresholds: list[float] | None
    checks: list[AgreementCheck]
    batch_invariant: dict[str, bool]
    validations: dict[str, Validation] = field(default_factory=dict)  # CPU variants, on dev
    thresholds_split: str | None = None  # the split multi-label thresholds were tuned on


def _measure_quality(spec: TaskSpec, staging: Path, variants: dict[str, Variant],
                     dev: Examples | None, check_texts: Sequence[TextInput], inputs: list[str],
                     max_length: int, pad_id: int, validation: Examples | None = None) -> Quality:
    """Every variant's metrics on dev (multi-label: with thresholds tuned for the served INT8
    variant on `validation`, else on dev), and INT8 / FP16 agreement with fp32 on the check
    texts."""
    predictors = {name: OnnxPredictor(staging / v.file, staging / "tokenizer.json", inputs,
                                     max_length, pad_id) for name, v in variants.items()}
    checks = [agreement(predictors[name], predictors["fp32"], check_texts, name,
                        spec.problem_type) for name in ("cpu-int8", "gpu-fp16")]
    invariance = list(dev.texts[:INVARIANCE_TEXTS]) if dev is not None and len(dev) \
        else list(check_texts)
    invariant: dict[str, bool] = {}
    for name in ("fp32", "cpu-int8"):
        check = batch_invariance(predictors[name], invariance, name, spec.problem_type)
        checks.append(check)
        invariant[name] = is_batch_invariant(check)
    for check in checks:
        log.info("%s vs %s on %d texts: labels agree %.2f%%, max |logit diff| %.3g",
                 check.variant, check.reference, check.texts, 100 * check.label_agreement,
                 check.max_abs_logit_diff)
    if dev is None:
        return Quality([], None, checks, invariant)
    _stage("evaluate")
    scores = {name: probabilities(p.logits_in_batches(dev.texts), spec.problem_type)
              for name, p in predictors.items()}
    thresholds, tuned_on = None, None
    if spec.problem_type == "multi_label":
        tuning = validation if validation is not None and len(validation) else dev
        tuned_on = "validation" if tuning is validation else "dev"
        tuning_scores = scores["cpu-int8"] if tuning is dev else probabilities(
            predictors["cpu-int8"].logits_in_batches(tuning.texts), spec.problem_type)
        thresholds = tune_thresholds(tuning_scores, tuning.labels)
    metrics: list[Metric] = []
    for name, probs in scores.items():
        scored = score(spec.problem_type, probs, dev.labels, thresholds)
        for metric in spec.metric_names:
            value, baseline = scored.values[metric], scored.baseline[metric]
            log.info("%s %s on %s dev (%d): %.4f (majority baseline %.4f)", name, metric,
                     spec.name, len(dev), value, baseline)
            metrics.append(Metric(name=metric, value=round(value, 6), dataset=spec.name,
                                  split="dev", variant=name, examples=len(dev),
                                  baseline=round(baseline, 6)))
    on_this_cpu = validations(spec.problem_type, {name: scores[name] for name in CPU_VARIANTS},
                              dev.labels, thresholds, "dev", "build")
    return Quality(metrics, thresholds, checks, invariant, on_this_cpu, tuned_on)


def assemble_artifact(spec: TaskSpec, checkpoint: Path, made: Variants, dev: Examples | None,
                      out_dir: Path, provenance: Provenance,
                      check_texts: Sequence[TextInput] | None = None,
                      validation: Examples | None = None, chosen_on: str | None = None) \
        -> Manifest:
    """Copy the variants, tokenizer and model config into `out_dir` (built aside, moved in whole),
    measure every variant (on `dev` when given) and write the manifest. Multi-label thresholds
    are tuned on `validation` when given; `chosen_on` names the split earlier choices (a
    recipe's pruning level) were made on."""
    staging = out_dir.with_name(out_dir.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _copy_files(made, checkpoint, staging)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    max_length = served_max_length(spec, checkpoint, tokenizer)
    pad_id = int(tokenizer.pad_token_id or 0)
    texts = check_texts_for(checkpoint, spec, dev, check_texts)
    check_tokenizer_parity(checkpoint, tokenizer, staging / "tokenizer.json", texts[:32],
                           max_length)
    variants = _variant_entries(staging, made)
    exported, fusion = made.exported, made.fusion
    quality = _measure_quality(spec, staging, variants, dev, texts, exported.input_names,
                               max_length, pad_id, validation)
    recipe = {**provenance.recipe, "export_max_abs_logit_diff": exported.max_abs_diff,
              "fusions_missing": fusion.missing}
    manifest = Manifest(
        task=spec.name,
        labels=spec.label_names,
        problem_type=spec.problem_type,
        thresholds=quality.thresholds,
        input_kind=spec.input_kind,
        max_length=max_length,
        pad_token_id=pad_id,
        model_inputs=exported.input_names,
        variants={name: v.model_copy(update={
            "batch_invariant": quality.batch_invariant.get(name),
            "validations": [quality.validations[name]] if name in quality.validations else []})
                  for name, v in variants.items()},
        architecture=exported.architecture,
        metrics=quality.metrics,
        evaluated=dev is not None,
        choices_split=quality.thresholds_split or chosen_on,
        checks=quality.checks,
        provenance=provenance.model_copy(update={
            "recipe": recipe, "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}),
    )
    manifest.golden = record_golden(staging, manifest, list(texts))
    write_manifest(staging, manifest)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return manifest
