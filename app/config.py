"""Settings from environment variables, read once at startup."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS_DIR = PROJECT_DIR / "docs"
DEFAULT_MODEL = "meta/llama-3.3-70b-instruct"


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the variable and the fix."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Every tunable of the service, with the environment variable that sets it."""

    data_dir: Path
    host: str
    port: int
    llm: Literal["nvidia", "offline"]
    search: Literal["tavily", "local"]
    nvidia_api_key: str | None
    nvidia_base_url: str | None
    model: str
    tavily_api_key: str | None
    tavily_base_url: str | None
    corpus_dir: Path
    max_concurrent_jobs: int
    max_question_chars: int
    max_body_bytes: int
    sse_ping_s: float
    sse_window: int
    event_poll_s: float
    call_timeout_s: float
    job_timeout_s: float
    shutdown_grace_s: float
    lease_ttl_s: float
    llm_rpm: float
    llm_max_tries: int
    search_max_tries: int
    retry_base_s: float
    offline_report_tokens: int | None
    offline_token_delay_s: float
    log_level: str
    api_keys: tuple[str, ...] = ()
    max_header_bytes: int = 16_384
    submit_rate_per_min: int = 60
    max_unfinished_per_key: int = 50
    guardrails: bool = True
    """Whether the input, source and output rails run (SCOUT_GUARDRAILS=on|off)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings; a forced real provider without its key raises ConfigError."""
        env = os.environ if env is None else env
        reader = _Reader(env)

        nvidia_key = reader.secret("NVIDIA_API_KEY")
        tavily_key = reader.secret("TAVILY_API_KEY")
        llm = reader.choice(
            "SCOUT_LLM", ("nvidia", "offline"), "nvidia" if nvidia_key else "offline"
        )
        search = reader.choice(
            "SCOUT_SEARCH", ("tavily", "local"), "tavily" if tavily_key else "local"
        )
        if llm == "nvidia" and not nvidia_key:
            raise ConfigError(
                "SCOUT_LLM=nvidia needs NVIDIA_API_KEY; set it or use SCOUT_LLM=offline."
            )
        if search == "tavily" and not tavily_key:
            raise ConfigError(
                "SCOUT_SEARCH=tavily needs TAVILY_API_KEY; set it or use SCOUT_SEARCH=local."
            )

        return cls(
            data_dir=Path(env.get("SCOUT_DATA_DIR") or "data"),
            host=env.get("SCOUT_HOST") or "127.0.0.1",
            port=reader.integer("SCOUT_PORT", 8000, 0, 65535),
            llm=llm,  # type: ignore[arg-type]
            search=search,  # type: ignore[arg-type]
            nvidia_api_key=nvidia_key,
            nvidia_base_url=env.get("NVIDIA_BASE_URL") or None,
            model=env.get("SCOUT_MODEL") or DEFAULT_MODEL,
            tavily_api_key=tavily_key,
            tavily_base_url=env.get("TAVILY_BASE_URL") or None,
            corpus_dir=Path(env.get("SCOUT_CORPUS_DIR") or DEFAULT_CORPUS_DIR),
            max_concurrent_jobs=reader.integer("SCOUT_MAX_CONCURRENT_JOBS", 4, 1, 1000),
            max_question_chars=reader.integer("SCOUT_MAX_QUESTION_CHARS", 4000, 10, 100_000),
            max_body_bytes=reader.integer("SCOUT_MAX_BODY_BYTES", 65_536, 1024, 10_000_000),
            sse_ping_s=reader.number("SCOUT_SSE_PING_S", 15.0, 0.05, 3600.0),
            sse_window=reader.integer("SCOUT_SSE_WINDOW", 4096, 16, 1_000_000),
            event_poll_s=reader.number("SCOUT_EVENT_POLL_S", 0.25, 0.01, 60.0),
            call_timeout_s=reader.number("SCOUT_CALL_TIMEOUT_S", 120.0, 0.1, 3600.0),
            job_timeout_s=reader.number("SCOUT_JOB_TIMEOUT_S", 1800.0, 0.1, 86_400.0),
            shutdown_grace_s=reader.number("SCOUT_SHUTDOWN_GRACE_S", 10.0, 0.0, 3600.0),
            lease_ttl_s=reader.number("SCOUT_LEASE_TTL_S", 15.0, 0.2, 3600.0),
            llm_rpm=reader.number("SCOUT_LLM_RPM", 40.0, 0.1, 1_000_000.0),
            llm_max_tries=reader.integer("SCOUT_LLM_MAX_TRIES", 6, 1, 100),
            search_max_tries=reader.integer("SCOUT_SEARCH_MAX_TRIES", 3, 1, 100),
            retry_base_s=reader.number("SCOUT_RETRY_BASE_S", 1.0, 0.001, 600.0),
            offline_report_tokens=reader.optional_integer(
                "SCOUT_OFFLINE_REPORT_TOKENS", 1, 10_000_000
            ),
            offline_token_delay_s=reader.number("SCOUT_OFFLINE_TOKEN_DELAY_MS", 0.0, 0.0, 10_000.0)
            / 1000,
            log_level=(env.get("SCOUT_LOG_LEVEL") or "INFO").upper(),
            api_keys=reader.api_keys(),
            max_header_bytes=reader.integer("SCOUT_MAX_HEADER_BYTES", 16_384, 1024, 1_048_576),
            submit_rate_per_min=reader.integer("SCOUT_SUBMIT_RATE_PER_MIN", 60, 1, 1_000_000),
            max_unfinished_per_key=reader.integer("SCOUT_MAX_UNFINISHED_PER_KEY", 50, 1, 1_000_000),
            guardrails=reader.choice("SCOUT_GUARDRAILS", ("on", "off"), "on") == "on",
        )


