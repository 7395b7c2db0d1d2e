#!/usr/bin/env bash
# The demo: install what is needed, then run the example ETL job through the CLI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
printf '\n==> coreexec run coreexec.examples.etl:etl_job\n'
if command -v coreexec >/dev/null 2>&1; then
    exec coreexec run coreexec.examples.etl:etl_job "$@"
fi
# pip may have put the console script outside PATH (a user install); same entry point.
exec "${PYTHON:-python3}" -c 'import sys; from coreexec.cli import main; sys.exit(main())' \
    run coreexec.examples.etl:etl_job "$@"
