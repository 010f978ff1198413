"""Command line: `python -m compress <verb> ...` (build runs the whole minimal chain)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from compress.artifact import CompressError
from compress.tasks import TASKS, TaskDataError

STAGE_VERBS = ("finetune", "export", "optimize", "quantize")
# Logit-check inputs for a stand-alone export (build uses dev sentences instead).
SAMPLE_TEXTS: tuple[str | tuple[str, str], ...] = (
    "a short sentence to check the exported graph",
    "another one, a little longer, so that the batch needs padding to run",
)


def default_data_dir() -> Path | None:
    """DATA_DIR if set, else ../shared/data beside the project when present, else None (hub)."""
    env = os.environ.get("DATA_DIR")
    if env:
        return Path(env)
    beside = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    return beside if beside.is_dir() else None


def _add_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="finetune -> export -> optimize -> quantize -> evaluate")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--model", default="packaged:minilm-l6",
                   help="encoder to fine-tune: packaged:NAME, a local HF folder, or a hub id")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(),
                   help="local task data folder (default: $DATA_DIR or ../shared/data); "
                        "pass --hub to load from the hub instead")
    p.add_argument("--hub", action="store_true", help="load task data from the hub by name")
    p.add_argument("--out", type=Path, help="artifact folder (default: models/<task>)")
    p.add_argument("--work-dir", type=Path, help="checkpoints (default: runs/<task>)")
    p.add_argument("--max-dev-examples", type=int, default=None)
    _add_finetune_args(p)


def _add_finetune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--max-train-examples", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)


def _add_stages(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune an encoder on a task's train split")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--model", default="packaged:minilm-l6")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--hub", action="store_true")
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

    p = sub.add_parser("quantize", help="INT8 dynamic quantization of a fused ONNX file")
    p.add_argument("--onnx", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)


def _run_stage(args: argparse.Namespace) -> int:
    """The single-stage verbs: each wraps one pipeline function."""
    if args.verb == "finetune":
        from compress.finetune import FinetuneConfig, finetune
        from compress.pretrained import resolve_model
        from compress.tasks import get_task, load_split

        spec = get_task(args.task)
        train = load_split(spec, "train", None if args.hub else args.data_dir)
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
    p = sub.add_parser("package", help="export -> optimize -> quantize -> evaluate a fine-tuned "
                                       "checkpoint (skip finetune)")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--checkpoint", type=Path, required=True, help="fine-tuned HF folder")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--hub", action="store_true")
    p.add_argument("--out", type=Path)
    p.add_argument("--work-dir", type=Path)
    p.add_argument("--max-dev-examples", type=int, default=None)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="accuracy of an artifact variant on the dev split")
    p.add_argument("artifact", type=Path, help="artifact folder, e.g. models/sst2")
    p.add_argument("--variant", default="cpu-int8")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--hub", action="store_true")


def _add_distil_prune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distil", help="distil a fine-tuned teacher into a (layer-cut) student")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--teacher", type=Path, required=True, help="fine-tuned teacher checkpoint")
    p.add_argument("--student", default="teacher",
                   help="'teacher' (layer subset of it), packaged:NAME, a folder or a hub id")
    p.add_argument("--layers", default=None,
                   help="layers to keep: '0,2,4', a count, or every_other (default: all)")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--alpha", type=float, default=1.0, help="weight of the soft loss")
    p.add_argument("--hidden-weight", type=float, default=0.0)
    p.add_argument("--attention-weight", type=float, default=0.0)
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--hub", action="store_true")
    p.add_argument("--out", type=Path, required=True)
    _add_finetune_args(p)

    p = sub.add_parser("prune", help="score heads/FFN neurons, cut them, distil again")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--checkpoint", type=Path, required=True, help="the model to prune")
    p.add_argument("--teacher", type=Path, required=True, help="unpruned teacher to distil from")
    p.add_argument("--heads", type=int, required=True, help="heads every layer keeps")
    p.add_argument("--ffn", type=int, required=True, help="FFN neurons every layer keeps")
    p.add_argument("--importance-examples", type=int, default=2000)
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--hub", action="store_true")
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
    from compress.tasks import get_task, load_split

    spec = get_task(args.task)
    train = load_split(spec, "train", None if args.hub else args.data_dir)
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


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="parameters by group and FLOPs per token, from a config")
    p.add_argument("source", help="config.json, an HF folder, an artifact folder or a hub id")
    p.add_argument("--sequence-length", type=int, default=128)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _run_recipe(args: argparse.Namespace) -> int:
    from compress.pipeline import run_recipe, stage_summary
    from compress.recipe import load_recipe
    from compress.report import table

    recipe = load_recipe(args.recipe)
    try:
        report = run_recipe(recipe, args.data_dir)
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
        from compress.artifact import read_manifest, verified_variant_path
        from compress.evaluate import evaluate
        from compress.tasks import get_task, load_split

        manifest = read_manifest(args.artifact)
        path = verified_variant_path(args.artifact, manifest, args.variant)
        data_dir = None if args.hub else args.data_dir
        dev = load_split(get_task(manifest.task), "dev", data_dir)
        result = evaluate(path, args.artifact / manifest.tokenizer, dev, manifest.model_inputs,
                          manifest.max_length, manifest.pad_token_id)
        print(f"{manifest.task} {args.variant}: accuracy {result.accuracy:.4f} "
              f"on {result.examples} dev examples")
        return 0

    from compress.build import BuildPlan, build_artifact, package_artifact
    from compress.finetune import FinetuneConfig
    from compress.tasks import get_task, load_split

    out = args.out or Path("models") / args.task
    work = args.work_dir or Path("runs") / args.task
    data_dir = None if args.hub else args.data_dir
    if args.verb == "build":
        config = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size,
                                learning_rate=args.learning_rate,
                                max_examples=args.max_train_examples, seed=args.seed)
        plan = BuildPlan(task=args.task, base_model=args.model, out_dir=out, work_dir=work,
                         data_dir=data_dir, finetune=config,
                         max_dev_examples=args.max_dev_examples)
        manifest = build_artifact(plan)
    else:
        plan = BuildPlan(task=args.task, base_model=str(args.checkpoint), out_dir=out,
                         work_dir=work, data_dir=data_dir, max_dev_examples=args.max_dev_examples)
        spec = get_task(args.task)
        dev = load_split(spec, "dev", data_dir).head(args.max_dev_examples)
        manifest = package_artifact(spec, args.checkpoint, dev, plan)
    for metric in manifest.metrics:
        print(f"{metric.variant}: {metric.name} {metric.value:.4f} on {metric.examples} "
              f"{metric.dataset} {metric.split} examples")
    print(f"artifact written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compress", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    _add_build(sub)
    _add_stages(sub)
    _add_package(sub)
    _add_evaluate(sub)
    _add_distil_prune(sub)
    _add_run(sub)
    _add_inspect(sub)
    args = parser.parse_args(argv)
    # Root at WARNING: ORT's quantizer logs every tensor at INFO on the root logger.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("compress").setLevel(logging.INFO)
    try:
        return _run(args)
    except (CompressError, TaskDataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
