"""L1: tag-limiter acquire + release pairs per second from one client against a local Redis.

Each pair is ``try_acquire`` of one slot (``database=warehouse``, limit 2) followed by
``release`` of the lease: two Lua scripts, two round trips. The figure is the median of
``repeats`` runs after a warm-up, with p50 / p99 latency of one pair.

    python -m bench.limiter_bench                   # starts redis-server on a free port
    python -m bench.limiter_bench --url redis://127.0.0.1:6379/0 --pairs 20000

With no URL, a redis-server is started on a free loopback port (no persistence) and
stopped by its pid afterwards. Goal (issue 5): at least 5,000 pairs per second.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterator

import redis

from coreexec.limits.base import SlotRequest
from coreexec.limits.redis_limiter import RedisTagLimiter
from coreexec.limits.rules import SlotSpec

GOAL_PAIRS_PER_S = 5_000.0
WARMUP_PAIRS = 1_000


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def local_redis(redis_url: str | None) -> Iterator[str]:
    """``redis_url`` as is, or the URL of a redis-server started for the bench."""
    if redis_url is not None:
        yield redis_url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH; install it or pass --url")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10.0
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {port} did not start") from None
                time.sleep(0.02)
        client.close()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _one_run(limiter: RedisTagLimiter, pairs: int, tag: str) -> tuple[float, list[int]]:
    slot = SlotSpec(name="database=warehouse", limit=2, rule="database=warehouse limit 2")
    requests = [
        SlotRequest(
            run_id=f"bench-{tag}",
            step_key=f"step_{i}",
            lease_id=f"{tag}-{i}",
            priority=0,
            slots=(slot,),
            wake_key=f"bench:{tag}:events",
        )
        for i in range(pairs)
    ]
    latencies_ns: list[int] = []
    clock = time.perf_counter_ns
    started = clock()
    for request in requests:
        t0 = clock()
        lease = limiter.try_acquire(request).lease
        if lease is None:
            raise RuntimeError(f"L1: {request.lease_id} was refused a free slot")
        if not limiter.release(lease):
            raise RuntimeError(f"L1: release of {request.lease_id} was refused")
        latencies_ns.append(clock() - t0)
    elapsed_s = (clock() - started) / 1e9
    return pairs / elapsed_s, latencies_ns


def _percentile(sorted_ns: list[int], q: float) -> float:
    index = min(len(sorted_ns) - 1, max(0, round(q * (len(sorted_ns) - 1))))
    return sorted_ns[index] / 1000.0


def run_l1(
    redis_url: str | None, pairs: int = 20_000, *, repeats: int = 3, single_connection: bool = True
) -> dict[str, float]:
    """Run L1 and return medians over ``repeats`` runs (after a warm-up).

    Keys: ``pairs_per_s``, ``p50_us``, ``p99_us`` (latency of one pair), ``pairs``,
    ``repeats``, ``goal_pairs_per_s``. ``single_connection`` gives the client one
    dedicated connection (no pool checkout per command), as a single-threaded client
    would; False measures the default pooled client.
    """
    if pairs < 1 or repeats < 1:
        raise ValueError("pairs and repeats must be at least 1")
    with local_redis(redis_url) as url:
        client = redis.Redis.from_url(
            url, decode_responses=True, single_connection_client=single_connection
        )
        namespace = f"bench-{uuid.uuid4().hex[:8]}"
        limiter = RedisTagLimiter(client, namespace=namespace, url=url)
        try:
            _one_run(limiter, WARMUP_PAIRS, "warmup")
            rates: list[float] = []
            p50s: list[float] = []
            p99s: list[float] = []
            for run in range(repeats):
                rate, latencies = _one_run(limiter, pairs, f"run{run}")
                latencies.sort()
                rates.append(rate)
                p50s.append(_percentile(latencies, 0.50))
                p99s.append(_percentile(latencies, 0.99))
            if limiter.slots():
                raise RuntimeError("L1: slots still held or waited for after the runs")
        finally:
            client.close()
    return {
        "pairs_per_s": statistics.median(rates),
        "p50_us": statistics.median(p50s),
        "p99_us": statistics.median(p99s),
        "pairs": float(pairs),
        "repeats": float(repeats),
        "goal_pairs_per_s": GOAL_PAIRS_PER_S,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", default=None, help="Redis URL (default: start redis-server)")
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pooled", action="store_true", help="use a pooled client")
    args = parser.parse_args(argv)
    result = run_l1(args.url, args.pairs, repeats=args.repeats, single_connection=not args.pooled)
    client_kind = "pooled" if args.pooled else "single connection"
    print(
        f"L1 limiter: acquire+release pairs, one client ({client_kind}), median of "
        f"{args.repeats} runs of {args.pairs} pairs"
    )
    print(f"{'pairs/s':>10} {'p50 µs':>9} {'p99 µs':>9} {'goal':>8}")
    print(
        f"{result['pairs_per_s']:>10.0f} {result['p50_us']:>9.1f} {result['p99_us']:>9.1f} "
        f"{result['goal_pairs_per_s']:>8.0f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
