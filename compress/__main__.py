"""Command line: `python -m compress <verb> ...` (build runs the whole minimal chain)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from compress.device import DEVICES, PRECISIONS
from compress.quantize import WEIGHT_FORMATS, Int8Settings
from compress.tasks import Examples, Split, TaskSpec, builtin_tasks, default_data_dir
from contract.artifact import CompressError, Manifest

STAGE_VERBS = ("finetune", "export", "optimize", "quantize")
# Logit-check inputs for a stand-alone export (build uses dev sentences instead).
SAMPLE_TEXTS: tuple[str | tuple[str, str], ...] = (
    "a short sentence to check the exported graph",
    "another one, a little longer, so that the batch needs padding to run",
)


# Exit status of a build whose served model does not beat the majority-class baseline.
BELOW_BASELINE = 3


def _add_task_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--task NAME (a shipped task file) or --task-file PATH (yours), and where its data is."""
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--task", help=f"a shipped task: {', '.join(builtin_tasks())}")
    group.add_argument("--task-file", type=Path, help="your task file (YAML, see docs/tasks.md)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder the task's data paths are relative to (default for --task: "
                        "$DATA_DIR or ../shared/data; for --task-file: the task file's folder)")
    p.add_argument("--hub", action="store_true", help="load task data from the hub by name")


def _task_of(args: argparse.Namespace) -> tuple[TaskSpec, Path | None]:
    """The task named on the command line and the folder its data paths start from."""
    from compress.tasks import resolve_task

    spec = resolve_task(args.task, args.task_file)
    data_dir = args.data_dir
    if data_dir is None and args.task is not None:
        data_dir = default_data_dir()
    return spec, None if args.hub else data_dir


def _add_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="finetune -> export -> optimize -> quantize -> evaluate")
    _add_task_args(p)
    p.add_argument("--model", default="packaged:minilm-l6",
                   help="encoder to fine-tune: packaged:NAME, a local HF folder, or a hub id")
    p.add_argument("--out", type=Path, help="artifact folder (default: models/<task>)")
    p.add_argument("--work-dir", type=Path, help="checkpoints (default: runs/<task>)")
    p.add_argument("--max-dev-examples", type=int, default=None)
    _add_name_arg(p)
    _add_int8_args(p)
    _add_baseline_arg(p)
    _add_finetune_args(p)


def _add_name_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="the name it is served under (default: the task's); two "
                   "models of one task need two names to share a model repository")


def _named(manifest: Manifest, out: Path, name: str | None) -> Manifest:
    """Write the served name into an assembled artifact's manifest (nothing else changes)."""
    if name is None or name == manifest.served_name:
        return manifest
    from contract.artifact import write_manifest

    named = Manifest.model_validate({**manifest.model_dump(), "name": name})  # its pattern
    write_manifest(out, named)
    return named


def _add_int8_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--int8", choices=("static", "dynamic"), default="static",
                   help="static (default): activation scales calibrated on train texts (else the "
                   "check texts), so an answer does not depend on its batch; dynamic: ORT's "
                   "per-call scales (a text's logits move with what it is batched with)")
    p.add_argument("--int8-keep-fp32", type=int, default=0, metavar="N",
                   help="static INT8: keep the N nodes whose quantization moves the logits most "
                   "(a per-node sweep against fp32, logged) in fp32")
    p.add_argument("--int8-smooth-alpha", type=float, default=None, metavar="A",
                   help="static INT8: SmoothQuant's migration strength in [0, 1] (outlier "
                   "activation channels moved into the weights; default 0.8; 0 turns it off)")
    p.add_argument("--int8-weights", choices=WEIGHT_FORMATS, default="s7",
                   help="INT8 weight format: s7 (default: int8 in [-64, 64], the same integers "
                   "on every x86 CPU family), s8 (full int8; saturates on AVX2 / AVX-512 without "
                   "VNNI) or u8 (slower kernels)")


def _int8_settings(args: argparse.Namespace) -> Int8Settings:
    """The --int8* flags; --int8-smooth-alpha checked to lie in [0, 1]."""
    from compress.smooth import DEFAULT_ALPHA

    alpha = DEFAULT_ALPHA if args.int8_smooth_alpha is None else float(args.int8_smooth_alpha)
    if not 0.0 <= alpha <= 1.0:
        raise SystemExit(f"--int8-smooth-alpha {alpha}: expected a value from 0 (off) to 1")
    return Int8Settings(args.int8, args.int8_keep_fp32, alpha, args.int8_weights)


