"""Serving overhead: sentences/s through the HTTP server at saturation against the same worker
layout driven in-process.

    python -m bench overhead --artifact models/sst2 [--rounds 3] [--concurrency 32]

The reference is the server's own layout without the server: one pinned single-thread process per
usable core (the server's default) on the same INT8 graph, each looping over its share of the
sentences at batch 1 inside the process (bench/instances.py, Table 3's multi-instance pool).
Both sides classify the same dev sentences end to end (text -> tokenizer -> logits -> label),
in interleaved rounds of one run; medians and their ratio are printed (shared machines are noisy:
read the ratio, not the absolute figures).

The load comes from `wrk` when it is installed (C, ~0.1 ms of CPU per request) or else from an httpx
client in this process (~3-4 ms of CPU per request). Either runs on the same cores as the server and
takes CPU from it; with httpx the client, not the server, is what saturates a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench import serving
from bench.instances import GraphSpec, InstancePool, Layout
from compress.speed import interleaved
from compress.tasks import get_task, load_split
from contract.artifact import read_manifest, verified_variant_path
from contract.cpu_quota import usable_cores
from contract.encoding import TextInput
from loadtest import wrk


@dataclass(frozen=True)
class Round:
    in_process: float
    http: float


def same_layout(artifact: Path) -> InstancePool:
    """The server's default worker layout without the server: one pinned single-thread process
    per usable core, each looping over its share of the sentences at batch 1 (tokenize, run,
    argmax) with no hop per sentence: Table 3's multi-instance pool, on the served INT8 graph."""
    manifest = read_manifest(artifact)
    graph = GraphSpec(verified_variant_path(artifact, manifest, "cpu-int8"),
                      artifact / manifest.tokenizer, list(manifest.model_inputs),
                      manifest.max_length, manifest.pad_token_id)
    cores = usable_cores()
    return InstancePool(graph, Layout(len(cores), 1), cores)


async def http_rate(url: str, task: str, texts: list[TextInput], concurrency: int) -> float:
    """Sentences/s through the server, one sentence per request, `concurrency` in flight."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    next_index = 0
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0) as client:

        async def sender() -> None:
            nonlocal next_index
            while next_index < len(texts):
                text = texts[next_index]
                next_index += 1
                body = {"inputs": [text if isinstance(text, str) else list(text)]}
                response = await client.post(f"/v1/classify/{task}", json=body)
                response.raise_for_status()

        await client.post(f"/v1/classify/{task}", json={"inputs": [texts[0]]})  # warm connection
        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        return len(texts) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, default=Path("models/sst2"))
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("DATA_DIR", "../shared/data")))
    parser.add_argument("--texts", type=int, default=None, help="dev sentences per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--client", choices=("auto", "wrk", "httpx"), default="auto",
                        help="load generator (auto: wrk when installed)")
    parser.add_argument("--seconds", type=float, default=6.0, help="wrk duration per round")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    manifest = read_manifest(args.artifact)
    texts = load_split(get_task(manifest.task), "dev", args.data_dir).head(args.texts).texts
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "httpx"
    script = wrk.classify_script(manifest.task, texts) if client == "wrk" else None
    reference = same_layout(args.artifact)
    process = serving.serve_artifact(args.artifact, args.port)
    url = f"http://127.0.0.1:{args.port}"

    def over_http() -> float:
        if script is None:
            return asyncio.run(http_rate(url, manifest.task, texts, args.concurrency))
        measured = wrk.run(url, script, args.concurrency, args.seconds)
        if measured.errors:
            raise RuntimeError(f"wrk saw {measured.errors} failed requests")
        return measured.requests_per_s

    done = [0]

    def report(figures: dict[str, float]) -> None:
        done[0] += 1
        local, remote = figures["in-process"], figures["http"]
        print(f"round {done[0]}: in-process {local:8.1f} sent/s   http {remote:8.1f} sent/s   "
              f"ratio {remote / local:.2f}", flush=True)

    try:
        reference.run(texts)  # warm-up, not counted
        measured = interleaved({"in-process": lambda: reference.run(texts).sentences_per_s,
                                "http": over_http}, args.rounds, report)
    finally:
        serving.stop(process)
        reference.close()
    rounds = [Round(a, b) for a, b in zip(measured["in-process"], measured["http"], strict=True)]
    local = statistics.median(r.in_process for r in rounds)
    remote = statistics.median(r.http for r in rounds)
    ratios = [r.http / r.in_process for r in rounds]
    print(f"\n{manifest.task} ({len(texts)} dev sentences, {args.rounds} rounds, "
          f"{len(os.sched_getaffinity(0))} cores, concurrency {args.concurrency}):")
    print(f"  same layout in-process ({reference.layout.instances} pinned single-thread "
          f"processes, batch 1): {local:.1f} sentences/s")
    print(f"  HTTP server, default layout, saturated ({client}): {remote:.1f} sentences/s")
    print(f"  HTTP / in-process: {remote / local:.2f} (median of per-round ratios "
          f"{statistics.median(ratios):.2f})")
    if args.json:
        args.json.write_text(json.dumps({"task": manifest.task, "texts": len(texts),
                                         "client": client, "concurrency": args.concurrency,
                                         "rounds": [asdict(r) for r in rounds],
                                         "in_process": local, "http": remote,
                                         "ratio": remote / local}, indent=2))
    return 0
