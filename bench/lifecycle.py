"""Model lifecycle under load, against the real server: version swaps, a failed load, and SIGTERM
under keep-alive clients.

    python -m bench lifecycle --artifact models/sst2 [--clients 16] [--sigterm-runs 5]

Builds a versioned repository from one artifact (`<name>/1`, `/2`, `/3`: copies, told apart by the
version each answer names), starts the server on it and drives closed-loop load from `clients`
keep-alive clients while it loads version 2, loads version 3, rolls back to version 2 and is asked
to load a version whose model file has a flipped byte. Then it starts a fresh server `sigterm_runs`
times and sends SIGTERM under the same load, and as many times under gRPC clients (the `grpc`
extra). Last, the resident memory of a swap
(`--memory-only`: that alone). `--soak-swaps N`: only a soak of N swaps under load, with the
processes' resident memory along the way. Per phase it prints requests, non-2xx, lost (sent and
never answered: the connection closed under the request) and refused (never sent: the listener
was closed), and for the swaps how long after the load call returned the last answer of an old
version came. Traffic goes to 127.0.0.1 only, and every phase stops by itself.

The tests run the same scenarios, shorter (tests/app/served/test_model_lifecycle.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import yaml

from bench import serving
from contract.artifact import read_manifest

TEXTS = ["a gripping, funny and moving film", "dull and far too long", "it was fine",
         "the acting is wonderful but the plot is weak"]
# The connection closed (or was reset) after the request was sent: the request is lost.
LOST = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError)


@dataclass(frozen=True)
class Answer:
    sent: float  # monotonic seconds
    received: float
    status: int | None  # None: no answer
    version: str | None
    error: str | None = None  # the exception's class when there was no answer
    lost: bool = False


@dataclass
class Tally:
    answers: list[Answer] = field(default_factory=list)

    def between(self, start: float, end: float) -> list[Answer]:
        return [a for a in self.answers if start <= a.received < end]

    @staticmethod
    def summary(answers: list[Answer]) -> dict[str, int]:
        return {"requests": len(answers),
                "non_2xx": sum(a.status is not None and not 200 <= a.status < 300
                               for a in answers),
                "lost": sum(a.lost for a in answers),
                "refused": sum(a.status is None and not a.lost for a in answers)}


async def _client(session: aiohttp.ClientSession, url: str, index: int, stop: asyncio.Event,
                  tally: Tally) -> None:
    body = {"inputs": [TEXTS[index % len(TEXTS)]]}
    while not stop.is_set():
        sent = time.monotonic()
        try:
            async with session.post(url, json=body) as response:
                payload = await response.read()
                version = response.headers.get("X-Model-Version")
                if version is None and response.status == 200:
                    version = str(json.loads(payload).get("version"))
                tally.answers.append(Answer(sent, time.monotonic(), response.status, version))
        except aiohttp.ClientConnectorError as exc:  # connect refused: never sent
            tally.answers.append(Answer(sent, time.monotonic(), None, None, type(exc).__name__))
            await asyncio.sleep(0.01)
        except LOST as exc:
            tally.answers.append(Answer(sent, time.monotonic(), None, None,
                                        f"{type(exc).__name__}: {exc}", lost=True))
            await asyncio.sleep(0.01)
        except aiohttp.ClientError as exc:
            tally.answers.append(Answer(sent, time.monotonic(), None, None,
                                        f"{type(exc).__name__}: {exc}", lost=True))
            await asyncio.sleep(0.01)


async def under_load(base_url: str, path: str, clients: int,
                     action: Callable[[], Awaitable[None]], settle_s: float = 0.5) -> Tally:
    """Run `action` while `clients` keep-alive clients (one connection each) send requests back
    to back; stop them `settle_s` after the action returns."""
    tally = Tally()
    stop = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=30)
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=timeout)
                for _ in range(clients)]
    try:
        tasks = [asyncio.ensure_future(_client(s, base_url + path, i, stop, tally))
                 for i, s in enumerate(sessions)]
        await asyncio.sleep(settle_s)
        await action()
        await asyncio.sleep(settle_s)
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        for session in sessions:
            await session.close()
    return tally


# -- the repository ------------------------------------------------------------------------------

def versioned_repository(artifact: Path, root: Path, name: str, versions: int) -> Path:
    """`root/<name>/<1..versions>/`: copies of one artifact (hard links where possible)."""
    for version in range(1, versions + 1):
        shutil.copytree(artifact, root / name / str(version), copy_function=shutil.copy2,
                        dirs_exist_ok=True)
    return root


def hide_version(root: Path, name: str, version: int) -> Path:
    """Move a version out of the repository (to add it back later); returns where it went."""
    aside = root.parent / f"{name}-{version}-aside"
    (root / name / str(version)).rename(aside)
    return aside


def write_policy(root: Path, name: str, policy: dict[str, object]) -> None:
    (root / name / "config.yaml").write_text(yaml.safe_dump({"version_policy": policy}))


def flip_a_byte(folder: Path) -> None:
    """Corrupt the served model file (its sha256 no longer matches the manifest)."""
    model = folder / read_manifest(folder).variants["cpu-int8"].file
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))


# -- scenarios -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Phase:
    name: str
    counts: dict[str, int]
    versions: list[str]  # versions that answered during the phase
    old_after_s: float | None = None  # last old-version answer, seconds after the call returned
    call: str = ""  # the load call's answer


async def _load(base_url: str, name: str) -> tuple[int, str, float]:
    async with aiohttp.ClientSession() as session, \
            session.post(f"{base_url}/v2/repository/models/{name}/load") as response:
        return response.status, await response.text(), time.monotonic()


async def _load_under_load(base_url: str, name: str, clients: int,
                           prepare: Callable[[], object]) -> tuple[Tally, int, str, float]:
    """`prepare` changes the repository, then a load call, under closed-loop load: the answers,
    and the call's status, body and when it returned."""
    returned: list[tuple[int, str, float]] = []

    async def action() -> None:
        prepare()
        returned.append(await _load(base_url, name))

    tally = await under_load(base_url, f"/v1/classify/{name}", clients, action)
    return (tally, *returned[0])


