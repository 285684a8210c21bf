"""The container image, built from the Dockerfile with buildah, inspected and run.

No Docker engine is needed. scripts/container-smoke.sh builds a local stand-in for the
pinned base image, which cannot be pulled on a machine that reaches only package
registries, then runs `buildah bud` on a copy of
the repository that has a fake `.env` and data directory planted in it. The tests read
the image's metadata and file system, and run its command and health check with
`buildah run --isolation chroot`, which shares the host's network: the server is bound to
127.0.0.1 on a free port through SCOUT_HOST and SCOUT_PORT.

The first build takes a few minutes (debootstrap and the dependencies); later builds reuse
the cached stand-in base and buildah's layer cache. Needs root; skips when buildah or
debootstrap is missing and cannot be installed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "container-smoke.sh"
IMAGE = "scout:test"
APP_UID = 10001

# The first build runs debootstrap and downloads every dependency; later builds take
# well under a minute. These limits are generous ceilings, not estimates.
BUILD_TIMEOUT_S = 1800
COMMAND_TIMEOUT_S = 120
SERVER_START_TIMEOUT_S = 90
JOB_TIMEOUT_S = 120
# compose.yaml's stop_grace_period: the server must stop on SIGTERM before Compose
# would send SIGKILL.
STOP_TIMEOUT_S = 15

# An NVIDIA or Tavily key, not the bare prefixes that library code mentions.
KEY_PATTERN = re.compile(rb"(?:nvapi|tvly)-[A-Za-z0-9_-]{20,}")
# gcc, cc, g++, c++ and clang, also with a target prefix or a version suffix (gcc-12).
COMPILER_NAME = re.compile(r"(?:[\w.-]+-)?(?:gcc|g\+\+|cc|c\+\+|clang)(?:-[\d.]+)?")

pytestmark = pytest.mark.container


def _run(args: list[str], timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )


def _check(args: list[str], timeout: float = COMMAND_TIMEOUT_S) -> str:
    """Run a command that must succeed; return its stdout."""
    result = _run(args, timeout)
    assert result.returncode == 0, (
        f"{' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}"
    )
    return result.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ignore_local_state(directory: str, names: list[str]) -> set[str]:
    """Leave out of the copy what a developer's checkout has besides the sources.

    Local `.env` files are skipped too, so real keys are never copied; the fixture
    plants fake ones instead.
    """
    skipped = {
        name
        for name in names
        if name in {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".hypothesis"}
        or (name.startswith(".env") and name != ".env.example")
    }
    if Path(directory) == REPO:
        skipped |= {".git", ".venv", "data", "test-artifacts"} & set(names)
    return skipped


@pytest.fixture(scope="module")
def planted_keys() -> dict[str, str]:
    """Fake keys, random per run, planted in the build context's .env and data/."""
    return {
        "NVIDIA_API_KEY": "nvapi-" + secrets.token_hex(24),
        "TAVILY_API_KEY": "tvly-" + secrets.token_hex(16),
    }


@pytest.fixture(scope="module")
def build_context(tmp_path_factory: pytest.TempPathFactory, planted_keys: dict[str, str]) -> Path:
    """A copy of the repository with a fake .env, a data directory and a virtualenv in it."""
    context = tmp_path_factory.mktemp("container") / "context"
    shutil.copytree(REPO, context, symlinks=True, ignore=_ignore_local_state)

    env_lines = "".join(f"{name}={value}\n" for name, value in planted_keys.items())
    (context / ".env").write_text(env_lines)
    (context / ".env.local").write_text(env_lines)
    (context / "data").mkdir()
    (context / "data" / "scout.db").write_text(env_lines)
    (context / ".venv").mkdir()
    (context / ".venv" / "planted").write_text(env_lines)
    (context / "app" / "__pycache__").mkdir(exist_ok=True)
    (context / "app" / "__pycache__" / "planted.pyc").write_text(env_lines)
    return context


