"""Graceful shutdown: readiness fails first, in-flight requests drain, workers stop, exit 0."""

from __future__ import annotations

import asyncio
import select
import signal
import socket
import time
from types import FrameType

import uvicorn

from app.core.service import Service

# How long a connection accepted just before the listener closed may take to send its request:
# on loopback or a LAN its bytes arrive within milliseconds of the connect.
FIRST_REQUEST_GRACE_S = 0.5


class DrainingServer(uvicorn.Server):
    """uvicorn, with a drain phase between SIGTERM and closing the listening socket.

    On SIGTERM the service is marked draining (/readyz and /v2/health/ready answer 503) but keeps
    serving for `drain_delay_s`, so a load balancer stops sending before connections are refused;
    meanwhile every answer carries `Connection: close`, so clients stop reusing connections
    (a request sent on a kept-alive connection as the server closes it is lost). Then: stop
    accepting, give connections accepted but not yet read a moment to deliver their request
    (they are answered), and run uvicorn's own shutdown: idle connections close, in-flight
    requests finish (up to shutdown_timeout_s), the app's lifespan shutdown stops the workers.
    A second signal, or SIGINT, shuts down without the delay.
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

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._exit_at is not None and not self.force_exit:
            await self._close_listeners()
            until = time.monotonic() + FIRST_REQUEST_GRACE_S
            while time.monotonic() < until and any(
                    getattr(c, "cycle", True) is None for c in self.server_state.connections):
                await asyncio.sleep(0.005)
        await super().shutdown(sockets)

    async def _close_listeners(self) -> None:
        """Stop accepting. The kernel resets connections it completed but the server had not
        accepted yet when a listening socket closes, and their clients may have sent a request
        already: let the loop accept what is waiting, and close at once when nothing is (no
        await between the last look and the close)."""
        listeners = [sock.fileno() for server in self.servers for sock in server.sockets]
        until = time.monotonic() + FIRST_REQUEST_GRACE_S
        while listeners and time.monotonic() < until and \
                select.select(listeners, [], [], 0)[0]:
            await asyncio.sleep(0.001)
        for server in self.servers:
            server.close()

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        return await super().on_tick(counter)
