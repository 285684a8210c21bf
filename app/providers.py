"""Chooses the model and search providers from settings."""

from __future__ import annotations

import functools
import logging

from langchain_core.language_models import BaseChatModel

from app.config import ConfigError, Settings
from graph.guardrails import Guardrails
from graph.providers.base import ResearchModel, SearchProvider
from graph.providers.corpus import LocalCorpus
from graph.providers.offline import OfflineModel
from graph.providers.offline_guard import OfflineGuardModel
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


def make_guardrails(model: ResearchModel, settings: Settings) -> Guardrails | None:
    """Return the rails run with the job's model, or None when SCOUT_GUARDRAILS=off.

    The offline model gets the offline guard model, shared by every service of the
    process so its rails are built once. A model with a LangChain chat model in `chat`,
    such as NvidiaModel, runs the rails with that chat model, its pacer and its retries.
    """
    if not settings.guardrails:
        return None
    if model.offline:
        return offline_guardrails()

    chat = getattr(model, "chat", None)
    if not isinstance(chat, BaseChatModel):
        raise ConfigError(
            f"The guardrails need a LangChain chat model, and the model {model.name!r} has none; "
            "set SCOUT_GUARDRAILS=off to run without them."
        )
    return Guardrails(
        chat,
        policy=getattr(model, "policy", None),
        call_timeout_s=getattr(model, "call_timeout_s", settings.call_timeout_s),
        # NvidiaModel reads Retry-After from its client's last response.
        retry_after=getattr(model, "_retry_after", None),
    )


@functools.cache
def offline_guardrails() -> Guardrails:
    """Return the process's one set of rails run by the offline guard model."""
    return Guardrails(OfflineGuardModel())


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
