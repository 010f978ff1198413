"""The API tier: one or several API processes sharing one listening socket.

One API process answers a few thousand requests/s (docs/benchmarks-log.md), so on larger machines the
tier runs several: this (supervisor) process binds the port once and spawns `count` API processes
that accept on it; each owns every count-th worker of the pool (its shard) with its own batcher,
so queue limits, deadlines, drain and worker restarts behave in each exactly as in a single one.
The supervisor forwards SIGTERM/SIGINT, and restarts an API process that dies (its workers exit
with it, on EOF of their sockets).
"""

from __future__ import annotations

import gc
import logging
import logging.config
import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile
import time
from types import FrameType
from typing import Any

import uvicorn

from app.api.app import create_app
from app.core.service import Service, Shard, prepare_service
from app.lifecycle import DrainingServer
from app.settings import Settings, load_settings

log = logging.getLogger(__name__)
RESTART_BACKOFF_MAX_S = 30.0


def serve(service: Service, settings: Settings, log_config: dict[str, Any],
          sock: socket.socket | None = None) -> None:
    """Run one API process over a prepared service until it is told to stop."""
    # Everything loaded so far lives as long as the process: keep it out of the collector's
    # scans, and collect the young generation less often (each request allocates a few hundred
    # short-lived objects; the default threshold of 700 ran a collection every few requests).
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    config = uvicorn.Config(create_app(service), host=settings.host, port=settings.port,
                            log_level=settings.log_level, access_log=False, log_config=log_config,
                            timeout_graceful_shutdown=settings.shutdown_timeout_s,
                            # Nothing here reads the client's address: skip the per-request
                            # X-Forwarded-* rewriting.
                            proxy_headers=False)
    DrainingServer(config, service, settings.drain_delay_s).run(
        sockets=None if sock is None else [sock])


def _api_process(shard: Shard, sock: socket.socket, log_config: dict[str, Any]) -> None:
    """Entry point of one spawned API process."""
    logging.config.dictConfig(log_config)
    settings = load_settings()
    serve(prepare_service(settings, shard), settings, log_config, sock)


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Tier:
    """Supervisor of `count` API processes on one socket."""

    def __init__(self, settings: Settings, count: int, log_config: dict[str, Any]) -> None:
        self.settings = settings
        self.count = count
        self.log_config = log_config
        self.sock: socket.socket | None = None
        self.processes: dict[int, Any] = {}
        self.stopping = False
        self._restarts: dict[int, int] = {}

    def _start(self, index: int) -> None:
        assert self.sock is not None
        process = mp.get_context("spawn").Process(
            target=_api_process, args=(Shard(index, self.count), self.sock, self.log_config),
            name=f"ffs-api-{index}")
        process.start()
        self.processes[index] = process

    def _signal(self, sig: int, frame: FrameType | None) -> None:
        del frame
        self.stopping = True
        for process in self.processes.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, sig)
        if self.sock is not None:  # the API processes keep their copies until they drain
            self.sock.close()
            self.sock = None

    def run(self) -> int:
        # Set before any API process starts: they all write their metrics there (metrics.py).
        metrics_dir = tempfile.mkdtemp(prefix="ffs-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        try:
            return self._supervise()
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)

    def _supervise(self) -> int:
        self.sock = listening_socket(self.settings.host, self.settings.port)
        for index in range(self.count):
            self._start(index)
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        log.info("API tier: %d processes on %s:%d", self.count, self.settings.host,
                 self.sock.getsockname()[1])
        failed = False
        while self.processes:
            time.sleep(0.2)
            for index, process in list(self.processes.items()):
                if process.is_alive():
                    continue
                del self.processes[index]
                _mark_dead(process.pid)
                if self.stopping:
                    failed |= process.exitcode not in (0, -signal.SIGTERM, -signal.SIGINT)
                    continue
                self._restart_later(index, process.exitcode)
        return 1 if failed else 0

    def _restart_later(self, index: int, exitcode: int | None) -> None:
        count = self._restarts.get(index, 0)
        self._restarts[index] = count + 1
        delay = min(RESTART_BACKOFF_MAX_S, float(2 ** count) - 1)
        log.error("API process %d exited with %s; restarting it in %.0f s", index, exitcode, delay)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not self.stopping:
            time.sleep(0.1)
        if not self.stopping:
            self._start(index)


def _mark_dead(pid: int | None) -> None:
    """Drop a dead process's live gauges from the shared metrics (prometheus_client's rule)."""
    from prometheus_client import multiprocess

    if pid is not None:
        multiprocess.mark_process_dead(pid)
