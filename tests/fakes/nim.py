"""A fake OpenAI-compatible NIM chat-completions server for the real `ChatNVIDIA` client.

A request whose system message mentions "planner" gets the configured plan as JSON, a
guardrail prompt (one that contains GUARD_MARKER) gets `guard_reply`, and any other
request gets the configured report. Both are returned as one chat.completion,
or as chat.completion.chunk server-sent events when the request sets `stream: true`.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

Role = Literal["planner", "writer", "guard"]
PAUSE_POLL_S = 0.02
GUARD_MARKER = "Scout guardrail check:"
"""The first words of every prompt of Scout's rails (graph/guardrails/config/prompts.yml)."""

DEFAULT_PLAN: dict[str, Any] = {
    "steps": [
        {
            "goal": "Find out how research agents resume interrupted jobs.",
            "queries": ["research agent checkpoint resume", "langgraph sqlite checkpointer"],
        },
        {
            "goal": "Find out how research reports cite their sources.",
            "queries": ["numbered citations in generated reports"],
        },
    ]
}

DEFAULT_REPORT = (
    "## Findings\n\n"
    "Scout resumes jobs from checkpoints [1]. "
    "Every claim in the report cites a numbered source [2].\n"
)


def allow_everything(prompt: str) -> str:
    """Reply "No" to a guardrail prompt: nothing is rejected or dropped."""
    return "No"


def split_into_tokens(text: str) -> list[str]:
    """Split text into word-sized chunks whose concatenation is the text again."""
    return re.findall(r"\s*\S+\s*", text) or [text]


@dataclass(frozen=True)
class NimRequest:
    """One chat-completions request as the fake received it."""

    body: dict[str, Any]
    """The parsed JSON body: model, messages, stream and sampling parameters."""
    role: Role
    """"planner" when a system message mentions the planner, "guard" for a guardrail
    prompt, otherwise "writer"."""
    headers: dict[str, str] = field(repr=False)
    """Request headers with lower-case names, Authorization included."""
    received_at: float = 0.0
    """`time.monotonic()` when the fake received the request."""

    @property
    def api_key(self) -> str | None:
        """Return the bearer token of the Authorization header, or None without one."""
        return bearer_token(self.headers)

    @property
    def text(self) -> str:
        """Return the text of every message, joined by newlines, to find a job's question in."""
        return "\n".join(
            str(message.get("content", ""))
            for message in self.body["messages"]
            if isinstance(message, dict)
        )


@dataclass
class StreamSpan:
    """The lifetime of one streamed reply, in `time.monotonic()` seconds."""

    request: NimRequest
    started_at: float
    ended_at: float | None = None
    """When the last event was sent or the client disconnected. None while the reply streams."""
    finished: bool = False
    """True once every event, `data: [DONE]` included, was sent."""


