"""Settings from the environment: provider choice, required keys and invalid values."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from app.config import ConfigError, Settings
from tests.conftest import CORPUS_DIR
from tests.helpers import run_command

SERVE_TIMEOUT_S = 30.0
KEYS = {"NVIDIA_API_KEY": "nvapi-test", "TAVILY_API_KEY": "tvly-test"}


def test_nvidia_without_key_names_key():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"SCOUT_LLM": "nvidia"})

    assert "NVIDIA_API_KEY" in str(caught.value)


def test_tavily_without_key_names_key():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"SCOUT_SEARCH": "tavily"})

    assert "TAVILY_API_KEY" in str(caught.value)


def test_blank_key_counts_as_missing():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"SCOUT_LLM": "nvidia", "NVIDIA_API_KEY": "   "})

    assert "NVIDIA_API_KEY" in str(caught.value)


def test_keys_present_choose_real_providers():
    settings = Settings.from_env(KEYS)

    assert settings.llm == "nvidia"
    assert settings.search == "tavily"
    assert settings.nvidia_api_key == KEYS["NVIDIA_API_KEY"]
    assert settings.tavily_api_key == KEYS["TAVILY_API_KEY"]


def test_no_keys_choose_offline_providers():
    settings = Settings.from_env({})

    assert settings.llm == "offline"
    assert settings.search == "local"


def test_explicit_offline_overrides_keys():
    settings = Settings.from_env({**KEYS, "SCOUT_LLM": "offline", "SCOUT_SEARCH": "local"})

    assert settings.llm == "offline"
    assert settings.search == "local"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("SCOUT_LLM", "gpt", id="llm-unknown"),
        pytest.param("SCOUT_SEARCH", "google", id="search-unknown"),
        pytest.param("SCOUT_MAX_CONCURRENT_JOBS", "zero", id="concurrency-word"),
        pytest.param("SCOUT_MAX_CONCURRENT_JOBS", "0", id="concurrency-zero"),
        pytest.param("SCOUT_MAX_BODY_BYTES", "10", id="body-limit-too-small"),
        pytest.param("SCOUT_PORT", "70000", id="port-out-of-range"),
        pytest.param("SCOUT_SSE_PING_S", "soon", id="ping-not-number"),
        pytest.param("SCOUT_OFFLINE_REPORT_TOKENS", "0", id="report-tokens-zero"),
    ],
)
def test_invalid_value_names_variable(name, value):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})

    assert name in str(caught.value)
    assert value in str(caught.value)


async def test_serve_without_key_exits_nonzero(tmp_path: Path):
    uv = shutil.which("uv")
    assert uv is not None, "the uv command is needed to run `uv run scout serve`"
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"NVIDIA_API_KEY", "TAVILY_API_KEY"} and not name.startswith("SCOUT_")
    }
    env.update(
        SCOUT_LLM="nvidia",
        SCOUT_DATA_DIR=str(tmp_path / "data"),
        SCOUT_CORPUS_DIR=str(CORPUS_DIR),
        SCOUT_HOST="127.0.0.1",
        SCOUT_PORT="0",
    )

    code, _, stderr = await run_command(
        uv, "run", "--no-sync", "scout", "serve", timeout_s=SERVE_TIMEOUT_S, env=env
    )

    assert code != 0
    assert "NVIDIA_API_KEY" in stderr
