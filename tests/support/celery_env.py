"""The environment a test shares with the Celery workers, coordinators, containers and pods
it starts (one Redis as broker and event Redis, nothing else configured), and what a test
sends into it."""

from __future__ import annotations

import pytest

from celery_app.app import make_app
from celery_app.executor import CeleryExecutorConfig, settings_for
from celery_app.queues import DEFAULT_QUEUE
from celery_app.step_task import STEP_TASK_NAME
from coreexec.events import Event

# Settings a developer's shell may carry that would point the test's children elsewhere.
CLEARED = ("COREEXEC_RESULT_BACKEND", "COREEXEC_CELERY_CONFIG", "COREEXEC_RUN_LAUNCHER")


def export_celery_env(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    """Export ``redis_url`` as broker and event Redis; clear the settings in ``CLEARED``.

    Children started afterwards inherit it, so every process of the test agrees.
    """
    monkeypatch.setenv("COREEXEC_BROKER_URL", redis_url)
    monkeypatch.setenv("COREEXEC_REDIS_URL", redis_url)
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)


def publish_attempt_again(
    broker_url: str, start: Event, reference: str, *, shadow: str | None = None
) -> None:
    """Publish the message of the attempt ``start`` began once more (same task id, same
    arguments, to the default queue), as a broker redelivery would."""
    assert start.step_key is not None and start.attempt is not None
    settings = settings_for(CeleryExecutorConfig(broker=broker_url))
    with make_app(settings, set_as_current=False) as app:
        app.send_task(
            STEP_TASK_NAME,
            args=[start.run_id, start.step_key, start.attempt, start.attempt_id, reference],
            task_id=start.attempt_id,
            queue=DEFAULT_QUEUE,
            shadow=shadow,
            ignore_result=True,
        )
