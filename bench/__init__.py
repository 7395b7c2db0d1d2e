"""Benchmarks of coreexec against plain Celery and Dagster (``python -m bench``).

Not timed tests: run on demand, never part of CI's pass/fail. See bench/README.md.
"""
