"""`python -m bench.served_accuracy ARTIFACT`: the accuracy a real server answers with, against
the manifest's, at several request sizes and concurrencies.

Starts the server on the artifact (loopback), sends the task's whole dev split as requests of N
texts from C concurrent clients, scores the labels it got back, and prints each figure beside the
manifest's. Equal figures at every size mean the answer a user gets does not depend on how the
traffic was batched.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench import serving
from compress.tasks import default_data_dir, get_task, load_split
from contract.artifact import read_manifest
from contract.encoding import TextInput

SHAPES = ((1, 1), (1, 16), (16, 4), (64, 2))  # (texts per request, concurrent clients)


def served_labels(url: str, task: str, texts: list[TextInput], per_request: int,
                  concurrency: int) -> list[str]:
    """The label of every text, as answered by the server for requests of `per_request` texts."""
    chunks = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    with httpx.Client(base_url=url, timeout=120.0) as http:
        def ask(chunk: list[TextInput]) -> list[str]:
            inputs = [t if isinstance(t, str) else list(t) for t in chunk]
            response = http.post(f"/v1/classify/{task}", json={"inputs": inputs})
            response.raise_for_status()
            return [result["label"] for result in response.json()["results"]]

        with ThreadPoolExecutor(concurrency) as pool:
            return [label for labels in pool.map(ask, chunks) for label in labels]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.served_accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--port", type=int, default=8798)
    args = parser.parse_args(argv)

    manifest = read_manifest(args.artifact)
    claimed = next(m.value for m in manifest.metrics
                   if m.variant == "cpu-int8" and m.name == "accuracy")
    dev = load_split(get_task(manifest.task), "dev", args.data_dir)
    served = manifest.variants["cpu-int8"]
    print(f"{args.artifact}: cpu-int8 {served.quantization or 'dynamic'} "
          f"(batch_invariant: {served.batch_invariant}); manifest accuracy {100 * claimed:.2f}% "
          f"on {len(dev)} dev examples")
    process = serving.serve_artifact(args.artifact, args.port,
                                     FFS_LIMITS__MAX_INPUTS_PER_REQUEST="64")
    try:
        print("| texts per request | clients | served accuracy | - manifest |")
        print("|---:|---:|---:|---:|")
        for per_request, clients in SHAPES:
            labels = served_labels(f"http://127.0.0.1:{args.port}", manifest.task,
                                   list(dev.texts), per_request, clients)
            correct = sum(manifest.labels.index(got) == gold
                          for got, gold in zip(labels, dev.labels, strict=True))
            accuracy = correct / len(dev)
            print(f"| {per_request} | {clients} | {100 * accuracy:.2f}% | "
                  f"{100 * (accuracy - claimed):+.2f} |")
    finally:
        serving.stop(process)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