def _versions(tally: Tally) -> list[str]:
    return sorted({a.version for a in tally.answers if a.version})


async def swap(base_url: str, name: str, clients: int, old: str, new: str,
               prepare: Callable[[], object]) -> Phase:
    """A load call that switches `old` to `new`, under load."""
    tally, status, text, at = await _load_under_load(base_url, name, clients, prepare)
    olds = [a.received - at for a in tally.answers if a.version == old and a.received > at]
    return Phase(f"{old} -> {new}", Tally.summary(tally.answers), _versions(tally),
                 max(olds) if olds else None, f"{status} {text[:200]}")


async def failed_load(base_url: str, name: str, clients: int, prepare: Callable[[], object]) \
        -> Phase:
    """A load of a broken version under load: the call fails, the old version keeps answering."""
    tally, status, text, _ = await _load_under_load(base_url, name, clients, prepare)
    return Phase("failed load", Tally.summary(tally.answers), _versions(tally), None,
                 f"{status} {text[:300]}")


async def sigterm(server: subprocess.Popen[bytes], base_url: str, path: str, clients: int,
                  after_s: float = 1.0) -> Phase:
    """SIGTERM the server `after_s` into closed-loop keep-alive load; wait for it to exit."""

    async def action() -> None:
        await asyncio.sleep(after_s)
        server.send_signal(signal.SIGTERM)
        while server.poll() is None:
            await asyncio.sleep(0.05)

    tally = await under_load(base_url, path, clients, action, settle_s=0.3)
    return Phase(f"SIGTERM (exit {server.returncode})", Tally.summary(tally.answers),
                 _versions(tally))


async def _grpc_client(target: str, model: str, index: int, stop: asyncio.Event,
                       tally: Tally) -> None:
    """Closed-loop v2 gRPC calls on one channel until `stop`: refused (never sent: no
    connection), lost (the call failed after it was sent), or answered."""
    import grpc
    import numpy as np
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(target)
    tensor = grpcclient.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([TEXTS[index % len(TEXTS)].encode()], dtype=np.object_))
    try:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                result = await client.infer(model, [tensor], client_timeout=30)
                tally.answers.append(Answer(sent, time.monotonic(), 200,
                                            result.get_response().model_version))
            except InferenceServerException as exc:
                message = exc.message() or ""
                code = exc.status()
                # Never run: no connection, or refused while the server stops.
                refused = code == str(grpc.StatusCode.UNAVAILABLE) and any(
                    text in message for text in ("failed to connect", "Connection refused",
                                                 "was not run"))
                overloaded = code == str(grpc.StatusCode.UNAVAILABLE) and "capacity" in message
                tally.answers.append(Answer(sent, time.monotonic(), 503 if overloaded else None,
                                            None, f"{code}: {message[:120]}",
                                            lost=not refused and not overloaded))
                await asyncio.sleep(0.01)
    finally:
        await client.close()