@pytest.fixture(scope="module")
def image(build_context: Path) -> str:
    """Build scout:test from the planted context with the smoke script; skip without tools."""
    if os.geteuid() != 0:
        pytest.skip("building with buildah and debootstrap needs root")

    env = {**os.environ, "SCOUT_CONTEXT": str(build_context), "SCOUT_IMAGE": IMAGE}
    result = subprocess.run(
        ["bash", str(SCRIPT), "build"],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode == 77:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, f"the image build failed:\n{result.stderr[-6000:]}"
    return IMAGE


@pytest.fixture(scope="module")
def image_config(image: str) -> dict[str, Any]:
    """The Docker-format configuration of the built image (user, env, command, health check)."""
    info = json.loads(_check(["buildah", "inspect", "--type", "image", image]))
    return info["Docker"]["config"]


@pytest.fixture(scope="module")
def rootfs(image: str) -> Iterator[Path]:
    """The image's file system, mounted from a working container that is removed afterwards."""
    container = _check(["buildah", "from", "--pull-never", image]).strip()
    try:
        yield Path(_check(["buildah", "mount", container]).strip())
    finally:
        _run(["buildah", "umount", container])
        _run(["buildah", "rm", container])


def _files(root: Path) -> Iterator[Path]:
    """Every regular file and symlink under `root`, without following symlinks."""
    for directory, _, names in os.walk(root):
        for name in names:
            yield Path(directory, name)


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing; `uv sync` installs it from the dev dependency group")

    result = _run([hadolint, "--no-color", str(REPO / "Dockerfile")])

    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_settings() -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    service = compose["services"]["scout"]

    assert service["env_file"] == ".env"
    assert service["ports"] == ["127.0.0.1:8000:8000"]
    assert "scout-data:/data" in service["volumes"]
    assert "scout-data" in compose["volumes"]
    assert service["restart"] == "unless-stopped"
    assert service["stop_grace_period"] == f"{STOP_TIMEOUT_S}s"
    assert "healthcheck" not in service, "the image's HEALTHCHECK should apply unchanged"


def test_env_example_has_no_values_set() -> None:
    """Every setting in .env.example is commented out, so a copy of it runs offline."""
    lines = (REPO / ".env.example").read_text().splitlines()
    settings = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]

    assert settings == []


@pytest.mark.slow
def test_image_metadata(image_config: dict[str, Any]) -> None:
    env = dict(item.split("=", 1) for item in image_config["Env"])
    health = image_config["Healthcheck"]

    assert image_config["User"] == f"{APP_UID}:{APP_UID}"
    assert health["Test"][0] == "CMD"
    assert "/health" in " ".join(health["Test"])
    assert image_config["Cmd"] == ["scout", "serve"]
    assert "8000/tcp" in image_config["ExposedPorts"]
    assert "/data" in image_config["Volumes"]
    assert env["SCOUT_DATA_DIR"] == "/data"
    assert env["PATH"].startswith("/app/.venv/bin:")
    assert not {"NVIDIA_API_KEY", "TAVILY_API_KEY", "SCOUT_API_KEYS"} & env.keys()


@pytest.mark.slow
def test_image_user_and_data_volume(rootfs: Path) -> None:
    passwd = (rootfs / "etc" / "passwd").read_text().splitlines()
    scout = next(line.split(":") for line in passwd if line.startswith("scout:"))
    data = (rootfs / "data").stat()

    assert scout[2] == str(APP_UID)
    assert scout[3] == str(APP_UID)
    assert (data.st_uid, data.st_gid) == (APP_UID, APP_UID)


@pytest.mark.slow
def test_image_contains_code_and_corpus(rootfs: Path) -> None:
    app = rootfs / "app"

    for name in ("app", "graph", "static", "docs", ".venv"):
        assert (app / name).is_dir(), f"/app/{name} is missing"
    assert (app / "docs" / "overview.md").is_file()
    assert not (app / "tests").exists(), "tests do not belong in the runtime image"
    assert not (app / "uv.lock").exists(), "uv.lock belongs to the builder stage only"


@pytest.mark.slow
def test_image_has_no_secrets(rootfs: Path, planted_keys: dict[str, str]) -> None:
    env_files: list[str] = []
    key_hits: list[str] = []
    for path in _files(rootfs):
        if path.name == ".env" or path.name.startswith(".env."):
            env_files.append(str(path.relative_to(rootfs)))
        if path.is_symlink() or not path.is_file():
            continue
        match = KEY_PATTERN.search(path.read_bytes())
        if match:
            key_hits.append(f"{path.relative_to(rootfs)}: {match.group()[:12].decode()}...")

    # The keys planted in the build context's .env and data/ match the pattern, so a leak
    # of either file would show up in key_hits.
    for value in planted_keys.values():
        assert KEY_PATTERN.fullmatch(value.encode())
    assert env_files == []
    assert key_hits == []


@pytest.mark.slow
def test_image_has_no_compiler_or_uv(rootfs: Path) -> None:
    compilers: list[str] = []
    uv_files: list[str] = []
    for path in _files(rootfs):
        if path.parent.name in {"bin", "sbin"} and COMPILER_NAME.fullmatch(path.name):
            compilers.append(str(path.relative_to(rootfs)))
        if path.parent.name == "bin" and path.name in {"uv", "uvx"}:
            uv_files.append(str(path.relative_to(rootfs)))
    uv_packages = [str(p.relative_to(rootfs)) for p in rootfs.glob("**/site-packages/uv")]

    assert compilers == []
    assert uv_files == []
    assert uv_packages == []


