"""A minimal Celery app for testing the process fixtures themselves.

Workers load it with ``-A tests.support.plain_celery_app``; broker and result backend
both come from ``$PLAIN_CELERY_BROKER`` (a Redis URL). Tests build a client for the same
broker with :func:`create_app` and send tasks by name.
"""

from __future__ import annotations

import os

from celery import Celery

BROKER_ENV_VAR = "PLAIN_CELERY_BROKER"
ADD_TASK = "plain.add"


def create_app(broker_url: str, backend_url: str | None = None) -> Celery:
    """A Celery app on ``broker_url``, results in ``backend_url`` (default: the broker)."""
    backend = backend_url if backend_url is not None else broker_url
    app = Celery("plain_celery_app", broker=broker_url, backend=backend)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
    )

    @app.task(name=ADD_TASK, shared=False)  # type: ignore[untyped-decorator]
    def add(x: int, y: int) -> int:
        return x + y

    return app


# The worker's app. Without the variable (an import for type checking, say) it points at
# an in-memory broker instead of failing at import.
_broker_url = os.environ.get(BROKER_ENV_VAR)
app = (
    create_app(_broker_url)
    if _broker_url
    else create_app("memory://", backend_url="cache+memory://")
)
