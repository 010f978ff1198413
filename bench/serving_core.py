"""Figures of the serving core (docs/benchmarks-log.md, "Serving core"), side by side in one run:

    python -m bench serving-core cpu --artifact models/sst2 [--baseline ../older-checkout]
    python -m bench serving-core one-client --artifact models/sst2
    python -m bench serving-core tier
    python -m bench serving-core overload --artifact models/sst2
    python -m bench serving-core protocols --artifact models/sst2

cpu         CPU per one-sentence request of the API process(es) and of the workers, read from
            /proc under wrk load; beside it a bare ASGI app that parses, tokenizes and answers (the
            floor of any Python server here), and optionally an older checkout of this project.
one-client  one client, one sentence per request, a fixed gap between requests: HTTP p50 against
            the same graph called in this process (tokenize, run, softmax), interleaved.
tier        the API tier's ceiling with a near-zero-cost model (1 layer, hidden 32, built here):
            requests/s and API CPU per request with 1 and 2 API processes.
overload    closed-loop wrk clients at 4x the concurrency that saturates the server, with a queue
            limit that forces 429s: answered requests/s against the saturated rate, accepted
            requests' p99 (a paced probe client), and 5xx.
protocols   one server, one model, the same closed-loop Python clients (asyncio, one sentence a
            request) over /v1, v2 over HTTP (JSON) and v2 over gRPC, interleaved: requests/s and
            the API process's CPU per request of each.

Loopback only; every server is stopped before the command returns.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime import InferenceSession
from tokenizers import Tokenizer

from bench import serving
from compress.tasks import get_task, load_split
from contract.artifact import Manifest, read_manifest, verified_variant_path
from contract.encoding import TextInput, encode, load_tokenizer, pad_batch, softmax
from contract.session import open_session
from loadtest import wrk
from loadtest.proc import ServerCpu

PORT = 8791


# -- processes and their CPU -------------------------------------------------------------------

@dataclass(frozen=True)
class Load:
    requests_per_s: float
    answered_per_s: float
    api_ms_per_request: float
    worker_ms_per_request: float
    p50_ms: float
    p99_ms: float
    refused: int
    failed: int


def measure(root: int, url: str, script: Path, connections: int, seconds: float) -> Load:
    """wrk load on a running server, with the CPU its processes spent meanwhile."""
    cpu = ServerCpu(root)
    result = wrk.run(url, script, connections, seconds)
    api_s, worker_s = cpu.spent()
    requests = max(1, result.requests)
    statuses = result.statuses or {"429": 0, "5xx": 0}
    answered = result.requests - statuses["429"] - statuses["5xx"]
    return Load(result.requests_per_s, answered / max(result.seconds, 1e-9),
                1000 * api_s / requests, 1000 * worker_s / requests,
                result.latency_ms.get("50", float("nan")), result.latency_ms.get("99", float("nan")),
                statuses["429"], statuses["5xx"])


@contextmanager
def server(repo: Path, env: dict[str, str] | None = None, checkout: Path | None = None,
           command: list[str] | None = None, port: int = PORT) \
        -> Iterator[subprocess.Popen[bytes]]:
    """This project's server (or `command`) on a loopback port, stopped on exit."""
    log = Path(tempfile.mkstemp(prefix="ffs-core-", suffix=".log")[1])
    environment = {"FFS_MODEL_REPOSITORY": str(repo), "FFS_PORT": str(port),
                   "FFS_HOST": "127.0.0.1", "FFS_LOG_LEVEL": "warning", **(env or {})}
    process = serving.launch(command or [sys.executable, "-m", "app"],
                             f"http://127.0.0.1:{port}/readyz", log, environment, 120, checkout)
    try:
        yield process
    finally:
        serving.stop(process)


def one_task_repo(artifact: Path) -> Path:
    repo = Path(tempfile.mkdtemp(prefix="ffs-core-repo-"))
    (repo / artifact.name).symlink_to(artifact.resolve())
    return repo


def dev_texts(artifact: Path, data_dir: Path, count: int) -> list[TextInput]:
    task = read_manifest(artifact).task
    return load_split(get_task(task), "dev", data_dir).head(count).texts