class _Reader:
    """Parses variables and raises ConfigError naming the variable and the accepted values."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def secret(self, name: str) -> str | None:
        return (self.env.get(name) or "").strip() or None

    def api_keys(self) -> tuple[str, ...]:
        """Read SCOUT_API_KEYS (comma-separated) and SCOUT_API_KEYS_FILE (one key per line)."""
        keys = [key.strip() for key in (self.env.get("SCOUT_API_KEYS") or "").split(",")]
        path = (self.env.get("SCOUT_API_KEYS_FILE") or "").strip()
        if path:
            try:
                lines = Path(path).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigError(
                    f"SCOUT_API_KEYS_FILE={path!r} cannot be read: {exc.strerror}."
                ) from None
            keys += [line.strip() for line in lines if not line.lstrip().startswith("#")]
        keys = [key for key in keys if key]
        for key in keys:
            if len(key) < 16 or not key.isprintable() or not key.isascii() or " " in key:
                raise ConfigError(
                    "An API key in SCOUT_API_KEYS or SCOUT_API_KEYS_FILE is invalid; use at least "
                    "16 printable ASCII characters without spaces."
                )
        return tuple(dict.fromkeys(keys))

    def choice(self, name: str, allowed: tuple[str, ...], default: str) -> str:
        value = (self.env.get(name) or default).strip().lower()
        if value not in allowed:
            raise ConfigError(f"{name}={value!r} is invalid; use one of {', '.join(allowed)}.")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.optional_integer(name, low, high)
        return default if value is None else value

    def optional_integer(self, name: str, low: int, high: int) -> int | None:
        raw = (self.env.get(name) or "").strip()
        if not raw:
            return None
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer.") from None
        if not low <= value <= high:
            raise ConfigError(f"{name}={value} is out of range; use {low} to {high}.")
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        raw = (self.env.get(name) or "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number.") from None
        if not low <= value <= high:
            raise ConfigError(f"{name}={value} is out of range; use {low} to {high}.")
        return value
