"""Jobs of the tag-limit tests on the celery executor (``tests.jobs.limit_jobs:<name>``).

Every job runs on ``celery_executor``; the limits themselves come from each test's run
config (``tag_concurrency_limits``), so one job serves several rules. Steps that must be
held until the test says so wait on a gate file (:func:`tests.jobs.celery_jobs.open_gate`).

:func:`coordinate_in_this_process` is the body of a coordinator process a test starts
(and may kill): it coordinates one stored run, as a coordinator worker would.
"""

from __future__ import annotations

import os
import time

from celery_app import celery_executor
from coreexec import RetryPolicy, StepContext, job, step
from coreexec.instance import Instance
from coreexec.retry import FailureClass
from coreexec.runs.coordinate import coordinate_launched_run
from coreexec.tags import PRIORITY_TAG
from tests.jobs.celery_jobs import wait_for_gate

WAREHOUSE = {"database": "warehouse"}
CRM = {"api": "crm"}
LEDGER = {"resource": "ledger"}

# -- many steps under one limit ----------------------------------------------------------

WAREHOUSE_STEPS = 20
WAREHOUSE_STEP_S = 0.1


@step(tags=WAREHOUSE)
def warehouse_query(context: StepContext) -> int:
    time.sleep(WAREHOUSE_STEP_S)
    return os.getpid()


@job(executor_def=celery_executor)
def warehouse_queries() -> None:
    """20 independent steps tagged ``database=warehouse``."""
    for i in range(WAREHOUSE_STEPS):
        warehouse_query.alias(f"query_{i:02d}")()


# -- one limit per team ------------------------------------------------------------------

TEAMS = ("red", "green", "blue")
STEPS_PER_TEAM = 3
TEAM_STEP_S = 0.3


@step
def team_report(context: StepContext) -> str:
    time.sleep(TEAM_STEP_S)
    return str(context.tags["team"])


@job(executor_def=celery_executor)
def team_reports() -> None:
    """Three steps for each of three teams, interleaved (red_0, green_0, blue_0, red_1...)."""
    for i in range(STEPS_PER_TEAM):
        for team in TEAMS:
            team_report.with_tags({"team": team}).alias(f"{team}_{i}")()


# -- two tags, crossing orders -------------------------------------------------------------

BOTH_STEPS = 3
BOTH_STEP_S = 0.2


@step(tags={**WAREHOUSE, PRIORITY_TAG: 1})
def warehouse_holder(context: StepContext) -> str:
    """Holds ``database=warehouse`` until the test opens gate ``release`` of its run."""
    wait_for_gate(context.run_id, "release")
    return "warehouse"


@step(tags={**CRM, PRIORITY_TAG: 1})
def crm_holder(context: StepContext) -> str:
    """Holds ``api=crm`` until the test opens gate ``release`` of its run."""
    wait_for_gate(context.run_id, "release")
    return "crm"


@step(tags={**WAREHOUSE, **CRM})
def warehouse_then_crm(context: StepContext) -> str:
    time.sleep(BOTH_STEP_S)
    return context.step_key


@step(tags={**CRM, **WAREHOUSE})
def crm_then_warehouse(context: StepContext) -> str:
    time.sleep(BOTH_STEP_S)
    return context.step_key


@job(executor_def=celery_executor)
def warehouse_first() -> None:
    """Holds the warehouse (priority 1, so first); its other steps need both tags."""
    warehouse_holder()
    for i in range(BOTH_STEPS):
        warehouse_then_crm.alias(f"both_{i}")()


@job(executor_def=celery_executor)
def crm_first() -> None:
    """Holds the CRM API (priority 1, so first); its other steps need both, named the
    other way round."""
    crm_holder()
    for i in range(BOTH_STEPS):
        crm_then_warehouse.alias(f"both_{i}")()


# -- priority across runs ----------------------------------------------------------------

HIGH_PRIORITY = 5


@step(tags=LEDGER)
def ledger_blocker(context: StepContext) -> str:
    """Holds ``resource=ledger`` until the test opens gate ``release`` of its run."""
    wait_for_gate(context.run_id, "release")
    return "blocked"


@step(tags=LEDGER)
def ledger_write(context: StepContext) -> float:
    return time.time()


@job(executor_def=celery_executor)
def ledger_block() -> None:
    ledger_blocker()


@job(executor_def=celery_executor)
def ledger_low() -> None:
    ledger_write.alias("write")()


@job(executor_def=celery_executor)
def ledger_high() -> None:
    ledger_write.with_tags({PRIORITY_TAG: HIGH_PRIORITY}).alias("write")()


# -- crashes -------------------------------------------------------------------------------


@step(
    tags=WAREHOUSE,
    retry_policy=RetryPolicy(max_retries=1, retry_on=frozenset({FailureClass.INFRASTRUCTURE})),
)
def hold_until_killed(context: StepContext) -> int:
    """The first attempt holds its slot until its process is killed; the retry returns."""
    if context.attempt == 1:
        time.sleep(60)
    return context.attempt


@job(executor_def=celery_executor)
def killed_holder() -> None:
    hold_until_killed()


@step(tags=WAREHOUSE)
def warehouse_write(context: StepContext) -> float:
    return time.time()


@job(executor_def=celery_executor)
def warehouse_writer() -> None:
    warehouse_write()


SHORT_LEASE_TTL_MS = 3_000
"""Lease TTL the coordinator-kill test gives the celery executor (``slot_lease_ttl_s``),
so a dead coordinator's leases lapse in seconds rather than half a minute."""


@step(tags=WAREHOUSE)
def orphaned_write(context: StepContext) -> str:
    """Runs on while its coordinator is killed; ends when the test opens gate ``release``."""
    wait_for_gate(context.run_id, "release")
    return "orphaned"


@job(executor_def=celery_executor)
def orphaned_writer() -> None:
    orphaned_write()


def coordinate_in_this_process(run_id: str) -> None:
    """Coordinate stored run ``run_id`` here, as a coordinator worker would."""
    instance = Instance.from_env()
    outcome = coordinate_launched_run(
        run_id,
        instance=instance,
        redis_url=instance.redis_url,
        owner=f"test coordinator pid {os.getpid()}",
    )
    print(outcome.message, flush=True)