# -- cpu ---------------------------------------------------------------------------------------

BARE_APP = '''
import json, os, sys
from tokenizers import Tokenizer
tokenizer = Tokenizer.from_file(sys.argv[1])
tokenizer.enable_truncation(128)
ANSWER = json.dumps({"results": [{"label": "positive", "score": 0.9}]}).encode()
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/readyz":
        tokens = 0
    else:
        tokens = len(tokenizer.encode(json.loads(body)["inputs"][0]).ids)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": ANSWER})
import uvicorn
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
'''


def cpu(args: argparse.Namespace) -> None:
    repo = one_task_repo(args.artifact)
    texts = dev_texts(args.artifact, args.data_dir, 200)
    task = read_manifest(args.artifact).task
    script = wrk.classify_script(task, texts, count_statuses=True)
    bare = Path(tempfile.mkstemp(suffix=".py")[1])
    bare.write_text(BARE_APP)
    contenders: dict[str, dict[str, object]] = {
        "bare ASGI app (parse, tokenize, fixed answer)": {"command": [
            sys.executable, str(bare), str(args.artifact / "tokenizer.json"), str(PORT)]},
        "this checkout, tokenizing in the API": {"env": {"FFS_TOKENIZE": "api"}},
        "this checkout, tokenizing in the workers": {"env": {"FFS_TOKENIZE": "workers"}},
    }
    if args.baseline is not None:
        contenders[f"older checkout {args.baseline}"] = {"checkout": args.baseline.resolve()}
    also: dict[str, dict[str, object]] = {}
    for extra in args.also:  # e.g. FFS_CPU_POOL__SPIN_MS=2,FFS_TOKENIZE=api
        env = dict(pair.split("=", 1) for pair in extra.split(","))
        also[f"this checkout, {extra}"] = {"env": env}
    contenders = also if args.only_also else {**contenders, **also}
    figures: dict[str, list[Load]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, how in contenders.items():
            with server(repo, how.get("env"), how.get("checkout"),  # type: ignore[arg-type]
                        how.get("command")) as process:  # type: ignore[arg-type]
                url = f"http://127.0.0.1:{PORT}"
                wrk.run(url, script, args.connections, 2)  # warm up
                figures[name].append(measure(process.pid, url, script, args.connections,
                                             args.seconds))
    print(f"API CPU per one-sentence request under wrk ({args.connections} connections, "
          f"{args.seconds:.0f} s x {args.rounds} rounds, {os.cpu_count()} cores), medians:")
    for name, loads in figures.items():
        print(f"  {name:55s} {_median(loads, 'requests_per_s'):7.0f} req/s   API "
              f"{_median(loads, 'api_ms_per_request'):.3f} ms   workers "
              f"{_median(loads, 'worker_ms_per_request'):.3f} ms")


def _median(loads: list[Load], field: str) -> float:
    return float(statistics.median(getattr(load, field) for load in loads))


# -- one client --------------------------------------------------------------------------------

def one_client(args: argparse.Namespace) -> None:
    repo = one_task_repo(args.artifact)
    manifest = read_manifest(args.artifact)
    texts = dev_texts(args.artifact, args.data_dir, args.requests)
    session = open_session(str(verified_variant_path(args.artifact, manifest, "cpu-int8")), 1)
    tokenizer = load_tokenizer(args.artifact / manifest.tokenizer, manifest.max_length)
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})  # the in-process reference runs on one core, as a worker does
    try:
        _one_client_rounds(args, repo, texts, session, tokenizer, manifest)
    finally:
        os.sched_setaffinity(0, cores)  # a caller in the same process keeps its cores


