#!/usr/bin/env bash
# Creates bench/.venv-dagster, a virtualenv holding Dagster for the baseline columns.
# Dagster lives apart from the project's interpreter so its pins never touch coreexec's.
# Usage: bash bench/setup_baselines.sh   (idempotent; re-run to repair the venv)
set -euo pipefail

DAGSTER_VERSION="${DAGSTER_VERSION:-1.13.27}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${here}/.venv-dagster"
python_bin="${PYTHON:-python3}"

if [ ! -x "${venv}/bin/python" ]; then
    "${python_bin}" -m venv "${venv}"
fi
"${venv}/bin/python" -m pip install --quiet --upgrade pip
"${venv}/bin/python" -m pip install --quiet "dagster==${DAGSTER_VERSION}"
"${venv}/bin/python" -c "import dagster; print('dagster', dagster.__version__, 'in', '${venv}')"