def _add_baseline_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accept-below-baseline", action="store_true",
                   help=f"write the artifact and exit 0 even if the served model does not beat "
                        f"the majority-class baseline (otherwise exit {BELOW_BASELINE})")


def _add_finetune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--max-train-examples", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)


def _add_stages(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune an encoder on a task's train split")
    _add_task_args(p)
    p.add_argument("--model", default="packaged:minilm-l6")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    _add_finetune_args(p)

    p = sub.add_parser("export", help="export a fine-tuned checkpoint to ONNX, checking logits")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write")

    p = sub.add_parser("optimize", help="ORT transformer fusion of an exported ONNX file")
    p.add_argument("--onnx", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="the checkpoint it was exported from (for heads and widths)")
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("quantize", help="INT8 dynamic quantization of a fused ONNX file (build, "
                       "package and run make static, batch-invariant INT8)")
    p.add_argument("--onnx", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)


def _run_stage(args: argparse.Namespace) -> int:
    """The single-stage verbs: each wraps one pipeline function."""
    if args.verb == "finetune":
        from compress.finetune import FinetuneConfig, finetune
        from compress.pretrained import resolve_model
        from compress.tasks import ensure_labels, load_split

        spec, data_dir = _task_of(args)
        spec = ensure_labels(spec, data_dir, args.hub)
        train = load_split(spec, "train", data_dir, args.hub)
        config = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size,
                                learning_rate=args.learning_rate,
                                max_examples=args.max_train_examples, seed=args.seed)
        out = finetune(resolve_model(args.model), spec, train, config, args.out)
        print(f"checkpoint written to {out}")
    elif args.verb == "export":
        from compress.export import export_onnx

        result = export_onnx(args.checkpoint, args.out, list(SAMPLE_TEXTS))
        print(f"{result.path}: inputs {result.input_names}, max |logit diff| vs PyTorch "
              f"{result.max_abs_diff:.2e}")
    elif args.verb == "optimize":
        from compress.checkpoint import load_classifier
        from compress.export import architecture_of
        from compress.optimize import optimize

        model, _ = load_classifier(args.checkpoint)
        report = optimize(args.onnx, args.out, architecture_of(model))
        print(f"{args.out}: fused {report.applied}; not applied: {report.missing or 'none'}")
    else:
        from compress.quantize import quantize_int8

        quantize_int8(args.onnx, args.out)
        print(f"{args.out}: INT8 written")
    return 0


def _add_package(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("package", help="export -> optimize -> quantize -> (evaluate) an already "
                                       "fine-tuned HF classifier folder (no training)")
    p.add_argument("--checkpoint", type=Path, required=True, help="fine-tuned HF folder")
    _add_task_args(p, required=False)
    p.add_argument("--name", help="the name it is served under (default: the task's; without a "
                   "task: the folder's name)")
    p.add_argument("--input-kind", choices=("single", "pair"), default="single",
                   help="without a task: single texts or (text, text) pairs")
    p.add_argument("--max-length", type=int, default=None,
                   help="without a task: tokens per input (default: the tokenizer's, <= 512)")
    p.add_argument("--check-texts", type=Path,
                   help="texts (one per line; a pair tab-separated) to check INT8/FP16 against "
                        "fp32 on when there is no dev data (default: generated)")
    p.add_argument("--out", type=Path)
    p.add_argument("--work-dir", type=Path)
    p.add_argument("--max-dev-examples", type=int, default=None)
    _add_int8_args(p)
    _add_baseline_arg(p)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics of an artifact variant on a dev split")
    p.add_argument("artifact", type=Path, help="artifact folder, e.g. models/sst2")
    p.add_argument("--variant", default="cpu-int8")
    _add_task_args(p, required=False)


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="measure an artifact's CPU variants on this machine (its "
                       "integer kernels) and record the result in its manifest")
    p.add_argument("artifact", type=Path, help="artifact folder, e.g. models/sst2")
    p.add_argument("--split", choices=("dev", "train"), default="dev",
                   help="the labelled split to measure on (default dev, as the build reported)")
    _add_task_args(p, required=False)


