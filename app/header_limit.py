"""Rejects requests whose headers are larger than the configured limit.

uvicorn accepts very large header blocks, so the limit is enforced here, before any
route or other middleware reads them.
"""

from __future__ import annotations

import logging

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)


class HeaderLimitMiddleware:
    """Answers 431 with a problem document when the request's headers exceed `max_bytes`."""

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
    body = orjson.dumps(
        {
            "type": "urn:scout:problem:headers-too-large",
            "title": "Request header fields too large",
            "status": 431,
            "detail": f"The request headers take {size} bytes; the limit is {limit}.",
            "instance": scope["path"],
            "errors": [{"field": "header", "message": f"Send at most {limit} bytes of headers."}],
        }
    )
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 431, "headers": headers})
    await send({"type": "http.response.body", "body": body})
