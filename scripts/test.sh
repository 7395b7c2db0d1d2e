#!/usr/bin/env bash
# Every check CI runs, in order: setup, ruff lint, ruff format, mypy, import boundaries,
# pytest. All stages run even when an earlier one fails; the summary at the end names
# the ones that failed and the exit code is non-zero if any did.
# Arguments are passed on to pytest, e.g. `bash scripts/test.sh -k limiter -x`.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
stages=()
results=()
record() { stages+=("$1"); results+=("$2"); }
banner() { printf '\n==> %s\n' "$*"; }

banner "setup: bash scripts/setup.sh"
if ! bash scripts/setup.sh; then
    printf '\ntest.sh: FAILED stage: setup (nothing else was run)\n' >&2
    exit 1
fi

run_stage() {
    local name=$1
    shift
    banner "$name: $*"
    if "$@"; then record "$name" ok; else record "$name" FAILED; fi
}

run_stage "ruff check" "$PYTHON" -m ruff check .
run_stage "ruff format" "$PYTHON" -m ruff format --check .
run_stage "mypy" "$PYTHON" -m mypy
# The console script when it is on PATH (pip may put scripts elsewhere for non-root users).
lint_imports=(lint-imports)
command -v lint-imports >/dev/null 2>&1 \
    || lint_imports=("$PYTHON" -c 'from importlinter.cli import lint_imports_command as c; c()')
run_stage "lint-imports" "${lint_imports[@]}" --no-cache

# --- pytest -----------------------------------------------------------------------------
pytest_log=$(mktemp "${TMPDIR:-/tmp}/coreexec-pytest.XXXXXX")
trap 'rm -f "$pytest_log"' EXIT
banner "pytest: $PYTHON -m pytest tests -p no:cacheprovider $*"
"$PYTHON" -m pytest tests -p no:cacheprovider "$@" 2>&1 | tee "$pytest_log"
pytest_rc=${PIPESTATUS[0]}
# pytest's closing line looks like "==== 3 failed, 40 passed, 1 skipped in 12.3s ====".
pytest_summary=$(grep -E '^=+ .* in [0-9.]+s( \([0-9:]+\))? =+$' "$pytest_log" | tail -n1 \
    | sed -E 's/^=+ //; s/ =+$//')
case $pytest_rc in
    0) record "pytest" ok ;;
    5)
        record "pytest" "FAILED (exit 5: no tests were collected; a green run must run tests)"
        ;;
    *) record "pytest" "FAILED (exit $pytest_rc)" ;;
esac

# --- summary ----------------------------------------------------------------------------
printf '\n==> summary\n'
status=0
for i in "${!stages[@]}"; do
    printf '  %-14s %s\n' "${stages[$i]}" "${results[$i]}"
    [ "${results[$i]}" = ok ] || status=1
done
if [ "$status" -ne 0 ]; then
    failed=()
    for i in "${!stages[@]}"; do
        [ "${results[$i]}" = ok ] || failed+=("${stages[$i]}")
    done
    printf 'test.sh: FAILED stage(s): %s\n' "$(IFS=,; echo "${failed[*]}" | sed 's/,/, /g')"
fi
if [ -n "$pytest_summary" ]; then
    printf 'pytest summary: %s\n' "$pytest_summary"
    count() { grep -oE "[0-9]+ $1" <<<"$pytest_summary" | grep -oE '^[0-9]+' || echo 0; }
    n_failed=$(($(count failed) + $(count errors?)))
    # The last line is a plain "N passed, N failed, N skipped" count for CI's reader.
    printf 'pytest: %d passed, %d failed, %d skipped\n' \
        "$(count passed)" "$n_failed" "$(count skipped)"
else
    printf 'pytest summary: none (pytest exited %s before printing one)\n' "$pytest_rc"
fi
exit "$status"