def _add_distil_prune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distil", help="distil a fine-tuned teacher into a (layer-cut) student")
    _add_task_args(p)
    p.add_argument("--teacher", type=Path, required=True, help="fine-tuned teacher checkpoint")
    p.add_argument("--student", default="teacher",
                   help="'teacher' (layer subset of it), packaged:NAME, a folder or a hub id")
    p.add_argument("--layers", default=None,
                   help="layers to keep: '0,2,4', a count, or every_other (default: all)")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--alpha", type=float, default=1.0, help="weight of the soft loss")
    p.add_argument("--hidden-weight", type=float, default=0.0)
    p.add_argument("--attention-weight", type=float, default=0.0)
    p.add_argument("--out", type=Path, required=True)
    _add_finetune_args(p)

    p = sub.add_parser("prune", help="score heads/FFN neurons, cut them, distil again")
    _add_task_args(p)
    p.add_argument("--checkpoint", type=Path, required=True, help="the model to prune")
    p.add_argument("--teacher", type=Path, required=True, help="unpruned teacher to distil from")
    p.add_argument("--heads", type=int, required=True, help="heads every layer keeps")
    p.add_argument("--ffn", type=int, required=True, help="FFN neurons every layer keeps")
    p.add_argument("--importance-examples", type=int, default=2000)
    p.add_argument("--out", type=Path, required=True)
    _add_finetune_args(p)


def _layers_arg(text: str | None) -> list[int] | int | str | None:
    if text is None or text == "every_other":
        return text
    if "," in text:
        return [int(part) for part in text.split(",")]
    return int(text)


def _run_distil_prune(args: argparse.Namespace) -> int:
    from compress.distill import DistilConfig, distil, init_student
    from compress.pretrained import resolve_model
    from compress.tasks import ensure_labels, load_split

    spec, data_dir = _task_of(args)
    spec = ensure_labels(spec, data_dir, args.hub)
    train = load_split(spec, "train", data_dir, args.hub)
    common = {"epochs": args.epochs, "batch_size": args.batch_size,
              "learning_rate": args.learning_rate, "max_examples": args.max_train_examples,
              "seed": args.seed}
    if args.verb == "distil":
        config = DistilConfig(temperature=args.temperature, alpha=args.alpha,
                              hidden_weight=args.hidden_weight,
                              attention_weight=args.attention_weight, **common)
        source = str(args.teacher) if args.student == "teacher" else resolve_model(args.student)
        model, tokenizer = init_student(source, spec, _layers_arg(args.layers))
        out = distil(model, tokenizer, args.teacher, train, config, args.out)
    else:
        from compress.pipeline import prune_checkpoint
        from compress.prune import PruneLevel

        out = prune_checkpoint(args.checkpoint, args.teacher, train,
                               PruneLevel(args.heads, args.ffn), args.importance_examples,
                               DistilConfig(**common), args.out)
    print(f"checkpoint written to {out}")
    return 0


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="a whole YAML recipe: teacher -> distil -> prune sweep -> "
                                   "ONNX variants -> artifact + report (reuses finished stages)")
    p.add_argument("recipe", type=Path)
    p.add_argument("--data-dir", type=Path, default=default_data_dir(),
                   help="task data when the recipe names none (default: $DATA_DIR or "
                        "../shared/data)")
    add_device_args(p)


