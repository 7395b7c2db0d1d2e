#!/usr/bin/env bash
# Install what coreexec needs to run, test and demo: Debian's redis-server, docker.io
# (dockerd; the tests start their own) and debootstrap (the base image is made without
# any registry), and this repository as an editable package with its dev extras. Safe to run again: it only
# installs what is missing or out of date.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# --- Python -------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install Python 3.11 or newer"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$("$PYTHON" --version 2>&1) is too old; coreexec needs Python 3.11 or newer"

if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || die "$PYTHON has no pip; install it (sudo apt-get install python3-pip)"
    log "$PYTHON has no pip: installing Debian's python3-pip"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
fi
# Debian's own Python refuses global pip installs (PEP 668). This script installs
# globally on purpose: CI machines here are single-purpose.
stdlib=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
if [ -f "$stdlib/EXTERNALLY-MANAGED" ] && [ -z "${VIRTUAL_ENV:-}" ]; then
    log "$PYTHON is marked externally managed; installing into it anyway"
    export PIP_BREAK_SYSTEM_PACKAGES=1
fi

# --- redis-server (the test fixtures start their own on free ports) ------------------
if command -v redis-server >/dev/null 2>&1; then
    log "redis-server present: $(redis-server --version | head -n1)"
elif [ "$(id -u)" -eq 0 ]; then
    log "redis-server missing: installing Debian's redis-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends redis-server >/dev/null
    command -v redis-server >/dev/null 2>&1 || die "apt-get installed redis-server but it is not on PATH"
else
    die "redis-server is missing and this user is not root, so it cannot be installed here.
        Run this script as root, or install it yourself: sudo apt-get install redis-server"
fi

# --- dockerd and debootstrap (the Docker tests start their own engine) -----------------
# A `docker` client alone is not enough: dockerd comes from Debian's docker.io. Never
# started as a service here; tests/support/docker_engine.py starts and stops it.
missing_debs=()
command -v dockerd >/dev/null 2>&1 || missing_debs+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing_debs+=(debootstrap)
if [ "${#missing_debs[@]}" -eq 0 ]; then
    log "dockerd present: $(dockerd --version); debootstrap present"
elif [ "$(id -u)" -eq 0 ]; then
    log "missing: ${missing_debs[*]}: installing them from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing_debs[@]}" >/dev/null
    command -v dockerd >/dev/null 2>&1 || die "apt-get installed docker.io but dockerd is not on PATH"
else
    log "WARNING: ${missing_debs[*]} missing and this user is not root: the Docker tests will skip" \
        "(install them: sudo apt-get install ${missing_debs[*]})"
fi

# --- the package, editable, with dev tools -------------------------------------------
# pip itself makes this idempotent: satisfied requirements are left alone.
log "installing coreexec editable with [dev] extras (pip, quiet)"
"$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e '.[dev]'
log "done"
