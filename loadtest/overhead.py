"""Serving overhead: sentences/s in-process (ORT, batch 1) against the HTTP server at saturation.

    python -m loadtest.overhead --artifact models/sst2 [--rounds 3] [--concurrency 32]

Both sides classify the same dev sentences end to end (text -> tokenizer -> logits -> label), in
interleaved rounds of one run; medians and their ratio are printed (shared machines are noisy: read
the ratio, not the absolute figures).

The load comes from `wrk` when it is installed (C, ~0.1 ms of CPU per request) or else from an httpx
client in this process (~3-4 ms of CPU per request). Either runs on the same cores as the server and
takes CPU from it; with httpx the client, not the server, is what saturates a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from compress.artifact import read_manifest, verified_variant_path
from compress.encoding import TextInput, encode, load_tokenizer, pad_batch, softmax
from compress.tasks import get_task, load_split


@dataclass(frozen=True)
class Round:
    in_process: float
    http: float


def in_process_rate(artifact: Path, texts: list[TextInput], threads: int) -> float:
    """Sentences/s of one ORT session at batch 1, tokenizing each sentence as it goes."""
    manifest = read_manifest(artifact)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(verified_variant_path(artifact, manifest, "cpu-int8")),
                                   options, providers=["CPUExecutionProvider"])
    tokenizer = load_tokenizer(artifact / manifest.tokenizer, manifest.max_length)
    labels = manifest.labels
    started = time.perf_counter()
    for text in texts:
        rows = encode(tokenizer, [text])
        feeds = pad_batch(rows, manifest.model_inputs, manifest.pad_token_id)
        probs = softmax(session.run(None, feeds)[0])
        _ = labels[int(np.argmax(probs[0]))]
    return len(texts) / (time.perf_counter() - started)


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


def _wrk_script(task: str, texts: list[TextInput]) -> Path:
    """A wrk Lua script that POSTs each text as its own request, cycling through them."""
    bodies = [json.dumps({"inputs": [t if isinstance(t, str) else list(t)]}) for t in texts]
    lines = ["bodies = {", *(f"  {json.dumps(b)}," for b in bodies), "}", "i = 0",
             "wrk.method = 'POST'", "wrk.headers['Content-Type'] = 'application/json'",
             "request = function()",
             "  i = i % #bodies + 1",
             f"  return wrk.format(nil, '/v1/classify/{task}', nil, bodies[i])",
             "end"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write("\n".join(lines) + "\n")
    return Path(handle.name)


def wrk_rate(url: str, script: Path, concurrency: int, seconds: float) -> float:
    """Requests/s that wrk sustained; raises if any response was not 2xx."""
    result = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "-s", str(script), url],
        check=True, capture_output=True, text=True,
    )
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", result.stdout)
    if bad or "Socket errors" in result.stdout:
        raise RuntimeError(f"wrk saw failed requests:\n{result.stdout}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    if found is None:
        raise RuntimeError(f"cannot read wrk output:\n{result.stdout}")
    return float(found.group(1))


def _serve(artifact: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    repo = Path(tempfile.mkdtemp(prefix="ffs-overhead-"))
    (repo / artifact.name).symlink_to(artifact.resolve())
    log = repo.parent / f"{repo.name}.log"
    env = {**os.environ, "FFS_MODEL_REPOSITORY": str(repo), "FFS_PORT": str(port),
           "FFS_LOG_LEVEL": "warning"}
    with log.open("wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "app"], env=env, stdout=handle,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, log
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not become ready")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, default=Path("models/sst2"))
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("DATA_DIR", "../shared/data")))
    parser.add_argument("--texts", type=int, default=None, help="dev sentences per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="ORT threads of the in-process session (default: all cores)")
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
    script = _wrk_script(manifest.task, texts) if client == "wrk" else None
    process, _ = _serve(args.artifact, args.port)
    rounds: list[Round] = []
    try:
        url = f"http://127.0.0.1:{args.port}"
        for index in range(args.rounds):
            local = in_process_rate(args.artifact, texts, args.threads)
            if script is not None:
                remote = wrk_rate(url, script, args.concurrency, args.seconds)
            else:
                remote = asyncio.run(http_rate(url, manifest.task, texts, args.concurrency))
            rounds.append(Round(local, remote))
            print(f"round {index + 1}: in-process {local:8.1f} sent/s   "
                  f"http {remote:8.1f} sent/s   ratio {remote / local:.2f}", flush=True)
    finally:
        process.terminate()
        process.wait(timeout=15)
    local = statistics.median(r.in_process for r in rounds)
    remote = statistics.median(r.http for r in rounds)
    ratios = [r.http / r.in_process for r in rounds]
    print(f"\n{manifest.task} ({len(texts)} dev sentences, {args.rounds} rounds, "
          f"{len(os.sched_getaffinity(0))} cores, concurrency {args.concurrency}):")
    print(f"  in-process ORT INT8, batch 1, {args.threads} threads: {local:.1f} sentences/s")
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


if __name__ == "__main__":
    raise SystemExit(main())
