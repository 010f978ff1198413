"""`python -m bench.layernorm ARTIFACT`: the CPU graph with ORT's SkipLayerNormalization against
the same graph with it split into Add + LayerNormalization, side by side.

Both run the artifact's `cpu-int8` graph (split first when it was built fused) on one thread, the
serving predictor, the same dev sentences: one session as ORT would open it by default (its
SkipLayerNormFusion fuses the Adds and LayerNormalization back at load), one as this project opens
it (contract/session.py keeps them apart). Prints sentences/s at batch 1 and in length-sorted
batches, timed in interleaved rounds, the ratio, dev accuracy both ways and how far the logits
move; the build's choice (compress/optimize.py `split_skip_layer_norm`) stands on this figure.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np

from bench.int8 import Runner, speeds
from compress.optimize import operator_counts, split_skip_layer_norm
from compress.tasks import default_data_dir, get_task, load_split
from contract.artifact import read_manifest
from contract.encoding import encode, load_tokenizer
from contract.session import open_session


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--examples", type=int, default=400, help="dev sentences timed")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    manifest = read_manifest(args.artifact)
    task = get_task(manifest.task)
    dev = load_split(task, "dev", args.data_dir or default_data_dir())
    rows = encode(load_tokenizer(args.artifact / manifest.tokenizer, manifest.max_length),
                  dev.texts)
    labels = np.array(dev.labels)
    with tempfile.TemporaryDirectory() as tmp:
        graph = Path(tmp) / "model.onnx"
        shutil.copy(args.artifact / manifest.variants["cpu-int8"].file, graph)
        split = split_skip_layer_norm(graph)
        print(f"graph: {args.artifact.name} cpu-int8, {split} SkipLayerNormalization split here; "
              f"operators {operator_counts(graph)}")
        fused, served = Runner(graph, manifest), Runner(graph, manifest)
        # ORT's default: SkipLayerNormFusion on, as any ORT user would open the file.
        fused.predictor.session = open_session(graph, 1, spinning=False, disabled_optimizers=())
        served.predictor.session = open_session(graph, 1, spinning=False)
        runners = {"SkipLayerNorm (ORT default)": fused, "Add + LayerNorm (served)": served}
        logits = {name: runner.batch1(rows) for name, runner in runners.items()}
        rates = speeds(runners, rows[: args.examples], args.batch, args.rounds)
    first, second = logits.values()
    for name, value in logits.items():
        print(f"{name}: dev accuracy {np.mean(value.argmax(1) == labels) * 100:.2f}% "
              f"({len(rows)} texts, batch 1)")
    print(f"labels equal {np.mean(first.argmax(1) == second.argmax(1)) * 100:.2f}%, "
          f"max |logit change| {np.abs(first - second).max():.4f}")
    for shape in ("b1", f"b{args.batch}"):
        med = {name: statistics.median(rates[f"{name} {shape}"]) for name in runners}
        (a, rate_a), (b, rate_b) = med.items()
        spread = [round(x / y, 2) for x, y in zip(rates[f"{b} {shape}"], rates[f"{a} {shape}"],
                                                  strict=True)]
        print(f"{shape}: {a} {rate_a:.1f}/s, {b} {rate_b:.1f}/s: {rate_b / rate_a:.2f}x "
              f"(rounds {min(spread)}-{max(spread)}, {args.rounds} rounds, "
              f"{min(args.examples, len(rows))} texts, 1 thread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