def test_dockerignore_keeps_local_state_out(build_context: Path, image: str) -> None:
    """A `COPY . /context` build copies the sources and none of the planted local files."""
    dockerfile = build_context.parent / "Dockerfile.context"
    dockerfile.write_text("FROM scratch\nCOPY . /context\n")
    tag = "scout-context:test"
    bud = ["buildah", "bud", "--isolation", "chroot", "--pull=never", "-f", str(dockerfile)]
    _check([*bud, "-t", tag, str(build_context)])
    container = _check(["buildah", "from", tag]).strip()
    try:
        copied = Path(_check(["buildah", "mount", container]).strip()) / "context"
        names = {str(path.relative_to(copied)) for path in _files(copied)}
    finally:
        _run(["buildah", "umount", container])
        _run(["buildah", "rm", container])
        _run(["buildah", "rmi", tag])
    top_level = {name.split("/", 1)[0] for name in names}

    assert "app/main.py" in names
    assert "docs/overview.md" in names
    assert "uv.lock" in names
    assert top_level <= {"pyproject.toml", "uv.lock", "README.md", "app", "graph", "static", "docs"}
    assert not [name for name in names if "__pycache__" in name]
    assert not [name for name in names if Path(name).name.startswith(".env")]


def _stop_group(process: subprocess.Popen[bytes]) -> float:
    """Send SIGTERM to the process group that `process` leads; return seconds until it ended.

    Escalates to SIGKILL after STOP_TIMEOUT_S, and then returns infinity.
    """
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=COMMAND_TIMEOUT_S)
        return float("inf")
    return time.monotonic() - started


def _wait_for_status(client: httpx.Client, job_id: str, statuses: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/status/{job_id}")
        assert response.status_code == 200, response.text
        view = response.json()
        if view["status"] in statuses:
            return view
        time.sleep(0.2)
    pytest.fail(f"job {job_id} stayed {view.get('status')!r}, expected one of {sorted(statuses)}")


@pytest.mark.slow
def test_container_runs_offline_job(
    image: str, image_config: dict[str, Any], tmp_path: Path
) -> None:
    """The image's command serves a whole offline job, and its health check passes."""
    container = _check(["buildah", "from", "--pull-never", image]).strip()
    port = _free_port()
    run_in_container = [
        "buildah",
        "run",
        "--isolation",
        "chroot",
        "--user",
        image_config["User"],
        "--env",
        "SCOUT_HOST=127.0.0.1",
        "--env",
        f"SCOUT_PORT={port}",
        container,
        "--",
    ]
    health_check = run_in_container + image_config["Healthcheck"]["Test"][1:]
    server_log = tmp_path / "server.log"
    server: subprocess.Popen[bytes] | None = None
    stop_seconds = 0.0
    try:
        assert _run(health_check).returncode != 0, "the health check passed with no server"

        with server_log.open("wb") as log:
            # A session of its own, so the whole process tree stops by its group id.
            server = subprocess.Popen(
                run_in_container + image_config["Cmd"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while _run(health_check).returncode != 0:
            assert server.poll() is None, f"the server exited:\n{server_log.read_text()}"
            assert time.monotonic() < deadline, f"never healthy:\n{server_log.read_text()}"
            time.sleep(0.5)

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
            health = client.get("/health").json()
            assert health["model"] == "offline"
            assert health["search"] == "local"

            response = client.post(
                "/research", json={"question": "How does Scout recover a job after a restart?"}
            )
            assert response.status_code == 202, response.text
            job_id = response.json()["job_id"]

            _wait_for_status(client, job_id, {"awaiting_approval"})
            response = client.post(f"/research/{job_id}/approve", json={"approved": True})
            assert response.status_code == 200, response.text
            view = _wait_for_status(client, job_id, {"done", "partial", "failed"})

            assert view["status"] == "done", view.get("error")
            assert view["report"]
            assert view["sources"], "the offline search found nothing in the image's docs/"
            page = client.get("/")
            assert page.status_code == 200, "static/ is missing from the image"

        stop_seconds = _stop_group(server)
        server = None
        data = _check([*run_in_container, "ls", "-ln", "/data"])
    finally:
        if server is not None:
            _stop_group(server)
        _run(["buildah", "rm", container])

    assert stop_seconds < STOP_TIMEOUT_S, f"no exit within {STOP_TIMEOUT_S} s of SIGTERM"
    assert "scout.db" in data
    assert f" {APP_UID} {APP_UID} " in data
    assert "Traceback" not in server_log.read_text()
