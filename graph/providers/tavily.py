"""Web search through Tavily's API client."""

from __future__ import annotations

from tavily import AsyncTavilyClient

from graph.providers.base import SearchHit


class TavilySearch:
    """Tavily web search.

    The key must be non-empty, because the client switches to keyless mode without one.
    """

    name = "tavily"

    def __init__(self, api_key: str, base_url: str | None = None) -> None:
        if not api_key:
            raise ValueError("TavilySearch needs a non-empty API key")
        self.client = AsyncTavilyClient(api_key=api_key, api_base_url=base_url)

    async def search(self, query: str, max_results: int) -> list[SearchHit]:
        response = await self.client.search(query, max_results=max_results)
        return [
            SearchHit(url=hit["url"], title=hit.get("title") or hit["url"], content=hit["content"])
            for hit in response.get("results", [])
            if hit.get("url") and hit.get("content")
        ]
