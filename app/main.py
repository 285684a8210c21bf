"""The Starlette application: routes, problem handlers, static page and lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from app import routes
from app.auth import ApiKeys, AuthMiddleware
from app.config import PROJECT_DIR, Settings
from app.errors import ScoutError
from app.header_limit import HeaderLimitMiddleware
from app.problems import http_error_handler, scout_error_handler, unexpected_error_handler
from app.service import Service

STATIC_DIR = PROJECT_DIR / "static"


def create_app(settings: Settings | None = None, service: Service | None = None) -> Starlette:
    """Build the app; the service starts in the lifespan, so one app serves one process."""
    settings = settings or Settings.from_env()
    service = service or Service(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = Starlette(
        routes=_routes(settings),
        middleware=[
            Middleware(HeaderLimitMiddleware, max_bytes=settings.max_header_bytes),
            Middleware(AuthMiddleware, keys=ApiKeys(settings.api_keys)),
        ],
        lifespan=lifespan,
        exception_handlers={
            ScoutError: scout_error_handler,
            HTTPException: http_error_handler,
            Exception: unexpected_error_handler,
        },
    )
    app.state.service = service
    app.state.openapi = None
    return app


def _routes(settings: Settings) -> list[Route | Mount]:
    table: list[Route | Mount] = [
        Route("/", _index, methods=["GET"]),
        Route("/health", routes.health, methods=["GET"]),
        Route("/openapi.json", routes.openapi, methods=["GET"]),
        Route("/research", routes.research_collection, methods=["GET", "POST"]),
        Route("/status/{job_id}", routes.get_status, methods=["GET"]),
        Route("/research/{job_id}/approve", routes.approve, methods=["POST"]),
        Route("/research/{job_id}/cancel", routes.cancel, methods=["POST"]),
        Route("/research/{job_id}/events", routes.job_event_stream, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
    ]
    if settings.search == "local":
        # Local sources cite `corpus/<path>#<section>`; this serves those files to readers.
        table.append(
            Mount("/corpus", StaticFiles(directory=_existing(settings.corpus_dir), check_dir=False))
        )
    return table


async def _index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def _existing(path: Path) -> Path:
    return path if path.is_dir() else STATIC_DIR