@dataclass
class FakeNim:
    """Behaviour knobs and records of a fake NIM, which tests set and read.

    Chat-completions requests are checked in this order: a missing or unexpected bearer
    token gets 401, then the rate limit may return 429, then `fail_status` applies to
    every request, then `writer_fail_status` to writer requests.
    """

    model_id: str = "test/model"
    """Model id listed by GET /v1/models."""
    expected_api_key: str | None = None
    """The only bearer token accepted, or None to accept any token."""
    plan: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEFAULT_PLAN))
    """Plan returned as JSON text to planner requests."""
    plan_reply_override: str | list[str] | None = None
    """Raw planner reply in place of the plan, such as invalid JSON.

    A string is returned to every planner request. A list is consumed one reply per
    planner request, after which the plan is returned again.
    """
    guard_reply: Callable[[str], str] = allow_everything
    """Reply to a guardrail prompt, computed from the prompt's text: "No" or "Yes: reason"."""
    report_tokens: list[str] = field(default_factory=lambda: split_into_tokens(DEFAULT_REPORT))
    """Content chunks of the writer's reply, streamed one per event."""
    token_delay_s: float = 0.0
    """Pause before each streamed content chunk, in seconds."""
    plan_delay_s: float = 0.0
    """Pause before responding to a planner request, in seconds.

    The pause rereads this value, so lowering it also shortens pauses already under way."""
    stall_after_tokens: int | None = None
    """Number of content chunks after which a streamed reply sends nothing more until the
    client disconnects, or None to stream the whole reply."""
    fail_status: int | None = None
    """HTTP status returned to every chat-completions request, such as 500 or 401."""
    writer_fail_status: int | None = None
    """HTTP status returned to writer requests only, so planning still succeeds."""
    rpm_limit: int | None = None
    """Maximum number of requests admitted in any `window_s` window, or None for no limit."""
    window_s: float = 60.0
    """Length of the rate-limit window in seconds, which tests shorten to keep runs fast."""

    requests: list[NimRequest] = field(default_factory=list)
    """Every chat-completions request with a valid JSON body, rejected ones included."""
    planner_calls: int = 0
    """Planner requests that got a 200 response."""
    writer_calls: int = 0
    """Writer requests that got a 200 response."""
    guard_calls: int = 0
    """Guardrail requests that got a 200 response."""
    throttled: int = 0
    """Requests rejected with 429 by the rate limit."""
    streams: list[StreamSpan] = field(default_factory=list)
    """Every streamed reply that started, in the order they started."""
    _served_at: deque[float] = field(default_factory=deque, init=False, repr=False)

    @property
    def report_text(self) -> str:
        """Return the whole writer reply, the report tokens joined."""
        return "".join(self.report_tokens)

    def next_plan_reply(self) -> str:
        """Return the text for the next planner request, consuming a queued override."""
        override = self.plan_reply_override
        if isinstance(override, str):
            return override
        if override:
            return override.pop(0)
        return json.dumps(self.plan)

    def admit(self, now: float) -> float | None:
        """Record a request at `now` if the rate limit allows it.

        Returns None when the request is admitted, otherwise the seconds until the oldest
        admitted request leaves the window. Rejected requests do not count toward the limit.
        """
        if self.rpm_limit is None:
            return None
        while self._served_at and self._served_at[0] <= now - self.window_s:
            self._served_at.popleft()
        if len(self._served_at) >= self.rpm_limit:
            return self._served_at[0] + self.window_s - now
        self._served_at.append(now)
        return None


def make_nim_app(state: FakeNim) -> Starlette:
    """Build the fake NIM app: POST /v1/chat/completions and GET /v1/models.

    Every request needs an `Authorization: Bearer ...` header, with `state.expected_api_key`
    as the token when that is set. Errors are problem-details JSON with "status", "title"
    and "detail", the fields from which ChatNVIDIA 1.5 builds an exception message that
    starts with "[STATUS] TITLE".
    """

    async def chat_completions(request: Request) -> Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _problem(400, "The request body is not valid JSON.")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _problem(400, "The request body must be a JSON object with a messages list.")

        role = _role_of(body["messages"])
        received = NimRequest(
            body=body, role=role, headers=dict(request.headers), received_at=time.monotonic()
        )
        state.requests.append(received)

        if (rejection := _check_api_key(request, state.expected_api_key)) is not None:
            return rejection
        retry_after_s = state.admit(time.monotonic())
        if retry_after_s is not None:
            state.throttled += 1
            return _problem(
                429,
                f"More than {state.rpm_limit} requests in {state.window_s} s.",
                headers={"Retry-After": _format_seconds(retry_after_s)},
            )
        if state.fail_status is not None:
            detail = f"The fake NIM fails every request (fail_status={state.fail_status})."
            return _problem(state.fail_status, detail)
        if role == "writer" and state.writer_fail_status is not None:
            detail = (
                "The fake NIM fails writer requests"
                f" (writer_fail_status={state.writer_fail_status})."
            )
            return _problem(state.writer_fail_status, detail)

        if role == "planner":
            await pause(lambda: state.plan_delay_s)
            state.planner_calls += 1
            pieces = [state.next_plan_reply()]
        elif role == "guard":
            state.guard_calls += 1
            pieces = [state.guard_reply(received.text)]
        else:
            state.writer_calls += 1
            pieces = list(state.report_tokens)

        completion_id = f"chatcmpl-fake-{len(state.requests)}"
        model = str(body.get("model") or state.model_id)
        usage = _usage(body["messages"], pieces)
        if not body.get("stream"):
            return JSONResponse(_completion(completion_id, model, "".join(pieces), usage))

        stream_options = body.get("stream_options") or {}
        span = StreamSpan(request=received, started_at=time.monotonic())
        state.streams.append(span)
        events = _stream_events(
            completion_id,
            model,
            pieces,
            delay_s=state.token_delay_s,
            usage=usage if stream_options.get("include_usage") else None,
            stall_after=state.stall_after_tokens,
        )
        return StreamingResponse(_timed(events, span), media_type="text/event-stream")

    async def list_models(request: Request) -> Response:
        if (rejection := _check_api_key(request, state.expected_api_key)) is not None:
            return rejection
        model = {
            "id": state.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "fake-nim",
            "root": state.model_id,
        }
        return JSONResponse({"object": "list", "data": [model]})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
        ]
    )


