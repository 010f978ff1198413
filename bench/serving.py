"""Start the real server on one artifact, on a loopback port, for a benchmark run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import httpx


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(repo: Path, port: int, log_path: Path, env: Mapping[str, str] | None = None,
          timeout: float = 90.0) -> subprocess.Popen[bytes]:
    """`python -m app` over the model repository `repo` on 127.0.0.1:`port`, output to
    `log_path`; returns once /readyz says ready, raises (with the log) if it exits or times out."""
    environment = {"FFS_MODEL_REPOSITORY": str(repo), "FFS_PORT": str(port),
                   "FFS_HOST": "127.0.0.1", "FFS_LOG_LEVEL": "warning", **(env or {})}
    return launch([sys.executable, "-m", "app"], f"http://127.0.0.1:{port}/readyz", log_path,
                  environment, timeout)


def launch(command: list[str], ready_url: str, log_path: Path,
           env: Mapping[str, str] | None = None, timeout: float = 90.0,
           cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Any server process: started with `env` added (in `cwd`), output to `log_path`, returned
    once `ready_url` answers 200; raises (with the log) if it exits or times out."""
    with log_path.open("wb") as handle:
        process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=handle,
                                   stderr=subprocess.STDOUT, cwd=cwd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop(process)
    raise RuntimeError(f"server not ready within {timeout} s:\n{log_path.read_text()}")


def serve_artifact(artifact: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    """The server over a one-task repository holding `artifact`."""
    repo = Path(tempfile.mkdtemp(prefix="ffs-bench-"))
    (repo / artifact.name).symlink_to(artifact.resolve())
    return start(repo, port, repo.parent / f"{repo.name}.log", env)


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def worker_pids(url: str) -> list[int]:
    """The worker processes of the server at `url`, from its /v1/pools."""
    pools = httpx.get(f"{url}/v1/pools", timeout=10).json()["pools"]
    return [int(w["pid"]) for pool in pools for w in pool["workers"]]
