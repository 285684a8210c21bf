"""A fake Tavily search API (POST /search) for the real `AsyncTavilyClient`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.nim import bearer_token, pause

TAVILY_DEFAULT_MAX_RESULTS = 5


@dataclass(frozen=True)
class SearchRequest:
    """One search request as the fake received it."""

    query: str
    max_results: int | None
    """The requested maximum, or None when the client left it to the server's default."""
    body: dict[str, Any]
    """The parsed JSON body, including any search options the client sent."""
    api_key: str | None = field(repr=False)
    """Bearer token of the Authorization header, or None without one."""


@dataclass
class FakeTavily:
    """Behaviour knobs and records of a fake Tavily API, which tests set and read.

    A request without a bearer token, or with one other than `expected_api_key` when that
    is set, gets 401. Then the `delay_s` pause runs, then `fail_status` applies to every
    request, then `fail_queries` and `flaky_queries` to matching queries.
    """

    expected_api_key: str | None = None
    """The only bearer token accepted, or None to accept any token."""
    results_by_query: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Results for queries that contain a key, compared case-insensitively.

    The first matching key wins. Missing "score" and "raw_content" fields are filled in."""
    default_result_count: int = 3
    """Number of generated results for a query that matches no key of `results_by_query`."""
    fail_queries: set[str] = field(default_factory=set)
    """Query substrings, compared case-insensitively, that get HTTP 500."""
    flaky_queries: dict[str, int] = field(default_factory=dict)
    """Query substrings, compared case-insensitively, mapped to how many more matching
    requests get HTTP 500 before the query succeeds."""
    fail_status: int | None = None
    """HTTP status returned to every search request, such as 500, 429 or 401."""
    delay_s: float = 0.0
    """Pause before responding to each authorized search request, in seconds.

    The pause rereads this value, so lowering it also shortens pauses already under way."""

    requests: list[SearchRequest] = field(default_factory=list)
    """Every search request with a valid JSON body, failed ones included."""

    def take_flaky_failure(self, query: str) -> str | None:
        """Use up one failure of the first `flaky_queries` key in `query` and return that key."""
        lowered = query.lower()
        for key, remaining in self.flaky_queries.items():
            if remaining > 0 and key.lower() in lowered:
                self.flaky_queries[key] = remaining - 1
                return key
        return None

    def results_for(self, query: str) -> list[dict[str, Any]]:
        """Return the configured or generated results for `query`, before `max_results`."""
        lowered = query.lower()
        for key, results in self.results_by_query.items():
            if key.lower() in lowered:
                return [_with_defaults(result, rank) for rank, result in enumerate(results, 1)]
        return [generate_result(query, rank) for rank in range(1, self.default_result_count + 1)]


def generate_result(query: str, rank: int) -> dict[str, Any]:
    """Build a deterministic search result for `query`.

    The URL depends on the query, as in `https://example.test/<slug>/<rank>`, and the
    content repeats the query in full sentences.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", query.lower()).strip("-") or "query"
    return {
        "title": f"{query} (source {rank})",
        "url": f"https://example.test/{slug}/{rank}",
        "content": (
            f"This page explains {query}. "
            f"Source {rank} reports measured results about {query} and how to apply them."
        ),
        "score": round(0.9 - 0.1 * (rank - 1), 2),
        "raw_content": None,
    }


def make_tavily_app(state: FakeTavily) -> Starlette:
    """Build the fake Tavily app with POST /search.

    Error bodies are `{"detail": {"error": MESSAGE}}`, the shape from which tavily-python
    0.8.5 reads the message. Its `AsyncTavilyClient` raises InvalidAPIKeyError for 401,
    UsageLimitExceededError for 429 and httpx.HTTPStatusError for 500.
    """

    async def search(request: Request) -> Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "The request body is not valid JSON.")
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return _error(400, "The request body must be a JSON object with a query string.")

        query = body["query"]
        max_results = body.get("max_results")
        api_key = bearer_token(request.headers)
        state.requests.append(
            SearchRequest(query=query, max_results=max_results, body=body, api_key=api_key)
        )

        if api_key is None or state.expected_api_key not in (None, api_key):
            return _error(401, "Unauthorized: missing or invalid API key.")
        await pause(lambda: state.delay_s)
        if state.fail_status is not None:
            detail = f"The fake Tavily API fails every request (fail_status={state.fail_status})."
            return _error(state.fail_status, detail)
        if any(failing.lower() in query.lower() for failing in state.fail_queries):
            return _error(
                500,
                f"The fake Tavily API fails the query {query!r} because it matches fail_queries.",
            )
        if (flaky := state.take_flaky_failure(query)) is not None:
            return _error(
                500,
                f"The fake Tavily API fails the query {query!r} once more for {flaky!r}.",
            )

        limit = TAVILY_DEFAULT_MAX_RESULTS if max_results is None else max(int(max_results), 0)
        return JSONResponse(
            {
                "query": query,
                "follow_up_questions": None,
                "answer": None,
                "images": [],
                "results": state.results_for(query)[:limit],
                "response_time": 0.01,
            }
        )

    return Starlette(routes=[Route("/search", search, methods=["POST"])])


def _with_defaults(result: dict[str, Any], rank: int) -> dict[str, Any]:
    return {"score": round(0.9 - 0.1 * (rank - 1), 2), "raw_content": None, **result}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": {"error": message}}, status_code=status)
