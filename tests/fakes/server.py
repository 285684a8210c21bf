"""Run an ASGI app with uvicorn on a free loopback port, inside the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import uvicorn
from starlette.types import ASGIApp

START_TIMEOUT_S = 5.0
GRACEFUL_SHUTDOWN_S = 2


class _LoopbackServer(uvicorn.Server):
    """A uvicorn server that leaves SIGINT and SIGTERM to pytest.

    `uvicorn.Server.serve` replaces the signal handlers while it runs and raises the caught
    signal again after shutdown, which would end the whole test session.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve(server: uvicorn.Server) -> None:
    # uvicorn 0.55 calls sys.exit() when it cannot bind. SystemExit raised inside a task stops
    # the event loop and with it pytest, so turn it into an ordinary error.
    try:
        await server.serve()
    except SystemExit as exc:
        raise RuntimeError(f"uvicorn failed to start (exit code {exc.code})") from None


@contextlib.asynccontextmanager
async def serve_app(app: ASGIApp) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1 and yield its base URL, such as `http://127.0.0.1:41234`.

    The OS picks a free port. On exit the server stops through `should_exit`, waiting at
    most GRACEFUL_SHUTDOWN_S seconds for open responses before it cancels them.
    Raises RuntimeError if the server has not started within START_TIMEOUT_S seconds.
    """
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = _LoopbackServer(config)
    task = asyncio.create_task(_serve(server))
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while not server.started:
                if task.done():
                    await task
                    raise RuntimeError("uvicorn stopped before it started serving")
                await asyncio.sleep(0.01)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise RuntimeError(f"uvicorn did not start within {START_TIMEOUT_S} s") from None

    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