def add_device_args(p: argparse.ArgumentParser) -> None:
    """--device and --precision of the training stages (default: what the machine has)."""
    p.add_argument("--device", choices=DEVICES, default=None,
                   help="train on: auto (CUDA when torch sees a GPU, else the CPU), cpu or cuda "
                        "(default: $FFS_TRAIN_DEVICE or auto)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="autocast: auto (bf16 on a GPU or on a CPU with AVX512-BF16/AMX, else "
                        "fp32), fp32 or bf16 (default: $FFS_TRAIN_PRECISION or auto)")


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="parameters by group and FLOPs per token, from a config")
    p.add_argument("source", help="config.json, an HF folder, an artifact folder or a hub id")
    p.add_argument("--sequence-length", type=int, default=128)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _run_recipe(args: argparse.Namespace) -> int:
    from compress.device import choose_runtime
    from compress.pipeline import run_recipe
    from compress.recipe import load_recipe
    from compress.report import table
    from compress.stages import stage_summary

    recipe = load_recipe(args.recipe)
    runtime = choose_runtime(args.device, args.precision)
    print(f"training on {runtime.describe()}; stages in {recipe.output}", file=sys.stderr)
    try:
        report = run_recipe(recipe, args.data_dir, runtime)
    except KeyboardInterrupt:
        done = ", ".join(stage_summary(recipe.output)) or "none"
        print(f"\ninterrupted; finished stages kept in {recipe.output}: {done}. "
              "Run the same command again to resume.", file=sys.stderr)
        return 130
    print(table(report))
    print(f"report: {recipe.output / 'report.md'}; artifact: {recipe.artifact}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import json

    from compress.model_stats import format_stats, inspect_config, load_config

    stats = inspect_config(load_config(args.source), args.sequence_length)
    print(json.dumps(stats.as_dict(), indent=2) if args.json else format_stats(stats))
    return 0


def _run(args: argparse.Namespace) -> int:
    # Imports are per verb: torch/transformers load only for the verbs that need them.
    if args.verb in STAGE_VERBS:
        return _run_stage(args)
    if args.verb == "run":
        return _run_recipe(args)
    if args.verb in ("distil", "prune"):
        return _run_distil_prune(args)
    if args.verb == "inspect":
        return _inspect(args)
    if args.verb == "evaluate":
        return _evaluate(args)
    if args.verb == "check":
        return _check(args)
    if args.verb == "package":
        return _package(args)
    return _build(args)


def _artifact_split(args: argparse.Namespace, manifest: Manifest, split: Split) -> Examples:
    """The labelled split of the artifact's own (shipped) task, or of --task / --task-file."""
    from compress.tasks import get_task, load_split

    if args.task is None and args.task_file is None:
        spec = get_task(manifest.task)
        data_dir = None if args.hub else args.data_dir or default_data_dir()
    else:
        spec, data_dir = _task_of(args)
    return load_split(spec.with_labels(manifest.labels), split, data_dir, args.hub)


def _evaluate(args: argparse.Namespace) -> int:
    from compress.evaluate import evaluate_artifact
    from contract.artifact import read_manifest, verified_variant_path

    manifest = read_manifest(args.artifact)
    path = verified_variant_path(args.artifact, manifest, args.variant)
    dev = _artifact_split(args, manifest, "dev")
    result = evaluate_artifact(args.artifact, manifest, args.variant, path, dev)
    for name, value in result.scored.values.items():
        print(f"{manifest.task} {args.variant}: {name} {value:.4f} (majority baseline "
              f"{result.scored.baseline[name]:.4f}) on {result.examples} dev examples")
    return 0


def _check(args: argparse.Namespace) -> int:
    from compress.validation import check_artifact
    from contract.artifact import read_manifest

    examples = _artifact_split(args, read_manifest(args.artifact), args.split)
    result = check_artifact(args.artifact, examples, args.split)
    for name, record in result.here.items():
        built = result.built.get(name)
        was = f"; the build measured {built.value:.4f} on {built.int8_kernels}" \
            if built is not None else ""
        same = "" if record.labels_equal_fp32 is None else \
            f", labels equal to fp32 on {100 * record.labels_equal_fp32:.2f}%"
        print(f"{name}: {record.metric} {record.value:.4f} on {record.examples} {args.split} "
              f"examples here ({record.int8_kernels}, {record.cpu}){same}{was}")
    if result.golden_recorded:
        print(f"recorded this CPU family's golden answers: servers on "
              f"{next(iter(result.here.values())).int8_kernels} compare with them at load")
    print(f"written to {args.artifact / 'manifest.json'}")
    return 0


def _build(args: argparse.Namespace) -> int:
    from compress.build import BuildPlan, build_artifact
    from compress.finetune import FinetuneConfig

    spec, data_dir = _task_of(args)
    out = args.out or Path("models") / (args.name or spec.name)
    work = args.work_dir or Path("runs") / spec.name
    config = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size,
                            learning_rate=args.learning_rate,
                            max_examples=args.max_train_examples, seed=args.seed)
    plan = BuildPlan(spec=spec, base_model=args.model, out_dir=out, work_dir=work,
                     data_dir=data_dir, hub=args.hub, finetune=config,
                     max_dev_examples=args.max_dev_examples, int8=_int8_settings(args))
    manifest = _named(build_artifact(plan), out, args.name)
    return _report(manifest, out, args.accept_below_baseline)


