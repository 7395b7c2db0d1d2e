#!/usr/bin/env bash
# Creates bench/.venv-dagster, a virtualenv holding Dagster for the baseline columns.
# Dagster lives apart from the project's interpreter so its pins never touch coreexec's.
# Usage: bash bench/setup_baselines.sh   (idempotent; re-run to repair the venv)
set -euo pipefail

DAGSTER_VERSION="${DAGSTER_VERSION:-1.13.27}"
# Dagster's libraries are versioned 0.(X+16).Y beside core 1.X.Y: 0.29.27 goes with 1.13.27.
DAGSTER_DASK_VERSION="${DAGSTER_DASK_VERSION:-0.29.27}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${here}/.venv-dagster"
python_bin="${PYTHON:-python3}"

if [ ! -x "${venv}/bin/python" ]; then
    "${python_bin}" -m venv "${venv}"
fi
"${venv}/bin/python" -m pip install --quiet --upgrade pip
"${venv}/bin/python" -m pip install --quiet "dagster==${DAGSTER_VERSION}" \
    "dagster-dask==${DAGSTER_DASK_VERSION}"
"${venv}/bin/python" -c "import dagster, dagster_dask, distributed; print('dagster', \
dagster.__version__, 'dagster-dask', dagster_dask.__version__, 'distributed', \
distributed.__version__, 'in', '${venv}')"
