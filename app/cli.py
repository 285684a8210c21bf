"""The `scout` command: run the service, or run one research job against a server."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys

from app.config import ConfigError, Settings
from app.logs import configure_logging

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.handler(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scout", description="Scout: research jobs with a human approval step."
    )
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="address to bind (default SCOUT_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default SCOUT_PORT or 8000)")
    serve.set_defaults(handler=_serve)

    research = commands.add_parser(
        "research", help="submit a question to a running server and wait for the report"
    )
    research.add_argument("question", help="the research question")
    research.add_argument(
        "--base-url", default="http://127.0.0.1:8000", help="the server's URL (default %(default)s)"
    )
    research.add_argument(
        "--approve", action="store_true", help="approve the drafted plan without asking"
    )
    research.add_argument("--follow", action="store_true", help="print events live as they arrive")
    research.add_argument("--idempotency-key", help="send this Idempotency-Key with the submission")
    add_api_key_argument(research)
    research.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the job (default %(default)s)",
    )
    research.set_defaults(handler=_research)

    from app.loadtest import add_arguments

    loadtest = commands.add_parser(
        "loadtest", help="run many jobs against a server and report latency and throughput"
    )
    add_arguments(loadtest)
    add_api_key_argument(loadtest)
    loadtest.set_defaults(handler=_loadtest)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from app.main import create_app
    from app.server import make_server

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"scout: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)

    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    warn_if_unprotected(host, settings)
    server = make_server(create_app(settings), host, port, settings.log_level)
    server.run()
    return 0


def warn_if_unprotected(host: str, settings: Settings) -> bool:
    """Log a warning if `host` is not a loopback address and no API keys are set.

    Return whether it warned.
    """
    if settings.api_keys or is_loopback(host):
        return False
    logger.warning(
        "binding %s with no API keys: anyone who can reach this address can submit and "
        "read jobs; set SCOUT_API_KEYS or bind 127.0.0.1",
        host,
    )
    return True


def is_loopback(host: str) -> bool:
    """Return whether `host` is `localhost` or a loopback IP address such as 127.0.0.1 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def add_api_key_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-key",
        default=os.environ.get("SCOUT_API_KEY") or None,
        help="API key for a server with SCOUT_API_KEYS set (default: the SCOUT_API_KEY variable)",
    )


def auth_headers(api_key: str | None) -> dict[str, str]:
    """Return the Authorization header for `api_key`, or no header without one."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _loadtest(args: argparse.Namespace) -> int:
    from app.loadtest import main as run_loadtest

    if args.jobs < 1 or args.concurrency < 1:
        print("scout: --jobs and --concurrency must be at least 1", file=sys.stderr)
        return 2
    return run_loadtest(args)


def _research(args: argparse.Namespace) -> int:
    from app.client import run_research

    return asyncio.run(run_research(args))
