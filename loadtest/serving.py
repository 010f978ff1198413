"""Start the real server on one artifact, on a loopback port, for a benchmark run."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def serve_artifact(artifact: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    """`python -m app` over a one-task repository holding `artifact`; returns once ready."""
    repo = Path(tempfile.mkdtemp(prefix="ffs-bench-"))
    (repo / artifact.name).symlink_to(artifact.resolve())
    log = repo.parent / f"{repo.name}.log"
    environment = {**os.environ, "FFS_MODEL_REPOSITORY": str(repo), "FFS_PORT": str(port),
                   "FFS_HOST": "127.0.0.1", "FFS_LOG_LEVEL": "warning", **env}
    with log.open("wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "app"], env=environment,
                                   stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server did not become ready; see {log}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
