"""Shared fixtures: a real Scout server on a loopback port, with its own data directory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.main import create_app
from app.server import ScoutServer, make_server
from app.service import Service
from graph.providers.base import ResearchModel, SearchProvider

START_TIMEOUT_S = 10.0
CORPUS_DIR = Path(__file__).parent / "corpus"


class _TestServer(ScoutServer):
    """Leaves SIGINT and SIGTERM to pytest: uvicorn re-raises a caught signal after shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class RunningScout:
    """A Scout server started by a test: its URL, its service and its uvicorn server."""

    base_url: str
    service: Service
    server: ScoutServer
    settings: Settings

    def client(self, **kwargs: object) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=30.0, **kwargs)  # type: ignore[arg-type]


def make_settings(data_dir: Path, **env: str) -> Settings:
    """Return settings with offline providers, the test corpus and `data_dir`.

    Variables in `env` override those defaults.
    """
    base = {
        "SCOUT_DATA_DIR": str(data_dir),
        "SCOUT_CORPUS_DIR": str(CORPUS_DIR),
        "SCOUT_LLM": "offline",
        "SCOUT_SEARCH": "local",
    }
    return Settings.from_env({**base, **env})


@contextlib.asynccontextmanager
async def run_scout(
    settings: Settings,
    model: ResearchModel | None = None,
    search: SearchProvider | None = None,
) -> AsyncIterator[RunningScout]:
    """Start Scout on 127.0.0.1 with an OS-chosen port; stop it with `should_exit`."""
    service = Service(settings, model=model, search=search)
    app = create_app(settings, service)
    plain = make_server(app, "127.0.0.1", 0, "warning")
    server = _TestServer(plain.config, service)

    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while not server.started:
                if task.done():
                    await task
                    raise RuntimeError("Scout stopped before it started serving")
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield RunningScout(f"http://127.0.0.1:{port}", service, server, settings)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
async def scout(settings: Settings) -> AsyncIterator[RunningScout]:
    async with run_scout(settings) as running:
        yield running


@pytest.fixture
async def client(scout: RunningScout) -> AsyncIterator[httpx.AsyncClient]:
    async with scout.client() as http:
        yield http