async def sigterm_grpc(server: subprocess.Popen[bytes], target: str, model: str, clients: int,
                       after_s: float = 1.0, settle_s: float = 0.3) -> Phase:
    """SIGTERM the server `after_s` into closed-loop gRPC load from `clients` channels; wait for
    it to exit."""
    tally = Tally()
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(_grpc_client(target, model, i, stop, tally))
             for i in range(clients)]
    await asyncio.sleep(settle_s + after_s)
    server.send_signal(signal.SIGTERM)
    while server.poll() is None:
        await asyncio.sleep(0.05)
    await asyncio.sleep(settle_s)
    stop.set()
    await asyncio.gather(*tasks)
    return Phase(f"SIGTERM under gRPC (exit {server.returncode})", Tally.summary(tally.answers),
                 _versions(tally))


# -- the command ---------------------------------------------------------------------------------

def _table(phases: list[Phase]) -> str:
    lines = ["| phase | requests | non-2xx | lost | refused | versions answering | old version "
             "answered after the call returned | load call |",
             "|---|---|---|---|---|---|---|---|"]
    for p in phases:
        after = "" if p.old_after_s is None else f"{p.old_after_s:.3f} s"
        lines.append(f"| {p.name} | {p.counts['requests']} | {p.counts['non_2xx']} | "
                     f"{p.counts['lost']} | {p.counts['refused']} | {', '.join(p.versions)} | "
                     f"{after} | {p.call} |")
    return "\n".join(lines)


def run(artifact: Path, clients: int, sigterm_runs: int, workers: int) -> list[Phase]:
    work = Path(tempfile.mkdtemp(prefix="ffs-lifecycle-"))
    root = versioned_repository(artifact, work / "models", "model", 4)
    aside = {v: hide_version(root, "model", v) for v in (2, 3, 4)}
    flip_a_byte(aside[4])
    env = {"FFS_CPU_POOL__WORKERS": str(workers)}
    port = serving.free_port()
    base = f"http://127.0.0.1:{port}"
    server = serving.start(root, port, work / "server.log", env)
    phases: list[Phase] = []
    try:
        phases.append(asyncio.run(swap(base, "model", clients, "1", "2",
                                       lambda: aside[2].rename(root / "model" / "2"))))
        phases.append(asyncio.run(swap(base, "model", clients, "2", "3",
                                       lambda: aside[3].rename(root / "model" / "3"))))
        phases.append(asyncio.run(swap(base, "model", clients, "3", "2",
                                       lambda: write_policy(root, "model", {"specific": [2]}))))
        write_policy(root, "model", {"latest": 1})

        def broken() -> None:
            aside[4].rename(root / "model" / "4")

        phases.append(asyncio.run(failed_load(base, "model", clients, broken)))
    finally:
        serving.stop(server)
    shutil.rmtree(root / "model" / "4")
    for index in range(sigterm_runs):
        port = serving.free_port()
        base = f"http://127.0.0.1:{port}"
        server = serving.start(root, port, work / f"sigterm-{index}.log", env)
        try:
            phases.append(asyncio.run(sigterm(server, base, "/v1/classify/model", clients)))
        finally:
            if server.poll() is None:
                serving.stop(server)
    for index in range(sigterm_runs if grpc_available() else 0):
        port, grpc_port = serving.free_port(), serving.free_port()
        server = serving.start(root, port, work / f"sigterm-grpc-{index}.log",
                               {**env, "FFS_GRPC_PORT": str(grpc_port)})
        try:
            phases.append(asyncio.run(sigterm_grpc(server, f"127.0.0.1:{grpc_port}", "model",
                                                   clients)))
        finally:
            if server.poll() is None:
                serving.stop(server)
    shutil.rmtree(work, ignore_errors=True)
    return phases


def grpc_available() -> bool:
    """Whether the `grpc` extra is installed (the gRPC scenarios need it)."""
    import importlib.util

    return importlib.util.find_spec("grpc") is not None and \
        importlib.util.find_spec("tritonclient.grpc") is not None


def _one_version_server(artifact: Path, workers: int, purpose: str) \
        -> tuple[Path, Path, str, subprocess.Popen[bytes]]:
    """A work folder, a repository of `model/1`, and a server on it: (work, root, url, process)."""
    work = Path(tempfile.mkdtemp(prefix=f"ffs-lifecycle-{purpose}-"))
    root = versioned_repository(artifact, work / "models", "model", 1)
    port = serving.free_port()
    server = serving.start(root, port, work / "server.log",
                           {"FFS_CPU_POOL__WORKERS": str(workers)})
    return work, root, f"http://127.0.0.1:{port}", server