def _one_client_rounds(args: argparse.Namespace, repo: Path, texts: list[TextInput],
                       session: InferenceSession, tokenizer: Tokenizer,
                       manifest: Manifest) -> None:
    def in_process(text: TextInput) -> None:
        feeds = pad_batch(encode(tokenizer, [text]), manifest.model_inputs, manifest.pad_token_id)
        softmax(session.run(None, feeds)[0])

    bare = Path(tempfile.mkstemp(suffix=".py")[1])
    bare.write_text(BARE_APP)
    floor = [sys.executable, str(bare), str(args.artifact / manifest.tokenizer), str(PORT)]
    contenders: dict[str, tuple[dict[str, str], Path | None, list[str] | None]] = \
        {"this checkout": ({}, None, None)} if not args.only_also else {}
    if args.baseline is not None:
        contenders[f"older checkout {args.baseline}"] = ({}, args.baseline.resolve(), None)
    contenders.update({extra: (dict(pair.split("=", 1) for pair in extra.split(",")), None, None)
                       for extra in args.also})  # e.g. FFS_CPU_POOL__SPIN_MS=2
    # The floor: an ASGI app that parses, tokenizes and answers a fixed label (no model, no hop).
    contenders["bare ASGI app (floor: parse, tokenize, fixed answer)"] = ({}, None, floor)
    rows: dict[tuple[str, float], list[OneClient]] = {}
    for _ in range(args.rounds):
        for name, (env, checkout, command) in contenders.items():
            with server(repo, env, checkout, command) as process:
                for gap_ms in args.gaps:
                    rows.setdefault((name, gap_ms), []).append(
                        _one_client_round(process.pid, manifest.task, texts, in_process, gap_ms))
    print(f"one client, {len(texts)} sentences a round, in-process on core 0 against HTTP, "
          f"interleaved; medians of {args.rounds} rounds (rounds in brackets):")
    for (name, gap_ms), found in rows.items():
        overhead = [r.http_p50 - r.local_p50 for r in found]
        print(f"  {name:40s} gap {gap_ms:4.0f} ms: in-process p50 "
              f"{statistics.median(r.local_p50 for r in found):.2f} ms, HTTP p50 "
              f"{statistics.median(r.http_p50 for r in found):.2f} ms (p99 "
              f"{statistics.median(r.http_p99 for r in found):.2f}), overhead "
              f"{statistics.median(overhead):+.2f} ms {[round(o, 2) for o in overhead]}, API CPU "
              f"{statistics.median(r.api_ms for r in found):.2f} ms, workers "
              f"{statistics.median(r.worker_ms for r in found):.2f} ms per request")


@dataclass(frozen=True)
class OneClient:
    local_p50: float
    http_p50: float
    http_p99: float
    api_ms: float  # API process CPU per request
    worker_ms: float


