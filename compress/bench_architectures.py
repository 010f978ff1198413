"""`python -m compress.bench_architectures`: every supported architecture packaged by the real chain,
with what its artifact records (inputs, fusions, INT8/FP16 checks) and INT8 against fp32 at batch 1
on the same graph inputs, timed side by side in one run.

Random-init models of each architecture (4 layers, hidden 256, a tokenizer of the family trained on
SST-2 sentences) stand in for checkpoints that cannot be downloaded here; the packaged MiniLM-L6 and
MPNet-base encoders (with an untrained classification head: speed, not accuracy) are real sizes.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from compress.build import BuildPlan, package_artifact
from compress.packaging import spec_for_checkpoint
from compress.speed import batch1_side_by_side
from compress.tiny_models import ARCHITECTURES, build_tiny_classifier
from contract.artifact import CompressError, Manifest
from contract.predictor import OnnxPredictor

log = logging.getLogger(__name__)
PACKAGED = {"minilm-l6 (BERT 6L/384)": "packaged:minilm-l6",
            "mpnet-base (MPNet 12L/768)": "packaged:mpnet-base"}


@dataclass(frozen=True)
class Row:
    name: str
    manifest: Manifest
    fp32_ms: float
    int8_ms: float


def _sentences(data_dir: Path | None, count: int) -> list[str]:
    path = (data_dir or Path("data")) / "sst2" / "train.tsv"
    if not path.is_file():
        raise CompressError(f"{path} does not exist: pass --data-dir (the GLUE SST-2 files)")
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [line.rsplit("\t", 1)[0].strip() for line in lines[:count]]


def _classifier_from_encoder(model: str, folder: Path) -> Path:
    """A packaged sentence encoder with a fresh 2-label head, saved as a classifier folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from compress.pretrained import resolve_model

    source = resolve_model(model)
    if not (folder / "config.json").is_file():
        AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=2, id2label={0: "negative", 1: "positive"},
            label2id={"negative": 0, "positive": 1},
            attn_implementation="eager").save_pretrained(folder)
        AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def _package(name: str, checkpoint: Path, work: Path) -> Manifest:
    spec = spec_for_checkpoint(checkpoint, None, name.split()[0], "single", 128)
    plan = BuildPlan(spec=spec, base_model=str(checkpoint), out_dir=work / "models" / spec.name,
                     work_dir=work / "runs" / spec.name)
    return package_artifact(spec, checkpoint, None, plan)


def _time(folder: Path, manifest: Manifest, texts: list[str], rounds: int) -> tuple[float, float]:
    predictors = {variant: OnnxPredictor(folder / variant / "model.onnx",
                                        folder / manifest.tokenizer, manifest.model_inputs,
                                        manifest.max_length, manifest.pad_token_id, threads=1)
                  for variant in ("fp32", "cpu-int8")}
    speeds = batch1_side_by_side(dict(predictors), texts, rounds=rounds, threads=1)
    return speeds["fp32"].ms_per_sentence, speeds["cpu-int8"].ms_per_sentence


def table(rows: list[Row]) -> str:
    """The docs table: one line per architecture."""
    lines = ["| architecture | graph inputs | fusions applied | not applicable (why in manifest) "
             "| INT8 / FP16 labels = fp32 | fp32 ms | INT8 ms | INT8 speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        variant = row.manifest.variants["cpu-int8"]
        fused = ", ".join(f"{k} {v}" for k, v in variant.fusions.items()) or "none"
        unsupported = ", ".join(variant.fusions_unsupported) or "-"
        if variant.fusions_missing:
            unsupported += f"; MISSING: {', '.join(variant.fusions_missing)}"
        checks = " / ".join(f"{100 * c.label_agreement:.0f}%" for c in row.manifest.checks)
        inputs = ", ".join(i.removesuffix("_ids").removesuffix("_mask")
                           for i in row.manifest.model_inputs)
        lines.append(f"| {row.name} | {inputs} | {fused} | {unsupported} | {checks} | "
                     f"{row.fp32_ms:.2f} | {row.int8_ms:.2f} | {row.fp32_ms / row.int8_ms:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from compress.tasks import default_data_dir

    parser = argparse.ArgumentParser(prog="python -m compress.bench_architectures",
                                     description=__doc__)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-architectures"))
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--texts", type=int, default=200, help="SST-2 sentences timed per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-packaged", action="store_true")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="rows to measure, by name (e.g. minilm-l6 mpnet-base bert)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    sentences = _sentences(args.data_dir, 3000)
    texts = sentences[-args.texts:]
    rows = []
    candidates: list[tuple[str, Path]] = []
    for arch in ARCHITECTURES:
        if args.only and arch not in args.only:
            continue
        folder = args.work_dir / "hf" / arch
        if not (folder / "config.json").is_file():
            build_tiny_classifier(arch, folder, sentences[:2000], layers=4, hidden=256, heads=4,
                                  ffn=1024, positions=512, vocab_size=2000)
        candidates.append((f"{arch} (random 4L/256)", folder))
    if not args.skip_packaged:
        for name, model in PACKAGED.items():
            if args.only and name.split()[0] not in args.only:
                continue
            try:
                folder = _classifier_from_encoder(model, args.work_dir / "hf" / name.split()[0])
            except Exception as exc:  # a packaged model that is not installed: say so, go on
                print(f"skipped {name}: {exc}")
                continue
            candidates.append((name, folder))
    for name, folder in candidates:
        manifest = _package(name, folder, args.work_dir)
        fp32_ms, int8_ms = _time(args.work_dir / "models" / manifest.task, manifest, texts,
                                 args.rounds)
        rows.append(Row(name, manifest, fp32_ms, int8_ms))
        print(f"{name}: fp32 {fp32_ms:.2f} ms, INT8 {int8_ms:.2f} ms", flush=True)
    result = table(rows)
    (args.work_dir / "table.md").write_text(result + "\n", encoding="utf-8")
    print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
