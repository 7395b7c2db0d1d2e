#!/usr/bin/env bash
# The demo: install what is needed, start a local redis-server, a Celery worker and
# Flower on free loopback ports, submit the example ETL job to the worker fleet, follow
# it live, show the run, and stop everything it started (by pid).
#
#   bash scripts/demo.sh            run the demo and stop
#   DEMO_KEEP=1 bash scripts/demo.sh    keep redis, the worker and Flower up until Ctrl-C
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

bash scripts/setup.sh

python=${PYTHON:-python3}
coreexec() { "$python" -m coreexec "$@"; }

demo_dir=$(mktemp -d -t coreexec-demo.XXXXXX)
export COREEXEC_HOME=${COREEXEC_HOME:-$demo_dir/home}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

free_port() {
    "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {  # wait_for WHAT LOGFILE COMMAND...: retry COMMAND for up to 60 s
    local what=$1 log=$2
    shift 2
    for _ in $(seq 120); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    echo "demo: $what did not start; its log ($log) ends with:" >&2
    tail -n 30 "$log" >&2
    exit 1
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$demo_dir" >"$demo_dir/redis.log" 2>&1 &
pids+=($!)
export COREEXEC_BROKER_URL="redis://127.0.0.1:$redis_port/0"
export COREEXEC_RESULT_BACKEND="redis://127.0.0.1:$redis_port/1"
export COREEXEC_REDIS_URL="redis://127.0.0.1:$redis_port/0"
wait_for "redis-server" "$demo_dir/redis.log" redis-cli -p "$redis_port" ping
echo "==> redis-server on 127.0.0.1:$redis_port (pid ${pids[-1]})"

"$python" -m celery -A celery_app worker \
    -Q coreexec.high,coreexec.default,coreexec.low,coreexec.runs -c 4 \
    -n "demo-$$@%h" --without-gossip --without-mingle -E --loglevel INFO \
    >"$demo_dir/worker.log" 2>&1 &
pids+=($!)
wait_for "the celery worker" "$demo_dir/worker.log" \
    "$python" -m celery -A celery_app inspect ping -d "demo-$$@$(hostname)" -t 1
echo "==> celery worker demo-$$ on every coreexec queue, concurrency 4 (pid ${pids[-1]})"

flower_port=$(free_port)
flower_user=${FLOWER_USER:-coreexec}
flower_password=${FLOWER_PASSWORD:-demo}
"$python" -m celery -A celery_app flower --address=127.0.0.1 --port="$flower_port" \
    --basic-auth="$flower_user:$flower_password" >"$demo_dir/flower.log" 2>&1 &
pids+=($!)
wait_for "Flower" "$demo_dir/flower.log" \
    "$python" -c "import urllib.request, base64, sys
req = urllib.request.Request('http://127.0.0.1:$flower_port/api/workers')
req.add_header('Authorization', 'Basic ' + base64.b64encode(b'$flower_user:$flower_password').decode())
urllib.request.urlopen(req, timeout=1)"
echo "==> Flower at http://127.0.0.1:$flower_port (user $flower_user, password $flower_password)"

printf '\n==> coreexec submit celery_app.examples:defs.etl_job --wait\n'
status=0
coreexec submit celery_app.examples:defs.etl_job --wait || status=$?
run_id=$(coreexec runs ls --limit 1 | awk 'NR == 2 {print $1}')
printf '\n==> coreexec runs show %s\n' "$run_id"
coreexec runs show "$run_id" | sed -n '1,20p'
printf '\nStep tasks in Flower: http://127.0.0.1:%s/tasks\n' "$flower_port"
printf 'Runs, events and outputs: %s (try: COREEXEC_HOME=%s coreexec runs ls)\n' \
    "$COREEXEC_HOME" "$COREEXEC_HOME"
if [ -n "${DEMO_KEEP:-}" ]; then
    printf '\nDEMO_KEEP is set: redis, the worker and Flower stay up until Ctrl-C.\n'
    trap 'exit 0' INT TERM
    while true; do sleep 3600; done
fi
exit "$status"