def _one_client_round(pid: int, task: str, texts: list[TextInput],
                      in_process: Callable[[TextInput], None], gap_ms: float) -> OneClient:
    """Each text in-process then over HTTP, `gap_ms` before each call."""
    connection = http.client.HTTPConnection("127.0.0.1", PORT)

    def over_http(text: TextInput) -> None:
        body = json.dumps({"inputs": [text if isinstance(text, str) else list(text)]})
        connection.request("POST", f"/v1/classify/{task}", body,
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")

    over_http(texts[0])  # connect and warm up
    local: list[float] = []
    remote: list[float] = []
    cpu = ServerCpu(pid)
    for text in texts:
        for call, out in ((in_process, local), (over_http, remote)):
            time.sleep(gap_ms / 1000)
            started = time.perf_counter()
            call(text)
            out.append(1000 * (time.perf_counter() - started))
    api_s, worker_s = cpu.spent()
    connection.close()
    return OneClient(float(np.percentile(local, 50)), float(np.percentile(remote, 50)),
                     float(np.percentile(remote, 99)), 1000 * api_s / len(texts),
                     1000 * worker_s / len(texts))


# -- tier --------------------------------------------------------------------------------------

def near_zero_artifact(work: Path) -> Path:
    """A 1-layer, hidden-32 random BERT packaged as task `sst2`: the model costs ~nothing, so the
    API processes are what is measured."""
    from compress.build import BuildPlan, package_artifact
    from compress.packaging import spec_for_checkpoint
    from compress.tiny_models import build_tiny_classifier

    corpus = [f"the film was {w} and the plot {v}" for w in ("good", "bad", "dull", "fine")
              for v in ("moved", "dragged", "worked", "failed")] * 20
    checkpoint = build_tiny_classifier("bert", work / "checkpoint", corpus, layers=1, hidden=32)
    spec = spec_for_checkpoint(checkpoint, None, "sst2", "single", 128)
    out = work / "models" / "sst2"
    package_artifact(spec, checkpoint, None, BuildPlan(spec=spec, base_model=str(checkpoint),
                                                       out_dir=out, work_dir=work / "runs"))
    return out


def tier(args: argparse.Namespace) -> None:
    artifact = near_zero_artifact(Path(tempfile.mkdtemp(prefix="ffs-zero-")))
    repo = artifact.parent
    texts = load_split(get_task("sst2"), "dev", args.data_dir).head(200).texts
    script = wrk.classify_script("sst2", texts, count_statuses=True)
    figures: dict[int, list[Load]] = {n: [] for n in args.processes}
    for _ in range(args.rounds):
        for count in args.processes:
            env = {"FFS_API_PROCESSES": str(count)}
            with server(repo, env) as process:
                url = f"http://127.0.0.1:{PORT}"
                wrk.run(url, script, args.connections, 2)
                figures[count].append(measure(process.pid, url, script, args.connections,
                                              args.seconds))
    print(f"near-zero model (1 layer, hidden 32), wrk {args.connections} connections, "
          f"{os.cpu_count()} cores shared by wrk, API processes and 2 workers; medians of "
          f"{args.rounds} rounds:")
    base = _median(figures[args.processes[0]], "requests_per_s")
    for count, loads in figures.items():
        rate = _median(loads, "requests_per_s")
        api_ms = _median(loads, "api_ms_per_request")
        print(f"  {count} API process(es): {rate:7.0f} req/s ({rate / base:.2f}x)   API CPU "
              f"{api_ms:.3f} ms/request = {1000 / api_ms:6.0f} req/s per API core   workers "
              f"{_median(loads, 'worker_ms_per_request'):.3f} ms/request   p99 "
              f"{_median(loads, 'p99_ms'):.1f} ms")


# -- overload ----------------------------------------------------------------------------------

def _probe(url_port: int, task: str, text: TextInput, seconds: float, rate: float) \
        -> tuple[list[float], int]:
    """Paced single requests (a well-behaved client): latencies of the accepted ones, refusals."""
    connection = http.client.HTTPConnection("127.0.0.1", url_port)
    body = json.dumps({"inputs": [text if isinstance(text, str) else list(text)]})
    accepted: list[float] = []
    refused = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        connection.request("POST", f"/v1/classify/{task}", body,
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        if response.status == 200:
            accepted.append(1000 * (time.perf_counter() - started))
        elif response.status == 429:
            refused += 1
        else:
            raise RuntimeError(f"probe got HTTP {response.status}")
        time.sleep(max(0.0, 1 / rate - (time.perf_counter() - started)))
    connection.close()
    return accepted, refused


def _probe_into(out: list[tuple[list[float], int]], port: int, task: str, text: TextInput,
                seconds: float) -> None:
    out.append(_probe(port, task, text, seconds, 20.0))


def overload(args: argparse.Namespace) -> None:
    repo = one_task_repo(args.artifact)
    task = read_manifest(args.artifact).task
    texts = dev_texts(args.artifact, args.data_dir, 200)
    script = wrk.classify_script(task, texts, count_statuses=True)
    url = f"http://127.0.0.1:{PORT}"
    with server(repo) as process:
        wrk.run(url, script, 8, 2)
        ladder = {c: measure(process.pid, url, script, c, args.seconds) for c in args.ladder}
    best = max(load.answered_per_s for load in ladder.values())
    saturating = min(c for c, load in ladder.items() if load.answered_per_s >= 0.9 * best)
    print("closed-loop ladder (default queue): " + ", ".join(
        f"{c} clients {load.answered_per_s:.0f}/s" for c, load in ladder.items()))
    queue = max(2, saturating)
    print(f"saturated from {saturating} clients; now, alternately: that load on the default "
          f"server, and {4 * saturating} clients on one with max_queue_rows {queue}")
    env = {"FFS_BATCHING__MAX_QUEUE_ROWS": str(queue)}
    if args.refusal_delay_ms is not None:
        env["FFS_BATCHING__REFUSAL_DELAY_MS"] = str(args.refusal_delay_ms)
    other = f"http://127.0.0.1:{PORT + 1}"
    saturated: list[Load] = []
    overloaded: list[Load] = []
    accepted: list[float] = []
    with server(repo) as plain, server(repo, env, port=PORT + 1) as limited:
        wrk.run(other, script, 8, 2)
        for _ in range(args.rounds):
            saturated.append(measure(plain.pid, url, script, saturating, args.seconds))
            probe: list[tuple[list[float], int]] = []
            thread = threading.Thread(target=_probe_into, args=(
                probe, PORT + 1, task, texts[0], args.seconds))
            thread.start()
            overloaded.append(measure(limited.pid, other, script, 4 * saturating, args.seconds))
            thread.join()
            accepted += probe[0][0]
            print(f"  round: saturated {saturated[-1].answered_per_s:.0f}/s, 4x overload "
                  f"answered {overloaded[-1].answered_per_s:.0f}/s, refused "
                  f"{overloaded[-1].refused}, 5xx {overloaded[-1].failed}", flush=True)
    ratios = [o.answered_per_s / s.answered_per_s for o, s in zip(overloaded, saturated,
                                                                   strict=True)]
    rounds = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"4x overload ({4 * saturating} clients, max_queue_rows {queue}): answered "
          f"{_median(overloaded, 'answered_per_s'):.0f}/s against "
          f"{_median(saturated, 'answered_per_s'):.0f}/s saturated = "
          f"{statistics.median(ratios):.2f} (rounds {rounds}); 5xx "
          f"{sum(o.failed for o in overloaded)}; refused {sum(o.refused for o in overloaded)}; "
          f"API CPU {_median(overloaded, 'api_ms_per_request'):.3f} ms per request")
    print(f"  probe client (20/s) on the overloaded server: {len(accepted)} accepted, p50 "
          f"{np.percentile(accepted, 50):.1f} ms, p99 {np.percentile(accepted, 99):.1f} ms")


# -- protocols ---------------------------------------------------------------------------------

PROTOCOLS = ("HTTP /v1", "HTTP v2 (JSON)", "gRPC v2")


def protocols(args: argparse.Namespace) -> None:
    repo = one_task_repo(args.artifact)
    texts = [t for t in dev_texts(args.artifact, args.data_dir, 200) if isinstance(t, str)]
    task = read_manifest(args.artifact).task
    grpc_port = serving.free_port()
    rows: dict[str, list[Load]] = {name: [] for name in PROTOCOLS}
    with server(repo, {"FFS_GRPC_PORT": str(grpc_port)}) as process:
        for _ in range(args.rounds):
            for name in PROTOCOLS:
                rows[name].append(_protocol_round(process.pid, name, task, texts, grpc_port,
                                                  args.connections, args.seconds))
    print(f"{args.connections} closed-loop asyncio clients in this process, one sentence a "
          f"request, {args.seconds:.0f} s x {args.rounds} rounds, {os.cpu_count()} cores shared "
          "by clients and server; medians:")
    for name, loads in rows.items():
        print(f"  {name:16s} {_median(loads, 'requests_per_s'):7.0f} req/s   API "
              f"{_median(loads, 'api_ms_per_request'):.3f} ms   workers "
              f"{_median(loads, 'worker_ms_per_request'):.3f} ms per request   p50 "
              f"{_median(loads, 'p50_ms'):.1f} ms   failed {sum(x.failed for x in loads)}")


def _protocol_round(pid: int, protocol: str, task: str, texts: list[str], grpc_port: int,
                    connections: int, seconds: float) -> Load:
    import asyncio

    cpu = ServerCpu(pid)
    latencies, failed = asyncio.run(_protocol_load(protocol, task, texts, grpc_port,
                                                   connections, seconds))
    api_s, worker_s = cpu.spent()
    count = max(1, len(latencies))
    return Load(len(latencies) / seconds, len(latencies) / seconds, 1000 * api_s / count,
                1000 * worker_s / count, float(np.percentile(latencies or [0], 50)),
                float(np.percentile(latencies or [0], 99)), 0, failed)


async def _protocol_load(protocol: str, task: str, texts: list[str], grpc_port: int,
                         connections: int, seconds: float) -> tuple[list[float], int]:
    import asyncio

    import aiohttp
    import tritonclient.grpc.aio as grpcclient

    until = time.perf_counter() + seconds
    latencies: list[float] = []
    failures = [0]
    url = f"http://127.0.0.1:{PORT}"

    async def client(index: int, call: Callable[[str], object]) -> None:
        n = index
        while time.perf_counter() < until:
            text = texts[n % len(texts)]
            n += connections
            started = time.perf_counter()
            try:
                await call(text)  # type: ignore[misc]
                latencies.append(1000 * (time.perf_counter() - started))
            except Exception:
                failures[0] += 1

    if protocol == "gRPC v2":
        clients = [grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
                   for _ in range(connections)]

        def grpc_call(triton: grpcclient.InferenceServerClient) -> Callable[[str], object]:
            async def call(text: str) -> None:
                tensor = grpcclient.InferInput("text", [1], "BYTES")
                tensor.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
                await triton.infer(task, [tensor])
            return call

        await asyncio.gather(*(client(i, grpc_call(c)) for i, c in enumerate(clients)))
        for triton in clients:
            await triton.close()
        return latencies, failures[0]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as http:
        async def post(path: str, body: object) -> None:
            async with http.post(url + path, json=body) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")

        def http_call(text: str) -> object:
            if protocol == "HTTP /v1":
                return post(f"/v1/classify/{task}", {"inputs": [text]})
            return post(f"/v2/models/{task}/infer", {"inputs": [
                {"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]})

        await asyncio.gather(*(client(i, http_call) for i in range(connections)))
    return latencies, failures[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench serving-core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("DATA_DIR", "../shared/data")))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    commands = parser.add_subparsers(dest="command", required=True)
    p_cpu = commands.add_parser("cpu")
    p_cpu.add_argument("--artifact", type=Path, default=Path("models/sst2"))
    p_cpu.add_argument("--baseline", type=Path, help="an older checkout of this project")
    p_cpu.add_argument("--connections", type=int, default=32)
    p_cpu.add_argument("--also", nargs="*", default=[], metavar="ENV=VALUE,...",
                       help="more runs of this checkout with these settings")
    p_cpu.add_argument("--only-also", action="store_true", help="run only the --also settings")
    p_one = commands.add_parser("one-client")
    p_one.add_argument("--artifact", type=Path, default=Path("models/sst2"))
    p_one.add_argument("--requests", type=int, default=300)
    p_one.add_argument("--gaps", type=float, nargs="+", default=[0.0, 10.0])
    p_one.add_argument("--also", nargs="*", default=[], metavar="ENV=VALUE,...",
                       help="more servers of this checkout with these settings, side by side")
    p_one.add_argument("--only-also", action="store_true", help="run only the --also settings")
    p_one.add_argument("--baseline", type=Path, help="an older checkout of this project")
    p_tier = commands.add_parser("tier")
    p_tier.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p_tier.add_argument("--connections", type=int, default=64)
    p_over = commands.add_parser("overload")
    p_over.add_argument("--artifact", type=Path, default=Path("models/sst2"))
    p_over.add_argument("--ladder", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p_over.add_argument("--refusal-delay-ms", type=float, default=None,
                        help="batching.refusal_delay_ms of the overloaded server (default: its own)")
    p_protocols = commands.add_parser("protocols")
    p_protocols.add_argument("--artifact", type=Path, default=Path("models/sst2"))
    p_protocols.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)
    {"cpu": cpu, "one-client": one_client, "tier": tier, "overload": overload,
     "protocols": protocols}[args.command](args)
    return 0
