"""Bounded retries with exponential backoff, full jitter and `Retry-After`, for provider calls."""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx

logger = logging.getLogger(__name__)

T = TypeVar("T")
STATUS_PREFIX = re.compile(r"^\[(\d{3})\]")
MAX_RETRY_AFTER_S = 300.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry.

    At most `max_tries` attempts; waits grow from `base_s` and never exceed `max_s`.
    """

    max_tries: int = 6
    base_s: float = 1.0
    max_s: float = 60.0

    def backoff_s(self, attempt: int) -> float:
        """Return a full-jitter wait before retry number `attempt` (1 for the first retry)."""
        return random.uniform(0, min(self.max_s, self.base_s * 2 ** (attempt - 1)))


@dataclass(frozen=True, slots=True)
class Failure:
    """The verdict on a failed call: whether to retry it, and any wait the server requested."""

    transient: bool
    rate_limited: bool = False
    retry_after_s: float | None = None


def classify(exc: BaseException) -> Failure:
    """Sort an error from ChatNVIDIA, Tavily or httpx into retryable or final.

    ChatNVIDIA raises a plain Exception whose text starts with the HTTP status in
    brackets, such as `[429]`; Tavily raises httpx errors and its own exception types.
    """
    if isinstance(exc, TimeoutError | httpx.TimeoutException | httpx.TransportError):
        return Failure(transient=True)
    if isinstance(exc, httpx.HTTPStatusError):
        return _by_status(exc.response.status_code, exc.response.headers.get("retry-after"))
    if type(exc).__name__ == "UsageLimitExceededError":  # Tavily's 429
        return Failure(transient=True, rate_limited=True)
    if type(exc).__module__.startswith("aiohttp"):
        return Failure(transient=True)
    status = STATUS_PREFIX.match(str(exc))
    if status:
        return _by_status(int(status.group(1)), getattr(exc, "retry_after", None))
    return Failure(transient=False)


def _by_status(status: int, retry_after: str | float | None) -> Failure:
    wait = parse_retry_after(retry_after)
    if status == 429:
        return Failure(transient=True, rate_limited=True, retry_after_s=wait)
    if status in (408, 409) or status >= 500:
        return Failure(transient=True, retry_after_s=wait)
    return Failure(transient=False)


def parse_retry_after(value: str | float | None) -> float | None:
    """Read a `Retry-After` value in seconds; HTTP dates and nonsense give None."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


async def retrying(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    call_name: str,
    retry_after: Callable[[BaseException], float | None] | None = None,
) -> T:
    """Run `call` until it succeeds, fails for good, or uses up `policy.max_tries`.

    `retry_after` may extract the server's requested wait from an error that does not
    carry it in its type. The last error is re-raised.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except Exception as exc:
            failure = classify(exc)
            if not failure.transient or attempt >= policy.max_tries:
                if failure.transient:
                    logger.warning("%s failed after %d tries: %s", call_name, attempt, exc)
                raise
            wait = failure.retry_after_s
            if wait is None and retry_after is not None:
                wait = retry_after(exc)
            if wait is None:
                wait = policy.backoff_s(attempt)
            logger.info(
                "%s failed (%s); retry %d of %d in %.2f s",
                call_name,
                "rate limited" if failure.rate_limited else _short(exc),
                attempt,
                policy.max_tries - 1,
                wait,
            )
            await asyncio.sleep(wait)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
