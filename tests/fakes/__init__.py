"""Fake NIM and Tavily servers for tests, served by uvicorn on 127.0.0.1.

The real `ChatNVIDIA` and `AsyncTavilyClient` talk to these fakes over HTTP, so tests
exercise the clients' request building, streaming and error handling without a network.
"""

from tests.fakes.nim import FakeNim, NimRequest, StreamSpan, make_nim_app
from tests.fakes.server import serve_app
from tests.fakes.tavily import FakeTavily, SearchRequest, make_tavily_app

__all__ = [
    "FakeNim",
    "FakeTavily",
    "NimRequest",
    "SearchRequest",
    "StreamSpan",
    "make_nim_app",
    "make_tavily_app",
    "serve_app",
]
