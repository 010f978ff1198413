"""Graceful shutdown: readiness fails first, in-flight requests drain, workers stop, exit 0."""

from __future__ import annotations

import signal
import time
from types import FrameType

import uvicorn

from app.core.service import Service


class DrainingServer(uvicorn.Server):
    """uvicorn, with a drain phase between SIGTERM and closing the listening socket.

    On SIGTERM the service is marked draining (/readyz and /v2/health/ready answer 503) but keeps
    serving for `drain_delay_s`, so a load balancer stops sending before connections are refused.
    Then uvicorn's own shutdown runs: stop accepting, wait for in-flight requests (up to
    shutdown_timeout_s), run the app's lifespan shutdown (workers stop). A second signal, or
    SIGINT, shuts down without the delay.
    """

    def __init__(self, config: uvicorn.Config, service: Service, drain_delay_s: float) -> None:
        super().__init__(config)
        self.service = service
        self.drain_delay_s = drain_delay_s
        self._exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._exit_at is not None or sig != signal.SIGTERM:
            super().handle_exit(sig, frame)
            return
        # Not recorded as a captured signal: uvicorn would re-raise it at exit (status -15).
        self.service.draining = True
        self._exit_at = time.monotonic() + self.drain_delay_s

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        return await super().on_tick(counter)
