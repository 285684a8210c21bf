"""Bearer-token access control and per-key submission limits.

With API keys configured, every route except the health check, the page and its static
files needs `Authorization: Bearer <key>`. The event stream also accepts the key as the
`access_token` query parameter, because a browser's EventSource cannot set headers.
Each job belongs to the key that created it; other keys cannot see it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections import defaultdict, deque
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import FieldError, ScoutError
from app.problems import send_problem

logger = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/", "/health", "/openapi.json"})
PUBLIC_PREFIXES = ("/static/", "/corpus/")
WINDOW_S = 60.0


def key_id(key: str) -> str:
    """Return a stable, non-secret name for a key: it tags the key's jobs and log lines."""
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:16]


class ApiKeys:
    """The configured keys; matching compares against every key in constant time."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = [(key.encode(), key_id(key)) for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, token: str) -> str | None:
        """Return the key id that `token` matches, or None."""
        presented = token.encode()
        match = None
        for key, identifier in self._keys:
            if hmac.compare_digest(key, presented):
                match = identifier
        return match


class AuthMiddleware:
    """Pure ASGI middleware, so streaming responses and disconnect detection keep working."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = ""
        if not self.keys.enabled or _is_public(scope["path"]):
            await self.app(scope, receive, send)
            return

        caller = self.keys.identify(_token(scope))
        if caller is None:
            logger.warning(
                "%s %s -> 401: missing or unknown API key", scope["method"], scope["path"]
            )
            await _unauthorized(scope, send)
            return
        scope["state"]["caller"] = caller
        await self.app(scope, receive, send)


class TooManyRequests(ScoutError):
    status = 429
    title = "Too many requests"
    type_suffix = "too-many-requests"

    def __init__(self, detail: str, retry_after_s: float, field: FieldError) -> None:
        super().__init__(detail, [field])
        self.retry_after_s = retry_after_s


class SubmissionLimiter:
    """Limits how many jobs each key submits per minute, in a sliding window.

    NOTE: the window lives in this process, so with several replicas each one applies
    the limit separately.
    """

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._times: defaultdict[str, deque[float]] = defaultdict(deque)

    def check(self, caller: str) -> None:
        """Record a submission by `caller`, or raise TooManyRequests if it is over the limit."""
        now = time.monotonic()
        times = self._times[caller]
        while times and times[0] <= now - WINDOW_S:
            times.popleft()
        if len(times) >= self.per_minute:
            wait = times[0] + WINDOW_S - now
            raise TooManyRequests(
                f"This API key submitted {len(times)} jobs in the last minute; the limit is "
                f"{self.per_minute}.",
                wait,
                FieldError("header.Authorization", f"Wait {wait:.0f} s before submitting again."),
            )
        times.append(now)


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _token(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            return credentials.strip() if scheme.lower() == "bearer" else ""
    if scope["path"].endswith("/events"):
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        return (query.get("access_token") or [""])[0]
    return ""


async def _unauthorized(scope: Scope, send: Send) -> None:
    await send_problem(
        scope,
        send,
        401,
        "Unauthorized",
        "This route needs an API key.",
        "unauthorized",
        [
            FieldError(
                "header.Authorization",
                "Send Authorization: Bearer <key>, or ?access_token=<key> on the event stream.",
            )
        ],
        [(b"www-authenticate", b'Bearer realm="scout"')],
    )
