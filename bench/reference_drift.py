"""Does the server slow Table 3's row-7 reference? The in-process pool that row 7 is compared with,
timed alone, beside an idle server, right after and 5 s after a wrk run against that server, with
the server stopped again, and right after and 5 s after plain busy loops on every core (no server
at all), with the server's CPU read from /proc during each of the pool's runs.

    python -m bench.reference_drift --artifact <artifact> [--rounds 4] [--idle-pools 4]

`--idle-pools` keeps that many more pools of the same graph alive and idle, as Table 3 does.
Loopback only; every process it starts is stopped before it returns.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import serving
from bench.instances import GraphSpec, InstancePool, Layout
from compress.tasks import get_task, load_split
from contract.artifact import read_manifest
from contract.encoding import TextInput
from loadtest import wrk
from loadtest.proc import ServerCpu


def busy_loops(seconds: float) -> None:
    """Every usable core kept busy by a plain Python loop for `seconds`."""
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"
    loops = [subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-c", code])
             for core in sorted(os.sched_getaffinity(0))]
    for loop in loops:
        loop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--idle-pools", type=int, default=4)
    parser.add_argument("--wrk-seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    manifest = read_manifest(args.artifact)
    spec = GraphSpec(args.artifact / manifest.variants["cpu-int8"].file,
                     args.artifact / manifest.tokenizer, list(manifest.model_inputs),
                     manifest.max_length, manifest.pad_token_id)
    dev = load_split(get_task(manifest.task), "dev", args.data_dir)
    texts: list[TextInput] = list(dev.texts[:400])
    pool = InstancePool(spec, Layout(2, 1))
    idle = [InstancePool(spec, Layout(1, 2) if i % 2 else Layout(2, 1))
            for i in range(args.idle_pools)]
    server = None

    def rounds(label: str, before: Callable[[], object] | None = None) -> None:
        rates: list[float] = []
        cpu: list[tuple[float, float]] = []
        for _ in range(args.rounds):
            if before is not None:
                before()
            meter = None if server is None or server.poll() is not None else ServerCpu(server.pid)
            rates.append(pool.run(texts).sentences_per_s)
            if meter is not None:
                cpu.append(meter.spent())
        spent = "" if not cpu else (f"; server CPU during a pool run (median): API "
                                    f"{statistics.median(a for a, _ in cpu):.3f} s, workers "
                                    f"{statistics.median(w for _, w in cpu):.3f} s")
        print(f"| {label} | {statistics.median(rates):.0f} | "
              f"{', '.join(f'{r:.0f}' for r in rates)} | {spent.lstrip('; ')} |", flush=True)

    print("| condition | pool sentences/s (median) | rounds | server CPU |\n|---|---:|---|---|")
    try:
        for other in idle:
            other.run(texts[:50])
        pool.run(texts)  # warm-up
        rounds("pool alone")
        port = serving.free_port()
        url = f"http://127.0.0.1:{port}"
        server = serving.serve_artifact(args.artifact, port, FFS_CPU_POOL__WORKERS="2")
        script = wrk.classify_script(manifest.task, texts)

        def load() -> None:
            wrk.run(url, script, 32, args.wrk_seconds)

        def load_then_wait() -> None:
            load()
            time.sleep(5)

        def busy_then_wait() -> None:
            busy_loops(args.wrk_seconds)
            time.sleep(5)

        rounds("server up, idle")
        rounds("right after a wrk run against the server", load)
        rounds("5 s after a wrk run", load_then_wait)
        serving.stop(server)
        rounds("server stopped again")
        rounds("right after busy loops on every core (no server)",
               lambda: busy_loops(args.wrk_seconds))
        rounds("5 s after busy loops", busy_then_wait)
    finally:
        if server is not None and server.poll() is None:
            serving.stop(server)
        for running in [pool, *idle]:
            running.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
