"""``make_app(settings)``: the Celery application of coreexec.

JSON only (a message in any other format is refused), late acknowledgement with
re-delivery when a worker process dies, one message reserved per worker process, task
events on for Flower (the coordinator's task-sent events are opt-in, as in Celery), the
four coreexec queues declared with priority support. User
settings (``COREEXEC_CELERY_CONFIG`` or the executor's ``config_source``) go over these
defaults, except those that would let pickle in, which are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Celery

import celery_app.worker_signals  # noqa: F401  (connects the worker hooks)
from celery_app.queues import DEFAULT_QUEUE, RUNS_QUEUE, declared_queues, redis_transport_options
from celery_app.routing import BrokerKind
from celery_app.settings import CELERY_CONFIG_ENV, CelerySettings
from coreexec.errors import ConfigError

APP_NAME = "coreexec"
COORDINATOR_TASK_NAME = "coreexec.coordinate_run"
_SERIALIZER_SETTINGS = ("task_serializer", "result_serializer", "event_serializer")
_CONTENT_SETTINGS = ("accept_content", "result_accept_content")


class CoreexecApp(Celery):  # type: ignore[misc]  # Celery ships no type information
    """A Celery app that knows its coreexec settings (``app.settings``)."""

    settings: CelerySettings


def base_config(settings: CelerySettings) -> dict[str, Any]:
    """coreexec's Celery settings before user overrides."""
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "result_backend": settings.backend_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "task_queues": declared_queues(),
        "task_default_queue": DEFAULT_QUEUE,
        "task_default_exchange": DEFAULT_QUEUE,
        "task_default_routing_key": DEFAULT_QUEUE,
        "task_create_missing_queues": True,
        "task_routes": {COORDINATOR_TASK_NAME: {"queue": RUNS_QUEUE}},
        "broker_connection_retry_on_startup": True,
        "result_expires": 24 * 3600,
        "worker_hijack_root_logger": False,
        # Survives a broker outage while a message is held (see celery_app.consumer).
        "worker_consumer": "celery_app.consumer:CoreexecConsumer",
    }
    if BrokerKind.of_url(settings.broker_url) is BrokerKind.REDIS:
        config["broker_transport_options"] = redis_transport_options()
    if settings.broker_url.startswith("redis://"):
        # Survives a queue item that is not a message (see celery_app.broker_transport).
        config["broker_transport"] = "celery_app.broker_transport:Transport"
    return config


def check_json_only(extra: Mapping[str, Any], *, path: str) -> None:
    """Refuse user settings that would accept or send anything but JSON."""
    for name in _SERIALIZER_SETTINGS:
        if name in extra and extra[name] != "json":
            raise ConfigError(
                f"{path}.{name}: coreexec messages are JSON only, got {extra[name]!r}; "
                "remove the setting",
                path=f"{path}.{name}",
            )
    for name in _CONTENT_SETTINGS:
        if name in extra and list(extra[name]) not in (["json"], ["application/json"]):
            raise ConfigError(
                f"{path}.{name}: coreexec accepts JSON only (pickle would run code sent by "
                f"anyone who can publish), got {extra[name]!r}; remove the setting",
                path=f"{path}.{name}",
            )


def make_app(settings: CelerySettings | None = None, *, set_as_current: bool = True) -> CoreexecApp:
    """The coreexec Celery app for ``settings`` (default: from the environment).

    Creating it connects nowhere: connections are made when a message is sent or a
    worker starts.
    """
    from celery_app.coordinator_task import register_coordinator_task
    from celery_app.step_task import register_step_task

    chosen = settings or CelerySettings.from_env()
    check_json_only(chosen.celery_config, path=CELERY_CONFIG_ENV)
    config = base_config(chosen)
    transport = dict(config.get("broker_transport_options", {}))
    extra = dict(chosen.celery_config)
    transport.update(extra.pop("broker_transport_options", None) or {})
    config.update(extra)
    if transport:
        config["broker_transport_options"] = transport
    app = CoreexecApp(
        APP_NAME, include=list(chosen.include), set_as_current=set_as_current, autofinalize=True
    )
    app.settings = chosen
    app.conf.update(config)
    register_step_task(app)
    register_coordinator_task(app)
    return app
