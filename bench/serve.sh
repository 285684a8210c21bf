#!/usr/bin/env bash
# Start Scout for the benchmark harness: the offline writer emits exactly
# BENCH_N_TOKENS report tokens, which is what the harness counts.
set -euo pipefail
export SCOUT_OFFLINE_REPORT_TOKENS="${BENCH_N_TOKENS:-300}"
export SCOUT_LOG_LEVEL="${SCOUT_LOG_LEVEL:-WARNING}"
exec uv run --project "$(dirname "$0")/.." --frozen scout serve "$@"
