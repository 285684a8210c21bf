# Scout as a container image: a builder stage installs the dependencies that uv.lock pins,
# and a runtime stage on the same base receives only the virtual environment and the code.
#
#   docker build -t scout .
#   docker run --rm -p 127.0.0.1:8000:8000 --env-file .env -v scout-data:/data scout

# Both stages use this exact tag, so the interpreter that built the virtual environment
# is the one that runs it.
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
        "uv==${UV_VERSION}"

# UV_PYTHON pins the base image's interpreter: the repository's .python-version is not
# copied, and uv must not download another Python. UV_SYSTEM_CERTS makes uv trust the
# system CA store (Debian's ca-certificates), as pip does, so a build behind a
# TLS-inspecting proxy works once the proxy's CA is in that store.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_SYSTEM_CERTS=1

WORKDIR /app

# The dependencies first, from the lock file alone: this layer is reused until
# pyproject.toml or uv.lock changes.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project --no-cache

# Then the project itself. It is installed editable on purpose: app/config.py finds
# docs/ and static/ next to app/, so the code must stay in /app, not in site-packages.
COPY README.md ./
COPY app ./app
COPY graph ./graph
RUN uv sync --frozen --no-dev --no-cache


FROM ${PYTHON_IMAGE} AS runtime

ARG APP_UID=10001
ARG APP_GID=10001
RUN groupadd --system --gid "${APP_GID}" scout \
    && useradd --system --uid "${APP_UID}" --gid scout --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin scout \
    && mkdir /data \
    && chown scout:scout /data

# SCOUT_HOST binds every interface inside the container on purpose: the published port
# decides who can reach it (compose.yaml publishes it on 127.0.0.1 only).
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SCOUT_DATA_DIR=/data \
    SCOUT_HOST=0.0.0.0 \
    SCOUT_PORT=8000

WORKDIR /app
COPY --from=builder /app/.venv /app/.venv
COPY app ./app
COPY graph ./graph
COPY static ./static
COPY docs ./docs

VOLUME ["/data"]
# Numeric, so that a runtime can check the user is not root without reading /etc/passwd.
USER ${APP_UID}:${APP_GID}
EXPOSE 8000

# GET /health never calls a model, so probing it is cheap. It follows SCOUT_PORT when
# the port is overridden at run time.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SCOUT_PORT', '8000') + '/health', timeout=4)"]

# The CLI applies Settings from the environment: host, port, providers, data directory.
CMD ["scout", "serve"]
