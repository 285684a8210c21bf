"""Runs the app under uvicorn, ending event streams as soon as shutdown begins."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette

from app.logs import redact_access_tokens
from app.service import Service

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ScoutServer(uvicorn.Server):
    """A uvicorn server that ends the service's event streams before it drains connections.

    uvicorn waits for open responses before it runs the lifespan shutdown, and an event
    stream stays open until its job ends, so the streams must be ended first.
    """

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.service.begin_shutdown()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Stop on SIGINT or SIGTERM, then let the process exit normally.

        uvicorn raises a caught signal again after shutdown, so the process would end
        by the signal (exit status 143 for SIGTERM). A graceful stop is the normal end of
        this service, so it exits 0 instead.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def make_server(app: Starlette, host: str, port: int, log_level: str = "info") -> ScoutServer:
    # The access log writes query strings, and the event stream accepts `?access_token=`.
    redact_access_tokens()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=10,
        # The app's own logging configuration applies; uvicorn adds its access log only.
        log_config=None,
    )
    return ScoutServer(config, app.state.service)
