"""`python -m deploy.checks.gpu_check`: the GPU pool measured in one run, layout by layout,
through the real server (deploy/gpu-check.sh sets up and calls this).

    python -m deploy.checks.gpu_check --artifact models/sst2 --provider cuda

Layouts, each a fresh server over the same artifact and inputs:
  gpu-fp16   every input on the GPU pool, FP16 graph (no spill-over: the GPU alone)
  gpu-fp32   the same pool running the fp32 graph
  cpu-int8   every input on the CPU pool (all usable cores), static INT8
  hybrid     inputs of >= --min-length tokens on the GPU (fp16), the rest on the CPU pool
For each of the first three: sentences/s at batch 1 (one text per request, one client) and at the
best of --batches (requests of k texts, two clients), p99 at a fixed offered rate, on SST-2 dev
sentences and on BoolQ questions + passages (one text, up to --max-length tokens); the labels each
layout serves on SST-2 dev (accuracy, agreement with fp32, and whether a text sent alone gets the
label it gets in a request of 32). Then the capacity at --slo-ms of every layout on a mix of the
two (one BoolQ-length input per --mix SST-2 ones).

With --provider cpu the GPU pool runs on ORT's CPU provider: a dry run of the whole check, whose
"GPU" figures are CPU figures and say so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import serving
from compress.tasks import default_data_dir, get_task, load_split
from contract.artifact import MANIFEST_NAME, read_manifest
from loadtest.capacity import find_capacity
from loadtest.openloop import Request, run_blocking, run_step

PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
GPU_LAYOUTS = ("gpu-fp16", "gpu-fp32")
PATH = "/v1/classify/{task}"
BATCH1_TEXTS = 256  # dev texts also sent one per request


@dataclass
class KindFigures:
    """One layout on one kind of input."""

    batch1_per_s: float = 0.0
    best_per_s: float = 0.0
    best_batch: int = 0
    p99_ms: float = 0.0
    p99_rate: float = 0.0
    p99_failed: int = 0  # refused, errors or client overload during the fixed-rate step


@dataclass
class LayoutFigures:
    layout: str
    kinds: dict[str, KindFigures] = field(default_factory=dict)
    accuracy: float | None = None
    labels: list[str] = field(default_factory=list)  # served in requests of 32 texts
    # Of the first texts, how many got the same label sent one per request (batch 1) as in
    # requests of 32 (batched): whether an answer depends on what it is batched with.
    batch1_same: int = 0
    batch1_texts: int = 0
    capacity_rps: float | None = None
    capacity_bounded: bool = True
    capacity_steps: list[tuple[float, float, int]] = field(default_factory=list)  # rate, p99, failed


def layout_env(layout: str, task: str, provider: str, min_length: int) -> dict[str, str]:
    """The server settings (FFS_* variables) of a layout."""
    env = {"FFS_GPU_POOL__PROVIDERS": json.dumps([PROVIDERS[provider]]),
           "FFS_GPU_FALLBACK": "fail",  # a check that silently ran on the CPU would mislead
           "FFS_LIMITS__MAX_INPUTS_PER_REQUEST": "256",
           "FFS_LIMITS__REQUEST_TIMEOUT_S": "120",
           "FFS_LOG_LEVEL": "warning"}
    if layout in GPU_LAYOUTS:
        env |= {"FFS_ROUTING": json.dumps({task: "gpu"}), "FFS_GPU_POOL__SPILL": "off",
                "FFS_GPU_POOL__VARIANT": "gpu-fp16" if layout == "gpu-fp16" else "fp32"}
    elif layout == "hybrid":
        env |= {"FFS_ROUTING": json.dumps({task: "hybrid"}),
                "FFS_GPU_POOL__MIN_LENGTH": str(min_length)}
    return env


def long_repository(artifact: Path, out: Path, max_length: int) -> Path:
    """A model repository holding `artifact` with max_length raised to `max_length` (its files
    linked, not copied), so that BoolQ-length inputs are not cut at the artifact's 128 tokens. The
    graph takes any length up to its position embeddings; the labels of such inputs mean nothing
    for an SST-2 model: they only carry the speed of long inputs."""
    repo = out / "repo"
    folder = repo / artifact.name
    if repo.exists():
        shutil.rmtree(repo)
    folder.mkdir(parents=True)
    for entry in artifact.iterdir():
        if entry.name != MANIFEST_NAME:
            (folder / entry.name).symlink_to(entry.resolve())
    manifest = json.loads((artifact / MANIFEST_NAME).read_text())
    manifest["max_length"] = max(max_length, manifest["max_length"])
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return repo


def bodies(task: str, texts: list[str], per_request: int) -> list[Request]:
    count = max(1, len(texts) // per_request)
    return [Request(PATH.format(task=task),
                    {"inputs": [texts[(i * per_request + j) % len(texts)]
                                for j in range(per_request)]})
            for i in range(count)]


async def closed_loop(url: str, requests: list[Request], clients: int, seconds: float) -> float:
    """Sentences/s answered by `clients` clients, each sending its next request when the last is
    answered, for `seconds` (after one warm-up request each)."""
    answered = 0
    async with aiohttp.ClientSession(base_url=url,
                                     timeout=aiohttp.ClientTimeout(total=300)) as session:

        async def client(offset: int, until: float | None) -> None:
            nonlocal answered
            index = offset
            while True:
                request = requests[index % len(requests)]
                async with session.post(request.path, json=request.body) as response:
                    response.raise_for_status()
                    await response.read()
                if until is None:
                    return
                answered += len(request.body["inputs"])  # type: ignore[arg-type]
                index += clients
                if time.perf_counter() >= until:
                    return

        await asyncio.gather(*(client(i, None) for i in range(clients)))
        started = time.perf_counter()
        await asyncio.gather(*(client(i, started + seconds) for i in range(clients)))
        return answered / (time.perf_counter() - started)


async def served_labels(url: str, task: str, texts: list[str], per_request: int = 32) \
        -> list[str]:
    async with aiohttp.ClientSession(base_url=url) as session:
        labels: list[str] = []
        for start in range(0, len(texts), per_request):
            body = {"inputs": texts[start : start + per_request]}
            async with session.post(PATH.format(task=task), json=body) as response:
                response.raise_for_status()
                labels += [r["label"] for r in (await response.json())["results"]]
        return labels


@dataclass(frozen=True)
class Plan:
    url: str
    task: str
    inputs: dict[str, list[str]]  # kind -> texts
    rates: dict[str, float]  # kind -> fixed offered rate (requests/s)
    batches: list[int]
    seconds: float
    dev: tuple[list[str], list[str]]  # SST-2 dev texts and gold labels
    mix: list[Request]  # one input each
    slo_ms: float
    start_rate: float
    max_rate: float


def measure_kind(plan: Plan, kind: str) -> KindFigures:
    texts = plan.inputs[kind]
    figures = KindFigures()
    figures.batch1_per_s = run_blocking(closed_loop(plan.url, bodies(plan.task, texts, 1), 1,
                                                    plan.seconds))
    for batch in plan.batches:
        rate = run_blocking(closed_loop(plan.url, bodies(plan.task, texts, batch), 2,
                                        plan.seconds))
        if rate > figures.best_per_s:
            figures.best_per_s, figures.best_batch = rate, batch
    step = run_blocking(run_step(plan.url, bodies(plan.task, texts, 1), plan.rates[kind],
                                 plan.seconds * 2, timeout_s=120))
    figures.p99_ms, figures.p99_rate = step.p99_ms, plan.rates[kind]
    figures.p99_failed = step.rejected_429 + step.errors + step.client_overload
    return figures


def measure_layout(plan: Plan, layout: str) -> LayoutFigures:
    figures = LayoutFigures(layout)
    if layout != "hybrid":
        for kind in plan.inputs:
            figures.kinds[kind] = measure_kind(plan, kind)
            print(f"  {layout} {kind}: {asdict(figures.kinds[kind])}", flush=True)
        texts, gold = plan.dev
        figures.labels = run_blocking(served_labels(plan.url, plan.task, texts))
        figures.accuracy = sum(a == b for a, b in zip(figures.labels, gold, strict=True)) / \
            len(gold)
        alone = run_blocking(served_labels(plan.url, plan.task, texts[:BATCH1_TEXTS], 1))
        figures.batch1_texts = len(alone)
        figures.batch1_same = sum(a == b for a, b in zip(alone, figures.labels, strict=False))

    def step(rate: float) -> Any:
        return run_blocking(run_step(plan.url, plan.mix, rate, plan.seconds, timeout_s=120))

    capacity = find_capacity(step, plan.slo_ms, plan.start_rate, plan.max_rate,
                             tolerance=0.15, max_refinements=3)
    figures.capacity_rps, figures.capacity_bounded = capacity.rps, capacity.bounded
    figures.capacity_steps = [(s.offered_rps, s.p99_ms, s.rejected_429 + s.errors +
                               s.client_overload) for s in capacity.steps]
    print(f"  {layout} mixed capacity at p99 <= {plan.slo_ms:g} ms: {capacity.rps} req/s "
          f"(rate, p99 ms, failed: {figures.capacity_steps})", flush=True)
    return figures


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def table(results: list[LayoutFigures], kinds: list[str], slo_ms: float) -> list[str]:
    head = ["layout"]
    for kind in kinds:
        head += [f"{kind} b1 /s", f"{kind} best /s (batch)", f"{kind} p99 ms @ rate"]
    head += ["SST-2 dev accuracy", f"mixed req/s at p99 <= {slo_ms:g} ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.layout]
        for kind in kinds:
            k = r.kinds.get(kind)
            if k is None:
                cells += ["-", "-", "-"]
                continue
            failed = f" ({k.p99_failed} failed)" if k.p99_failed else ""
            cells += [_rate(k.batch1_per_s), f"{_rate(k.best_per_s)} ({k.best_batch})",
                      f"{k.p99_ms:.1f} @ {k.p99_rate:g}/s{failed}"]
        cells.append("-" if r.accuracy is None else f"{100 * r.accuracy:.2f}%")
        if r.capacity_rps is None:
            rate, p99, refused = r.capacity_steps[0]
            capacity = f"< {rate:g} (p99 {p99:.0f} ms, {refused} failed)"
        else:
            capacity = f"{'>= ' if not r.capacity_bounded else ''}{_rate(r.capacity_rps)}"
        cells.append(capacity)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def agreement_lines(results: list[LayoutFigures]) -> list[str]:
    lines = [f"- {r.layout}: {r.batch1_same}/{r.batch1_texts} SST-2 dev texts get the same label "
             "sent alone as in requests of 32" for r in results if r.batch1_texts]
    by_name = {r.layout: r.labels for r in results if r.labels}
    reference = by_name.get("gpu-fp32")
    if reference is None:
        return lines
    for name, labels in by_name.items():
        if name != "gpu-fp32":
            same = sum(a == b for a, b in zip(labels, reference, strict=True))
            lines.append(f"- {name} serves the fp32 graph's label on {same}/{len(reference)} "
                         f"SST-2 dev texts ({100 * same / len(reference):.2f}%)")
    return lines


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy.checks.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, default=Path("models/sst2"))
    p.add_argument("--data-dir", type=Path, default=None,
                   help="task data (sst2/dev.tsv, boolq/val.jsonl); default $DATA_DIR or "
                        "../shared/data")
    p.add_argument("--provider", choices=sorted(PROVIDERS), default="cuda")
    p.add_argument("--layouts", default="gpu-fp16,gpu-fp32,cpu-int8,hybrid")
    p.add_argument("--max-length", type=int, default=512,
                   help="tokens of the BoolQ-length inputs (at most the model's positions)")
    p.add_argument("--min-length", type=int, default=128, help="hybrid: tokens to the GPU")
    p.add_argument("--batches", default="8,32,128")
    p.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    p.add_argument("--rate-sst2", type=float, default=None,
                   help="fixed rate, requests/s (default: 200 on cuda, 20 on cpu)")
    p.add_argument("--rate-boolq", type=float, default=None,
                   help="(default: 50 on cuda, 2 on cpu)")
    p.add_argument("--mix", type=int, default=4, help="SST-2 inputs per BoolQ one in the mix")
    p.add_argument("--slo-ms", type=float, default=100.0)
    p.add_argument("--start-rate", type=float, default=None,
                   help="capacity search (default: 50 on cuda, 2 on cpu)")
    p.add_argument("--max-rate", type=float, default=None,
                   help="(default: 5000 on cuda, 200 on cpu)")
    p.add_argument("--dev-texts", type=int, default=512)
    p.add_argument("--port", type=int, default=0, help="default: a free loopback port")
    p.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The dry run's pool is a CPU core or two: rates a GPU takes in its stride would only
    # measure a queue.
    scale = {"cuda": (200.0, 50.0, 50.0, 5000.0), "cpu": (20.0, 2.0, 2.0, 200.0)}[args.provider]
    for name, default in zip(("rate_sst2", "rate_boolq", "start_rate", "max_rate"), scale,
                             strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    started = time.perf_counter()
    data_dir = args.data_dir or default_data_dir()
    manifest = read_manifest(args.artifact)
    sst2 = load_split(get_task("sst2"), "dev", data_dir)
    boolq = load_split(get_task("boolq"), "dev", data_dir)
    short = [str(t) for t in sst2.texts]
    long = [" ".join(str(part) for part in t) for t in boolq.texts]
    mix = [text for i, text in enumerate(long[:200])
           for text in [text, *short[i * args.mix : (i + 1) * args.mix]]]
    port = args.port or serving.free_port()
    plan = Plan(url=f"http://127.0.0.1:{port}", task=manifest.task,
                inputs={"sst2": short, "boolq": long},
                rates={"sst2": args.rate_sst2, "boolq": args.rate_boolq},
                batches=[int(b) for b in args.batches.split(",")], seconds=args.seconds,
                dev=(short[: args.dev_texts], [manifest.labels[int(y)]  # type: ignore[arg-type]
                                               for y in sst2.labels[: args.dev_texts]]),
                mix=bodies(manifest.task, mix, 1), slo_ms=args.slo_ms,
                start_rate=args.start_rate, max_rate=args.max_rate)
    args.out.mkdir(parents=True, exist_ok=True)
    repo = long_repository(args.artifact, args.out, args.max_length)
    provider = PROVIDERS[args.provider]
    print(f"GPU pool provider: {provider}" + ("" if args.provider == "cuda" else
          " (a dry run: the 'gpu' layouts run on the CPU, their figures are CPU figures)"),
          flush=True)
    results: list[LayoutFigures] = []
    for layout in args.layouts.split(","):
        env = layout_env(layout, manifest.task, args.provider, args.min_length)
        log_path = args.out / f"server-{layout}.log"
        print(f"layout {layout}: starting the server", flush=True)
        process = serving.start(repo, port, log_path, env, timeout=300)
        try:
            results.append(measure_layout(plan, layout))
        finally:
            serving.stop(process)
    kinds = list(plan.inputs)
    lines = [f"# GPU check: {provider}" + ("" if args.provider == "cuda" else
                                          " (dry run on the CPU provider: not GPU figures)"),
             "",
             f"Command: python -m deploy.checks.gpu_check {' '.join(argv or sys.argv[1:])}",
             f"Artifact: {args.artifact} ({manifest.architecture.layers} layers, hidden "
             f"{manifest.architecture.hidden}); BoolQ inputs up to {args.max_length} tokens; "
             f"usable cores: {len(os.sched_getaffinity(0))}; {time.perf_counter() - started:.0f}"
             " s in all",
             "Layouts measured one after another (not interleaved), each on a fresh server.",
             "", *table(results, kinds, args.slo_ms), "", *agreement_lines(results)]
    text = "\n".join(lines) + "\n"
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
