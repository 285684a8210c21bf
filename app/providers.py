"""Chooses the model and search providers from settings."""

from __future__ import annotations

import logging

from app.config import Settings
from graph.providers.base import ResearchModel, SearchProvider
from graph.providers.corpus import LocalCorpus
from graph.providers.offline import OfflineModel
from graph.providers.retry import RetryPolicy

logger = logging.getLogger(__name__)


def make_model(settings: Settings) -> ResearchModel:
    """Return ChatNVIDIA-backed planning and writing, or the offline model."""
    if settings.llm == "offline":
        return OfflineModel(settings.offline_report_tokens, settings.offline_token_delay_s)

    # Imported here: the NVIDIA client is only loaded when it is used.
    from graph.providers.nvidia import NvidiaModel

    assert settings.nvidia_api_key is not None
    return NvidiaModel.from_settings(
        api_key=settings.nvidia_api_key,
        model=settings.model,
        base_url=settings.nvidia_base_url,
        timeout_s=settings.call_timeout_s,
        requests_per_minute=settings.llm_rpm,
        policy=RetryPolicy(max_tries=settings.llm_max_tries, base_s=settings.retry_base_s),
    )


def search_policy(settings: Settings) -> RetryPolicy:
    """Return the retry policy of search calls: fewer tries than model calls, same pace."""
    return RetryPolicy(max_tries=settings.search_max_tries, base_s=settings.retry_base_s / 2)


def make_search(settings: Settings) -> SearchProvider:
    """Return Tavily search, or the local corpus index."""
    if settings.search == "local":
        return LocalCorpus(settings.corpus_dir, settings.data_dir / "corpus.db")

    from graph.providers.tavily import TavilySearch

    assert settings.tavily_api_key is not None
    return TavilySearch(settings.tavily_api_key, settings.tavily_base_url)


def describe(model: ResearchModel, search: SearchProvider, settings: Settings) -> str:
    """Describe the providers for the startup log, without any key."""
    model_part = "offline" if model.offline else f"nvidia model={model.name}"
    if settings.nvidia_base_url and not model.offline:
        model_part += f" base_url={settings.nvidia_base_url}"
    search_part = f"local corpus={settings.corpus_dir}" if search.name == "local" else "tavily"
    return f"model: {model_part}; search: {search_part}"