async def pause(delay_s: Callable[[], float]) -> None:
    """Sleep until `delay_s()` seconds have passed since the call.

    `delay_s` is called again every PAUSE_POLL_S, so a test can shorten a pause under way.
    """
    started = time.monotonic()
    while True:
        remaining = delay_s() - (time.monotonic() - started)
        if remaining <= 0:
            return
        await asyncio.sleep(min(remaining, PAUSE_POLL_S))


async def _timed(events: AsyncIterator[str], span: StreamSpan) -> AsyncIterator[str]:
    """Pass `events` through, recording in `span` when the reply ended and whether it finished.

    Starlette cancels the response when the client disconnects, which ends this generator
    too, so `span.ended_at` is set for an abandoned reply as well.
    """
    try:
        async for event in events:
            yield event
        span.finished = True
    finally:
        span.ended_at = time.monotonic()


def _role_of(messages: list[Any]) -> Role:
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "system":
            content = message.get("content")
            text = content if isinstance(content, str) else json.dumps(content)
            if "planner" in text.lower():
                return "planner"
    for message in messages:
        if isinstance(message, dict) and GUARD_MARKER in str(message.get("content", "")):
            return "guard"
    return "writer"


def _check_api_key(request: Request, expected: str | None) -> Response | None:
    token = bearer_token(request.headers)
    if token is None:
        return _problem(401, "The Authorization header with a bearer token is missing.")
    if expected is not None and token != expected:
        return _problem(401, "The bearer token is not the expected API key.")
    return None


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """Return the token of an `Authorization: Bearer TOKEN` header, or None without one."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _format_seconds(seconds: float) -> str:
    # RFC 9110 allows only whole seconds in Retry-After, but the fake scales time down and
    # sends fractions such as "0.5", so a client must not parse the value as an integer.
    return str(round(max(seconds, 0.001), 3))


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    content = {"type": "about:blank", "status": status, "title": title, "detail": detail}
    return JSONResponse(content, status_code=status, headers=headers)


def _usage(messages: list[Any], pieces: list[str]) -> dict[str, int]:
    # Word and chunk counts stand in for tokens; only the shape matters to clients.
    prompt_tokens = sum(
        len(str(message.get("content", "")).split())
        for message in messages
        if isinstance(message, dict)
    )
    completion_tokens = len(pieces)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _completion(
    completion_id: str, model: str, content: str, usage: dict[str, int]
) -> dict[str, Any]:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "logprobs": None,
        "finish_reason": "stop",
    }
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage,
    }


def _chunk(
    completion_id: str,
    model: str,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
) -> dict[str, Any]:
    choices = []
    if delta is not None:
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }


async def _stream_events(
    completion_id: str,
    model: str,
    pieces: list[str],
    delay_s: float,
    usage: dict[str, int] | None,
    stall_after: int | None = None,
) -> AsyncIterator[str]:
    """Yield the events of a streamed completion in the order OpenAI-compatible servers use.

    The first chunk carries only the assistant role, then one chunk per piece of content,
    then an empty delta with the finish reason, then the usage chunk when the request set
    `stream_options.include_usage`, and finally `data: [DONE]`. With `stall_after`, the
    reply stops after that many pieces and waits until the client disconnects.
    """
    yield _event(_chunk(completion_id, model, {"role": "assistant", "content": ""}))
    for sent, piece in enumerate(pieces):
        if stall_after is not None and sent >= stall_after:
            await asyncio.Event().wait()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        yield _event(_chunk(completion_id, model, {"content": piece}))
    yield _event(_chunk(completion_id, model, {}, finish_reason="stop"))
    if usage is not None:
        yield _event({**_chunk(completion_id, model, None), "usage": usage})
    yield "data: [DONE]\n\n"


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
