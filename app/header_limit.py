"""Rejects requests whose headers are larger than the configured limit.

uvicorn accepts very large header blocks, so the limit is enforced here, before any
route or other middleware reads them.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import FieldError
from app.problems import send_problem

logger = logging.getLogger(__name__)


class HeaderLimitMiddleware:
    """Rejects a request whose headers exceed `max_bytes` with 431 and a problem document."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.max_bytes:
                logger.warning(
                    "%s %s -> 431: %d header bytes", scope["method"], scope["path"], size
                )
                await _reject(scope, send, size, self.max_bytes)
                return
        await self.app(scope, receive, send)


async def _reject(scope: Scope, send: Send, size: int, limit: int) -> None:
    await send_problem(
        scope,
        send,
        431,
        "Request header fields too large",
        f"The request headers take {size} bytes; the limit is {limit}.",
        "headers-too-large",
        [FieldError("header", f"Send at most {limit} bytes of headers.")],
        [(b"connection", b"close")],
    )
