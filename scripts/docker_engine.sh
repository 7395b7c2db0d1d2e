#!/usr/bin/env bash
# The machine's shared Docker engine for coreexec's tests and demos (dockerd on its own
# socket, data root and pidfile; overlay2, else vfs; no iptables, no bridge).
#
#   bash scripts/docker_engine.sh start    # start it unless it answers; tests then leave it running
#   bash scripts/docker_engine.sh env      # prints `export DOCKER_HOST=unix:///run/coreexec-docker/docker.sock`
#   bash scripts/docker_engine.sh stop     # stop it by its pid
#
# Test runs do not need this: the test fixtures start the engine when nothing answers
# and stop it, by pid, after the last test session using it ends.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m tests.support.docker_engine "$@"
