"""Peers side by side: the same client, inputs and SLO against each server, one after the other.

    python -m bench peers --task sst2 --baseline-model runs/sst2-minilm-l3/teacher \\
        --artifact runs/sst2-minilm-l3/artifact [--infinity-bin /path/to/infinity_emb]

1. baseline: transformers pipeline in PyTorch behind FastAPI (bench.baseline_server), the model
   before compression;
2. this project serving the compressed artifact, and with --same-size-artifact the uncompressed
   model too;
3. Infinity (infinity-emb, classify endpoint, optimum/ONNX engine) on the same uncompressed model,
   when its binary is given.
Each runs alone on the machine (started, measured, stopped); all on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import serving
from loadtest.capacity import Capacity, find_capacity
from loadtest.cost import project
from loadtest.openloop import Request, StepResult, run_blocking, run_step
from loadtest.results import steps_table

Texts = list[object]


@dataclass(frozen=True)
class Peer:
    name: str
    command: list[str]
    ready_path: str
    requests: Callable[[Texts], list[Request]]
    env: dict[str, str]
    cwd: Path | None = None


@dataclass
class Outcome:
    name: str
    capacity: Capacity | None
    note: str = ""


def _ours(task: str) -> Callable[[Texts], list[Request]]:
    return lambda texts: [Request(f"/v1/classify/{task}", {"inputs": [t]}) for t in texts]


def _infinity(model: str) -> Callable[[Texts], list[Request]]:
    return lambda texts: [Request("/classify", {"model": model, "input": [t]}) for t in texts]


def peers(args: argparse.Namespace, port: int) -> list[Peer]:
    listed = [
        Peer("baseline: transformers pipeline, PyTorch fp32, FastAPI",
             [sys.executable, "-m", "bench.baseline_server", "--model", str(args.baseline_model),
              "--task", args.task, "--port", str(port)], "/readyz", _ours(args.task), {}),
        _this_project("this project: compressed artifact, ORT INT8, pinned workers",
                      args.artifact, args.task, port),
    ]
    if args.same_size_artifact:
        listed.append(_this_project(
            "this project, same model size as the peers: uncompressed model, ORT INT8",
            args.same_size_artifact, args.task, port))
    if args.infinity_bin:
        listed.append(Peer(
            "Infinity (infinity-emb), optimum/ONNX engine, same uncompressed model",
            [str(args.infinity_bin), "v2", "--model-id", ".", "--engine", "optimum",
             "--device", "cpu", "--port", str(port), "--host", "127.0.0.1",
             "--no-model-warmup"],
            "/health", _infinity("."), {"HF_HUB_OFFLINE": "1"},
            cwd=_onnx_folder(Path(args.baseline_model))))
    return listed


def _onnx_folder(model: Path) -> Path:
    """The uncompressed model with a plain fp32 ONNX export beside it, as Infinity's optimum
    classifier requires (it does not export classifiers itself).

    Infinity is started inside this folder with `--model-id .`: given an absolute folder, 0.0.78
    passes optimum 2.1 an absolute ONNX file name, which optimum refuses. `--no-model-warmup`: its
    warm-up sends 514 tokens to a 512-position model and fails.
    """
    from compress.export import export_onnx

    folder = Path(tempfile.mkdtemp(prefix="ffs-infinity-"))
    for item in model.iterdir():
        if item.is_file() and item.name != "stage.json":
            shutil.copy(item, folder / item.name)
    export_onnx(model, folder / "model.onnx", ["a short sentence", "and a longer one, padded"])
    return folder


def _this_project(name: str, artifact: Path, task: str, port: int) -> Peer:
    return Peer(name, [sys.executable, "-m", "app"], "/readyz", _ours(task),
                {"FFS_MODEL_REPOSITORY": str(_repository(artifact, task)), "FFS_PORT": str(port),
                 "FFS_HOST": "127.0.0.1", "FFS_LOG_LEVEL": "warning"})


def _repository(artifact: Path, task: str) -> Path:
    repo = Path(tempfile.mkdtemp(prefix="ffs-peers-"))
    (repo / task).symlink_to(Path(artifact).resolve())
    return repo


def measure(peer: Peer, port: int, texts: Texts, args: argparse.Namespace, logs: Path) -> Outcome:
    url = f"http://127.0.0.1:{port}"
    log = logs / f"{peer.name.split(':')[0].split(' ')[0].lower()}.log"
    command, env = pinned(peer.command, peer.env, args.server_cpus)
    try:
        process = serving.launch(command, url + peer.ready_path, log, env,
                                 timeout=args.start_timeout, cwd=peer.cwd)
    except RuntimeError as exc:
        return Outcome(peer.name, None, f"did not start: {str(exc).splitlines()[0]} (log: {log})")
    try:
        requests = peer.requests(texts)

        def step(rate: float) -> StepResult:
            result = run_blocking(run_step(url, requests, rate, args.duration, connections=64))
            print(f"  {peer.name.split(':')[0]}: offered {rate:.0f}/s -> achieved "
                  f"{result.achieved_rps:.0f}/s, p99 {result.p99_ms:.1f} ms, errors "
                  f"{result.errors + result.rejected_429}", flush=True)
            return result

        run_blocking(run_step(url, requests, 5.0, 2.0))  # warm-up
        return Outcome(peer.name, find_capacity(step, args.slo_ms, args.start_rate,
                                                args.max_rate))
    finally:
        serving.stop(process)


def pinned(command: list[str], env: dict[str, str], cpus: str | None) -> \
        tuple[list[str], dict[str, str]]:
    """The server on its own cores (`taskset`), one PyTorch/OpenMP thread per core it has.

    The client (this process) keeps the other cores, so neither slows the other down.
    """
    if not cpus:
        return command, dict(env)
    return (["taskset", "-c", cpus, *command],
            {"OMP_NUM_THREADS": str(len(_cpu_list(cpus))), **env})


def _cpu_list(text: str) -> set[int]:
    """'0', '0,2' or '0-3' as a set of core numbers."""
    cores: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    return cores


def table(outcomes: list[Outcome], cores: int, vm: str) -> str:
    baseline = outcomes[0].capacity.rps if outcomes[0].capacity else None
    lines = [f"| server | capacity at SLO (req/s, {cores} cores) | vs baseline | "
             f"projected {vm} req/s | USD per 100M | note |", "|---|---:|---:|---:|---:|---|"]
    for outcome in outcomes:
        rps = outcome.capacity.rps if outcome.capacity else None
        if rps is None:
            lines.append(f"| {outcome.name} | - | - | - | - | {outcome.note or 'missed the SLO'} |")
            continue
        cost = project(rps, cores, vm)
        ratio = f"{rps / baseline:.1f}x" if baseline else "-"
        lines.append(f"| {outcome.name} | {rps:.0f} | {ratio} | {cost.projected_rps:.0f} | "
                     f"${cost.usd_per_100m:.2f} | {outcome.note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--baseline-model", type=Path, required=True)
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--same-size-artifact", type=Path, default=None,
                        help="an artifact of the uncompressed model (e.g. models/sst2 from "
                             "`make demo`): this project at the peers' model size")
    parser.add_argument("--infinity-bin", type=Path, default=None)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--slo-ms", type=float, default=50.0)
    parser.add_argument("--start-rate", type=float, default=10.0)
    parser.add_argument("--max-rate", type=float, default=3000.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--vm", default="Standard_F16s_v2")
    parser.add_argument("--server-cpus", default=None,
                        help="pin each server to these cores (e.g. 0) and the client to the rest")
    parser.add_argument("--out", type=Path, default=Path("runs/peers"))
    args = parser.parse_args(argv)

    from compress.tasks import default_data_dir, get_task, load_split

    examples = load_split(get_task(args.task), "dev", args.data_dir or default_data_dir())
    texts: Texts = [t if isinstance(t, str) else list(t) for t in examples.texts]
    args.out.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    if args.server_cpus:
        server = _cpu_list(args.server_cpus)
        client = os.sched_getaffinity(0) - server
        if not client:
            parser.error("--server-cpus leaves no core for the client")
        os.sched_setaffinity(0, client)
        cores = len(server)
    outcomes = []
    for peer in peers(args, args.port):
        print(f"{peer.name} ...", flush=True)
        outcomes.append(measure(peer, args.port, texts, args, args.out))
    summary = table(outcomes, cores, args.vm)
    details = "\n\n".join(f"### {o.name}\n\n{steps_table(o.capacity.steps)}"
                          for o in outcomes if o.capacity is not None)
    command = "python -m bench peers " + " ".join(argv if argv is not None else sys.argv[1:])
    (args.out / "peers.md").write_text(f"`{command}`\n\n{summary}\n\n{details}\n", encoding="utf-8")
    (args.out / "peers.json").write_text(json.dumps(
        [{"name": o.name, "note": o.note, "slo_ms": args.slo_ms,
          "capacity_rps": o.capacity.rps if o.capacity else None,
          "steps": [s.as_dict() for s in o.capacity.steps] if o.capacity else []}
         for o in outcomes], indent=2) + "\n", encoding="utf-8")
    print(summary)
    return 0
