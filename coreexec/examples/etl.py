"""An ETL-shaped example: extract per region (fan-out), clean, load to a warehouse,
then one report (fan-in). Extraction has high priority, the report low; loads are
tagged ``database=warehouse`` for tag limits; ``fetch_rates`` fails on its first
attempt and succeeds on retry.

Run it: ``coreexec run coreexec.examples.etl:etl_job``.
"""

from __future__ import annotations

import time

from pydantic import BaseModel

from coreexec import Backoff, Definitions, RetryPolicy, StepContext, job, step
from coreexec.tags import PRIORITY_TAG

REGIONS = ("emea", "amer", "apac")


class ExtractConfig(BaseModel):
    rows_per_region: int = 5
    pause_s: float = 0.05


@step(tags={PRIORITY_TAG: 5}, config_schema=ExtractConfig)
def extract(context: StepContext) -> dict[str, list[int]]:
    """Reads raw rows for every region."""
    config = context.config
    assert isinstance(config, ExtractConfig)
    time.sleep(config.pause_s)
    context.log.info("extracted %d rows per region", config.rows_per_region)
    return {
        region: [index * (offset + 1) for index in range(config.rows_per_region)]
        for offset, region in enumerate(REGIONS)
    }


@step(
    tags={PRIORITY_TAG: 5},
    retry_policy=RetryPolicy(max_retries=2, delay=0.1, backoff=Backoff.EXPONENTIAL),
)
def fetch_rates(context: StepContext) -> dict[str, float]:
    """Fetches currency rates; the first attempt fails, as a flaky service would."""
    if context.attempt == 1:
        raise ConnectionError("rates service timed out (the retry policy will try again)")
    context.log.info("rates fetched on attempt %d", context.attempt)
    return {"emea": 1.1, "amer": 1.0, "apac": 0.9}


def _clean_step(region: str):  # type: ignore[no-untyped-def]
    @step(name=f"clean_{region}")
    def clean(rows: dict[str, list[int]], rates: dict[str, float]) -> list[float]:
        time.sleep(0.05)
        return [value * rates[region] for value in rows[region] if value >= 0]

    return clean


CLEANERS = {region: _clean_step(region) for region in REGIONS}


@step(tags={"database": "warehouse"})
def load(context: StepContext, rows: list[float]) -> int:
    """Writes cleaned rows to the warehouse; returns how many."""
    time.sleep(0.05)
    context.log.info("loaded %d rows", len(rows))
    return len(rows)


@step(tags={PRIORITY_TAG: -5})
def report(counts: list[int]) -> str:
    """Summarises the loads."""
    return f"loaded {sum(counts)} rows from {len(counts)} regions"


@job(tags={"team": "analytics"})
def etl_job() -> None:
    """Extract, clean and load three regions, then report."""
    raw = extract()
    rates = fetch_rates()
    counts = [load.alias(f"load_{region}")(CLEANERS[region](raw, rates)) for region in REGIONS]
    report(counts)


defs = Definitions(jobs=[etl_job])