def _package(args: argparse.Namespace) -> int:
    from compress.build import BuildPlan, calibration_texts, package_artifact
    from compress.packaging import check_texts_file, spec_for_checkpoint
    from compress.tasks import load_split

    task: TaskSpec | None = None
    data_dir: Path | None = None
    if args.task is not None or args.task_file is not None:
        task, data_dir = _task_of(args)
    spec = spec_for_checkpoint(args.checkpoint, task, args.name, args.input_kind,
                               args.max_length)
    has_dev = task is not None and (args.hub or task.data.dev is not None
                                    or task.data.dev_fraction is not None)
    dev = load_split(spec, "dev", data_dir, args.hub).head(args.max_dev_examples) \
        if has_dev else None
    if dev is None:
        print("no dev data: the artifact is checked against fp32, but no accuracy is measured")
    out = args.out or Path("models") / (args.name or spec.name)
    work = args.work_dir or Path("runs") / spec.name / "package"
    plan = BuildPlan(spec=spec, base_model=str(args.checkpoint), out_dir=out, work_dir=work,
                     data_dir=data_dir, hub=args.hub, max_dev_examples=args.max_dev_examples,
                     int8=_int8_settings(args))
    texts = check_texts_file(args.check_texts, spec.input_kind) if args.check_texts else None
    calibration = None
    if task is not None and (args.hub or task.data.train is not None):
        calibration = calibration_texts(load_split(spec, "train", data_dir, args.hub).texts,
                                        "train")
    manifest = _named(package_artifact(spec, args.checkpoint, dev, plan, texts, calibration),
                      out, args.name)
    return _report(manifest, out, args.accept_below_baseline)


def _report(manifest: Manifest, out: Path, accept_below_baseline: bool) -> int:
    """Print every measured figure beside its baseline; a served model at or under the
    majority-class baseline is an error unless the user accepts it."""
    for metric in manifest.metrics:
        print(f"{metric.variant}: {metric.name} {metric.value:.4f} on {metric.examples} "
              f"{metric.dataset} {metric.split} examples (majority baseline "
              f"{metric.baseline:.4f})")
    for check in manifest.checks:
        print(f"{check.variant} vs {check.reference}: labels agree on "
              f"{100 * check.label_agreement:.2f}% of {check.texts} texts, max |logit diff| "
              f"{check.max_abs_logit_diff:.4f}")
    if not manifest.evaluated:
        print("no accuracy measured (no dev data); the manifest says so")
    print(f"artifact written to {out}")
    weak = below_baseline(manifest)
    if not weak:
        return 0
    print(f"\nWARNING: the served model does not beat the majority-class baseline: {weak}. "
          "It answers no better than always giving the most frequent label; train longer, "
          "with more data or a higher learning rate.", file=sys.stderr)
    if accept_below_baseline:
        return 0
    print(f"exit {BELOW_BASELINE}: pass --accept-below-baseline to accept this model",
          file=sys.stderr)
    return BELOW_BASELINE


def below_baseline(manifest: Manifest, variant: str = "cpu-int8") -> str:
    """'' when the variant beats the baseline on its task's primary metric, else the figures."""
    primary = "micro_f1" if manifest.problem_type == "multi_label" else "accuracy"
    for metric in manifest.metrics:
        if metric.variant == variant and metric.name == primary and metric.baseline is not None \
                and metric.value <= metric.baseline:
            return f"{variant} {primary} {metric.value:.4f} <= baseline {metric.baseline:.4f}"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compress", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    _add_build(sub)
    _add_stages(sub)
    _add_package(sub)
    _add_evaluate(sub)
    _add_check(sub)
    _add_distil_prune(sub)
    _add_run(sub)
    _add_inspect(sub)
    args = parser.parse_args(argv)
    # Root at WARNING: ORT's quantizer logs every tensor at INFO on the root logger.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("compress").setLevel(logging.INFO)
    try:
        return _run(args)
    except (CompressError, OSError) as exc:  # files: missing, unreadable, full disk
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
