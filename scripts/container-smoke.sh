#!/usr/bin/env bash
# Build the Scout image with buildah, which needs no Docker engine, and smoke-test it.
#
#   scripts/container-smoke.sh base    # only the local stand-in for the pinned base image
#   scripts/container-smoke.sh build   # the stand-in if missing, then the image
#   scripts/container-smoke.sh         # build, then run the image's command on 127.0.0.1:
#                                      # its health check and one offline job must succeed
#
# The pinned base image (ARG PYTHON_IMAGE in the Dockerfile) cannot be pulled on a machine
# that reaches only package registries. So this script builds a stand-in with that exact
# tag: a Debian bookworm minbase root file system from debootstrap, plus a local CPython
# 3.12 in /usr/local, as the official image has it. The stand-in is committed to buildah's
# local storage and reused; the debootstrap root file system is also kept as a tarball in
# $SCOUT_BASE_CACHE (default ~/.cache/scout-base). The Dockerfile itself is unchanged.
#
# Environment:
#   SCOUT_IMAGE          tag of the built image (default scout:test)
#   SCOUT_BASE_PYTHON    prefix of the CPython 3.12 to copy (default: newest /root/.pyenv/versions/3.12.*)
#   SCOUT_BASE_CACHE     cache directory of the stand-in's root file system tarball
#   SCOUT_DEBIAN_MIRROR  mirror for debootstrap (default: debootstrap's own default)
#   SCOUT_BUILD_HOST_CA  1 (default) mounts the host's CA bundle into RUN steps, so the
#                        build trusts what the host trusts (such as a TLS-inspecting
#                        proxy); the mount is not stored in any layer. 0 turns it off.
#   SCOUT_CONTEXT        build context (default: the repository)
#
# Exit status: 0 on success, 77 when buildah, debootstrap or the CPython 3.12 to copy is
# missing and cannot be installed, any other non-zero status on failure.
# Run it as root: debootstrap and buildah's local storage need it.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONTEXT="${SCOUT_CONTEXT:-$REPO_DIR}"
IMAGE="${SCOUT_IMAGE:-scout:test}"
CACHE_DIR="${SCOUT_BASE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/scout-base}"
# pip 24.3.1 is the version the official python:3.12.8 images ship. Since pip 24.2, pip
# trusts the system CA store, like the builder stage's uv with UV_SYSTEM_CERTS.
PIP_VERSION=24.3.1
SKIP=77

# What cleanup removes on exit: the stand-in's assembly container and work directory, the
# smoke test's server process group, working container and log.
BASE_CTR=""
BASE_WORK=""
SERVER_PID=""
WORK_CTR=""
SERVER_LOG=""

export BUILDAH_ISOLATION=chroot

log() { printf 'container-smoke: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
skip() { log "skipped: $*"; exit "$SKIP"; }

base_tag() {
    local tag
    tag="$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$CONTEXT/Dockerfile" | head -n 1)"
    [[ -n "$tag" ]] || die "no 'ARG PYTHON_IMAGE=' line in $CONTEXT/Dockerfile"
    # A short name resolves to Docker Hub's library namespace, where the real image lives.
    printf 'docker.io/library/%s\n' "$tag"
}

