#!/usr/bin/env bash
# Build the worker image without any registry, caching every stage under
# /var/cache/coreexec: a debootstrapped bookworm base image (`docker import`), the wheels
# of coreexec[docker,flower] for the image's Python, then workers/Dockerfile. Prints the
# image's tag and tags it coreexec-worker:latest too (docker-compose.yml's default).
#
#   bash scripts/worker_image.sh                 # on $DOCKER_HOST, else the shared engine
#   bash scripts/worker_image.sh --tag my/worker:1.0
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ -z "${DOCKER_HOST:-}" ]; then
    "$PYTHON" -m tests.support.docker_engine start >/dev/null
fi
exec "$PYTHON" -m tests.support.docker_images --tag coreexec-worker:latest --wheels-out wheels "$@"