def memory(artifact: Path, workers: int, swaps: int = 7) -> list[tuple[str, float, float]]:
    """Resident MiB of the workers and of the API process after each load call: a second
    version beside the first, the first unloaded, then `swaps` more swaps."""
    from app.core.model_control import resident_bytes

    work, root, url, server = _one_version_server(artifact, workers, "memory")
    rows: list[tuple[str, float, float]] = []

    def measure(label: str) -> None:
        rows.append((label, resident_bytes(serving.worker_pids(url)) / 2**20,
                     resident_bytes([server.pid]) / 2**20))

    def load() -> None:
        response = httpx.post(f"{url}/v2/repository/models/model/load", timeout=120)
        response.raise_for_status()

    try:
        measure("v1 only")
        shutil.copytree(artifact, root / "model" / "2")
        write_policy(root, "model", {"latest": 2})
        load()
        measure("v1 and v2 resident")
        write_policy(root, "model", {"latest": 1})
        load()
        measure("v1 unloaded")
        for version in range(3, 3 + swaps):
            shutil.copytree(artifact, root / "model" / str(version))
            load()
            measure(f"v{version} serving")
    finally:
        serving.stop(server)
        shutil.rmtree(work, ignore_errors=True)
    return rows


@dataclass(frozen=True)
class SoakPoint:
    swaps: int
    workers_mib: float
    api_mib: float


async def _swap_soak(url: str, root: Path, artifact: Path, clients: int, swaps: int,
                     checkpoints: set[int], api_pid: int) -> tuple[Tally, list[SoakPoint], list[str]]:
    """`swaps` load calls, each serving a new version and retiring the one before, under load."""
    from app.core.model_control import resident_bytes

    points: list[SoakPoint] = []
    failures: list[str] = []

    async def action() -> None:
        for done in range(1, swaps + 1):
            await asyncio.to_thread(shutil.copytree, artifact, root / "model" / str(done + 1))
            status, text, _ = await _load(url, "model")
            if status != 200:
                failures.append(f"swap {done}: {status} {text[:200]}")
            await asyncio.to_thread(shutil.rmtree, root / "model" / str(done))
            if done in checkpoints:
                workers = await asyncio.to_thread(serving.worker_pids, url)
                points.append(SoakPoint(done, resident_bytes(workers) / 2**20,
                                        resident_bytes([api_pid]) / 2**20))

    tally = await under_load(url, "/v1/classify/model", clients, action)
    return tally, points, failures


def swap_soak(artifact: Path, clients: int, swaps: int, workers: int) \
        -> tuple[dict[str, int], list[SoakPoint], list[str]]:
    """A new version loaded and the old one retired `swaps` times under `clients` keep-alive
    clients: the answers' counts, resident memory at checkpoints, and failed load calls."""
    work, root, url, server = _one_version_server(artifact, workers, "soak")
    checkpoints = {1, 10, 25, 50, 75, swaps} | {n for n in range(100, swaps, 100)}
    try:
        tally, points, failures = asyncio.run(
            _swap_soak(url, root, artifact, clients, swaps, checkpoints, server.pid))
    finally:
        serving.stop(server)
        shutil.rmtree(work, ignore_errors=True)
    return Tally.summary(tally.answers), points, failures


def _print_soak(counts: dict[str, int], points: list[SoakPoint], failures: list[str]) -> None:
    print(f"requests {counts['requests']}, non-2xx {counts['non_2xx']}, lost {counts['lost']}, "
          f"refused {counts['refused']}, failed load calls {len(failures)}")
    for failure in failures[:5]:
        print(f"  {failure}")
    print("\n| after swaps | workers MiB | API process MiB |\n|---:|---:|---:|")
    for point in points:
        print(f"| {point.swaps} | {point.workers_mib:.1f} | {point.api_mib:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench lifecycle",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=Path("models/sst2"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--sigterm-runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-only", action="store_true",
                        help="only the resident memory after each load call")
    parser.add_argument("--soak-swaps", type=int, metavar="N",
                        help="only a soak: N swaps (a new version in, the old one out) under "
                             "--clients clients, with resident memory along the way")
    args = parser.parse_args(argv)
    if args.soak_swaps:
        counts, points, failures = swap_soak(args.artifact, args.clients, args.soak_swaps,
                                             args.workers)
        _print_soak(counts, points, failures)
        return 0 if not failures and counts["non_2xx"] == counts["lost"] == 0 else 1
    if not args.memory_only:
        print(_table(run(args.artifact, args.clients, args.sigterm_runs, args.workers)))
    print("\n| after | workers MiB | API process MiB |\n|---|---:|---:|")
    for label, workers, api in memory(args.artifact, args.workers):
        print(f"| {label} | {workers:.1f} | {api:.1f} |")
    return 0
