"""RFC 9457 problem responses, and reading request bodies into validated models."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope, Send

from app.errors import FieldError, InvalidRequest, PayloadTooLarge, ScoutError, UnsupportedMediaType

logger = logging.getLogger(__name__)

PROBLEM_TYPE_BASE = "urn:scout:problem:"
ModelT = TypeVar("ModelT", bound=BaseModel)


def problem_response(
    status: int,
    title: str,
    detail: str,
    type_suffix: str,
    instance: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = {
        "type": PROBLEM_TYPE_BASE + type_suffix,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        "errors": [{"field": e.field, "message": e.message} for e in errors or []],
    }
    return Response(
        orjson.dumps(body), status, headers=headers, media_type="application/problem+json"
    )


async def send_problem(
    scope: Scope,
    send: Send,
    status: int,
    title: str,
    detail: str,
    type_suffix: str,
    errors: list[FieldError],
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send a problem response from pure ASGI middleware, which runs outside the routes."""
    body = orjson.dumps(
        {
            "type": PROBLEM_TYPE_BASE + type_suffix,
            "title": title,
            "status": status,
            "detail": detail,
            "instance": scope["path"],
            "errors": [{"field": e.field, "message": e.message} for e in errors],
        }
    )
    raw_headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def scout_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ScoutError)
    logger.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.detail)
    retry_after = getattr(exc, "retry_after_s", None)
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
    return problem_response(
        exc.status, exc.title, exc.detail, exc.type_suffix, request.url.path, exc.errors, headers
    )


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if exc.status_code != 404 else f"No route matches {request.url.path!r}."
    return problem_response(
        exc.status_code,
        _reason(exc.status_code),
        detail,
        f"http-{exc.status_code}",
        request.url.path,
        headers=exc.headers,
    )


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return problem_response(
        500,
        "Internal error",
        "The server failed to handle this request; its log has the details.",
        "internal",
        request.url.path,
    )


async def read_json_model(request: Request, model: type[ModelT], max_bytes: int) -> ModelT:
    """Read a JSON body of at most `max_bytes` bytes and validate it against `model`."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(
            f"The body must be JSON, but Content-Type is {media_type or 'missing'!r}.",
            [FieldError("header.Content-Type", "Send Content-Type: application/json.")],
        )

    body = await _read_body(request, max_bytes)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"The body is not valid JSON: {exc}.",
            [FieldError("body", "Send one JSON object encoded as UTF-8.")],
        ) from None

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            FieldError(_location(error["loc"]), _explain(error))
            for error in exc.errors(include_url=False)
        ]
        first = errors[0]
        detail = f"Invalid {first.field}: {first.message.rstrip('.')}."
        raise InvalidRequest(detail, errors) from None


async def _read_body(request: Request, max_bytes: int) -> bytes:
    too_large = PayloadTooLarge(
        f"The body is larger than the limit of {max_bytes} bytes.",
        [FieldError("body", f"Send at most {max_bytes} bytes.")],
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large

    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


# Pydantic's messages name its own types, so these messages name what to send instead.
FIXES = {
    "missing": "This field is required; add it.",
    "extra_forbidden": "This field is not part of the request; remove it or check its spelling.",
    "string_type": "Send a JSON string.",
    "bool_type": "Send true or false.",
    "bool_parsing": "Send true or false.",
    "model_type": "Send a JSON object.",
    "model_attributes_type": "Send a JSON object.",
    "dict_type": "Send a JSON object.",
    "list_type": "Send a JSON array.",
    "string_too_short": "Send at least one character that is not a space.",
}


def _explain(error: Any) -> str:
    """Return the message of one validation error, naming what to send."""
    kind = error["type"]
    context = error.get("ctx") or {}
    if kind == "too_short":
        return f"Send at least {context.get('min_length', 1)} item(s)."
    if kind == "too_long":
        return f"Send at most {context.get('max_length')} item(s)."
    if kind == "string_too_long":
        return f"Send at most {context.get('max_length')} characters."
    if kind in FIXES:
        return FIXES[kind]
    if kind == "value_error" and "error" in context:
        text = str(context["error"])
        return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")
    return str(error["msg"])


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(["body", *(str(part) for part in loc)])


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