ensure_tools() {
    local missing=()
    command -v buildah >/dev/null 2>&1 || missing+=(buildah)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    ((${#missing[@]} == 0)) && return 0

    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        skip "${missing[*]} missing; install with: apt-get install buildah debootstrap"
    fi
    log "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
        skip "apt-get could not install ${missing[*]}"
    fi
}

find_base_python() {
    if [[ -n "${SCOUT_BASE_PYTHON:-}" ]]; then
        printf '%s\n' "$SCOUT_BASE_PYTHON"
        return
    fi
    find /root/.pyenv/versions -maxdepth 1 -name '3.12.*' 2>/dev/null | sort -V | tail -n 1
}

# Debian bookworm minbase with the shared libraries that CPython's extension modules link
# against, and the packages the official slim image adds (ca-certificates, netbase, tzdata).
BASE_PACKAGES=(
    ca-certificates netbase tzdata
    libssl3 libsqlite3-0 libffi8 zlib1g libbz2-1.0 liblzma5 libzstd1 libexpat1
    libreadline8 libncursesw6 libuuid1 libgdbm6 libgdbm-compat4 libnsl2 libtirpc3
    libcrypt1 libdb5.3
)

make_rootfs_tarball() {
    local tarball="$1" work="$2"
    if [[ -s "$tarball" ]]; then
        log "reusing the root file system tarball $tarball"
        return
    fi
    local include mirror=()
    include="$(IFS=,; printf '%s' "${BASE_PACKAGES[*]}")"
    [[ -n "${SCOUT_DEBIAN_MIRROR:-}" ]] && mirror=("$SCOUT_DEBIAN_MIRROR")

    log "debootstrap bookworm minbase into $work/rootfs (about a minute)"
    debootstrap --variant=minbase --include="$include" bookworm "$work/rootfs" "${mirror[@]}" \
        >"$work/debootstrap.log" 2>&1 || {
        cp "$work/debootstrap.log" "$CACHE_DIR/debootstrap.log"
        tail -n 20 "$work/debootstrap.log" >&2
        die "debootstrap failed; the whole log is in $CACHE_DIR/debootstrap.log"
    }
    # Like the official slim image: no package cache, no package lists.
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*

    mkdir -p "$(dirname "$tarball")"
    # Device nodes and kernel file systems come from the container runtime, not the image.
    tar --numeric-owner -C "$work/rootfs" \
        --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
        -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
}

make_python_tarball() {
    local prefix="$1" tarball="$2"
    # The test suite, IDLE and Tk are not in the slim image either. site-packages starts
    # empty: pip is installed from its wheel afterwards.
    tar --numeric-owner -C "$prefix" \
        --exclude='lib/python3.12/test' --exclude='lib/python3.12/idlelib' \
        --exclude='lib/python3.12/tkinter' --exclude='lib/python3.12/turtledemo' \
        --exclude='lib/python3.12/lib-dynload/_tkinter*' \
        --exclude='lib/python3.12/site-packages/*' \
        --exclude='*.a' --exclude='bin/pip*' --exclude='bin/idle*' \
        -cf "$tarball" bin include lib
}

build_base() {
    local ref="$1"
    if buildah inspect --type image "$ref" >/dev/null 2>&1; then
        log "stand-in base $ref is cached in buildah's storage"
        return
    fi

    local prefix
    prefix="$(find_base_python)"
    [[ -x "$prefix/bin/python3.12" ]] ||
        skip "no CPython 3.12 to copy into the stand-in base; set SCOUT_BASE_PYTHON to its prefix"

    BASE_WORK="$(mktemp -d)"
    local work="$BASE_WORK" ctr

    mkdir -p "$CACHE_DIR"
    # The tarball's name carries a digest of the package list, so changing the list
    # makes a new tarball instead of reusing a stale one.
    local digest
    digest="$(printf '%s\n' "${BASE_PACKAGES[@]}" | sha256sum | cut -c1-12)"
    make_rootfs_tarball "$CACHE_DIR/bookworm-minbase-$digest.tar" "$work"
    make_python_tarball "$prefix" "$work/python.tar"
    local wheel="$CACHE_DIR/pip-$PIP_VERSION-py3-none-any.whl"
    if [[ ! -s "$wheel" ]]; then
        "$prefix/bin/python3.12" -m pip download --quiet --no-deps --only-binary=:all: \
            --dest "$CACHE_DIR" "pip==$PIP_VERSION"
    fi

    log "assembling the stand-in base $ref from $prefix"
    # A container left by an interrupted run would block the name.
    buildah rm scout-base-assembly >/dev/null 2>&1 || true
    BASE_CTR="$(buildah from --name scout-base-assembly scratch)"
    ctr="$BASE_CTR"
    # buildah add unpacks a local tar archive into the destination.
    buildah add --quiet "$ctr" "$CACHE_DIR/bookworm-minbase-$digest.tar" / >/dev/null
    buildah add --quiet "$ctr" "$work/python.tar" /usr/local >/dev/null
    buildah add --quiet "$ctr" "$wheel" /tmp/ >/dev/null
    buildah config --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 "$ctr"

    local steps=(
        "ldconfig"
        "python3.12 /tmp/${wheel##*/}/pip install --quiet --no-index --no-cache-dir --root-user-action=ignore /tmp/${wheel##*/}"
        "rm /tmp/${wheel##*/}"
        "python3 -c 'import bz2, ctypes, decimal, hashlib, lzma, readline, sqlite3, ssl, uuid, zlib'"
        "python --version && pip --version"
    )
    local step
    for step in "${steps[@]}"; do
        buildah run "$ctr" -- /bin/sh -c "$step" >&2 || die "stand-in base step failed: $step"
    done

    local version
    version="$("$prefix/bin/python3.12" -c 'import platform; print(platform.python_version())')"
    buildah config \
        --env PYTHON_VERSION="$version" \
        --cmd python3 \
        --label "org.opencontainers.image.description=local stand-in for $ref: Debian bookworm minbase and CPython $version" \
        "$ctr"
    buildah commit --quiet --format docker --rm "$ctr" "$ref" >/dev/null
    BASE_CTR=""
    log "stand-in base $ref committed"
}

build_image() {
    local volumes=()
    if [[ "${SCOUT_BUILD_HOST_CA:-1}" == 1 && -r /etc/ssl/certs/ca-certificates.crt ]]; then
        volumes=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
    fi
    log "building $IMAGE from $CONTEXT"
    buildah bud --isolation chroot --format docker --layers --pull=never \
        "${volumes[@]}" -t "$IMAGE" "$CONTEXT" >&2
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

json_field() {
    # Read one field from a JSON document on stdin: json_field key [key ...]
    python3 -c 'import json, sys
value = json.load(sys.stdin)
for key in sys.argv[1:]:
    value = value[key]
print(value if isinstance(value, str) else json.dumps(value))' "$@"
}

cleanup() {
    if [[ -n "$SERVER_PID" ]]; then
        # buildah run was started in its own session: stop that process group by its id.
        kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ -n "$WORK_CTR" ]]; then
        buildah rm "$WORK_CTR" >/dev/null 2>&1 || true
    fi
    if [[ -n "$SERVER_LOG" ]]; then
        rm -f "$SERVER_LOG"
    fi
    if [[ -n "$BASE_CTR" ]]; then
        buildah rm "$BASE_CTR" >/dev/null 2>&1 || true
    fi
    if [[ -n "$BASE_WORK" ]]; then
        rm -rf "$BASE_WORK"
    fi
}

smoke() {
    local port
    port="$(free_port)"
    SERVER_LOG="$(mktemp)"
    WORK_CTR="$(buildah from --pull-never "$IMAGE")"
    local ctr="$WORK_CTR" log_file="$SERVER_LOG"

    local user cmd health
    user="$(buildah inspect --type image "$IMAGE" | json_field Docker config User)"
    cmd="$(buildah inspect --type image "$IMAGE" | json_field Docker config Cmd)"
    health="$(buildah inspect --type image "$IMAGE" | json_field Docker config Healthcheck Test)"
    local run=(buildah run --isolation chroot --user "$user"
        --env SCOUT_HOST=127.0.0.1 --env "SCOUT_PORT=$port" "$ctr" --)

    log "starting the image's command $cmd as $user on 127.0.0.1:$port"
    local cmd_args
    mapfile -t cmd_args < <(python3 -c 'import json, sys; print(*json.loads(sys.argv[1]), sep="\n")' "$cmd")
    setsid "${run[@]}" "${cmd_args[@]}" >"$log_file" 2>&1 &
    SERVER_PID=$!

    # The HEALTHCHECK test is ["CMD", program, args...]; run it until it succeeds.
    local health_args ok=""
    mapfile -t health_args < <(python3 -c 'import json, sys; print(*json.loads(sys.argv[1])[1:], sep="\n")' "$health")
    for _ in $(seq 60); do
        if timeout 10 "${run[@]}" "${health_args[@]}" 2>/dev/null; then
            ok=1
            break
        fi
        sleep 1
    done
    [[ -n "$ok" ]] || { cat "$log_file" >&2; die "the health check did not pass within 60 s"; }
    log "health check passed"

    local base="http://127.0.0.1:$port" job status=""
    job="$(curl -sf --max-time 10 -X POST "$base/research" -H 'Content-Type: application/json' \
        -d '{"question": "How does Scout recover a job after a restart?"}' | json_field job_id)"
    log "submitted job $job"
    for _ in $(seq 100); do
        status="$(curl -sf --max-time 10 "$base/status/$job" | json_field status)"
        [[ "$status" == awaiting_approval ]] && break
        sleep 0.2
    done
    [[ "$status" == awaiting_approval ]] || die "job $job is $status, not awaiting_approval"
    curl -sf --max-time 10 -X POST "$base/research/$job/approve" \
        -H 'Content-Type: application/json' -d '{"approved": true}' >/dev/null
    for _ in $(seq 150); do
        status="$(curl -sf --max-time 10 "$base/status/$job" | json_field status)"
        [[ "$status" == "done" || "$status" == failed || "$status" == partial ]] && break
        sleep 0.2
    done
    [[ "$status" == "done" ]] || { cat "$log_file" >&2; die "job $job ended $status, not done"; }
    log "job $job is done; report:"
    curl -sf --max-time 10 "$base/status/$job" | json_field report | sed -n '1,5p' >&2
}

main() {
    local mode="${1:-smoke}"
    case "$mode" in
        base | build | smoke) ;;
        *) die "unknown mode '$mode'; use base, build or smoke" ;;
    esac
    trap cleanup EXIT
    [[ "$(id -u)" == 0 ]] || skip "must run as root (debootstrap and buildah's storage need it)"
    ensure_tools
    build_base "$(base_tag)"
    [[ "$mode" == base ]] && return
    build_image
    [[ "$mode" == build ]] && return
    smoke
}

main "$@"
