"""Logging configuration for the service and the CLI, done once at startup."""

from __future__ import annotations

import logging
import re

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_LOGGER = "uvicorn.access"
# An `access_token` query parameter and its value, up to the next parameter or the end of
# the URL. uvicorn's access log line quotes the URL, and a space ends it.
ACCESS_TOKEN_PARAM = re.compile(r"(?i)(\baccess_token=)[^&#\s\"]*")
REDACTED = "[redacted]"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format=FORMAT)
    # Per-request HTTP client lines would log every model and search call twice.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
    redact_access_tokens()


class AccessTokenRedactor(logging.Filter):
    """Replaces the value of every `access_token=` query parameter in a record with [redacted].

    The event stream accepts an API key as `?access_token=`, and uvicorn's access log
    writes each request's path with its query string.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                name: redact(value) if isinstance(value, str) else value
                for name, value in record.args.items()
            }
        return True


def redact(text: str) -> str:
    """Return `text` with each `access_token=` query value replaced by [redacted]."""
    return ACCESS_TOKEN_PARAM.sub(r"\1" + REDACTED, text)


def redact_access_tokens() -> None:
    """Add the AccessTokenRedactor to uvicorn's access logger, once per process.

    A logger's filters run only for records logged through that logger itself, which is
    how uvicorn writes its access lines (checked with uvicorn 0.55).
    """
    access_logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, AccessTokenRedactor) for f in access_logger.filters):
        access_logger.addFilter(AccessTokenRedactor())
