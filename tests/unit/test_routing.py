"""Where priority becomes a queue, the Celery app's settings, and the celery executor's
config: pure functions and objects, no broker needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_app.app import make_app
from celery_app.executor import CeleryExecutorConfig, celery_executor
from celery_app.queues import ALL_QUEUES, DEFAULT_QUEUE, HIGH_QUEUE, LOW_QUEUE, RUNS_QUEUE
from celery_app.routing import (
    BrokerKind,
    PriorityBand,
    StepRouter,
    message_priority,
    priority_level,
)
from celery_app.settings import CelerySettings
from coreexec.errors import ConfigError
from coreexec.plan import PlannedStep
from coreexec.tags import PRIORITY_TAG, QUEUE_TAG


def planned(key: str, priority: int = 0, **tags: str) -> PlannedStep:
    all_tags = {PRIORITY_TAG: str(priority), **{k.replace("__", "/"): v for k, v in tags.items()}}
    return PlannedStep(key, key, (), ("result",), tags=all_tags, priority=priority)


# -- priority -> level -> message priority --------------------------------------------


@pytest.mark.parametrize(
    ("priority", "level"),
    [(100, 0), (20, 0), (10, 1), (19, 1), (5, 2), (2, 3), (1, 4), (0, 5), (-1, 6), (-4, 7),
     (-5, 8), (-9, 8), (-10, 9), (-1000, 9)],
)  # fmt: skip
def test_priority_levels(priority: int, level: int) -> None:
    assert priority_level(priority) == level


def test_levels_never_invert_priorities() -> None:
    levels = [priority_level(p) for p in range(-50, 51)]
    assert levels == sorted(levels, reverse=True)
    assert set(levels) == set(range(10))


def test_redis_serves_lower_numbers_first_and_rabbitmq_higher() -> None:
    # Redis (kombu): 10 must get a smaller number than 0, which gets a smaller one than -10.
    redis_order = [message_priority(p, BrokerKind.REDIS) for p in (10, 0, -10)]
    assert redis_order == sorted(redis_order) and len(set(redis_order)) == 3
    amqp_order = [message_priority(p, BrokerKind.AMQP) for p in (10, 0, -10)]
    assert amqp_order == sorted(amqp_order, reverse=True) and len(set(amqp_order)) == 3
    assert all(0 <= value <= 9 for value in redis_order + amqp_order)


@pytest.mark.parametrize(
    ("url", "kind"),
    [("redis://h:6379/0", BrokerKind.REDIS), ("rediss://h/1", BrokerKind.REDIS),
     ("amqp://guest@h//", BrokerKind.AMQP), ("pyamqp://h", BrokerKind.AMQP)],
)  # fmt: skip
def test_broker_kind_of_url(url: str, kind: BrokerKind) -> None:
    assert BrokerKind.of_url(url) is kind


# -- bands and the queue tag -----------------------------------------------------------


@pytest.mark.parametrize(
    ("priority", "queue"),
    [(5, HIGH_QUEUE), (50, HIGH_QUEUE), (4, DEFAULT_QUEUE), (0, DEFAULT_QUEUE),
     (-4, DEFAULT_QUEUE), (-5, LOW_QUEUE), (-50, LOW_QUEUE)],
)  # fmt: skip
def test_default_bands(priority: int, queue: str) -> None:
    assert StepRouter().route(planned("s", priority)).queue == queue


def test_queue_tag_names_the_queue_outright() -> None:
    router = StepRouter()
    route = router.route(planned("gpu_step", 10, coreexec__queue="gpu"))
    assert route.queue == "gpu"
    assert route.message_priority == message_priority(10, BrokerKind.REDIS)
    assert QUEUE_TAG == "coreexec/queue"


def test_custom_bands_first_match_wins_and_default_queue() -> None:
    router = StepRouter(
        [
            PriorityBand(queue="urgent", min_priority=100),
            PriorityBand(queue="soon", min_priority=1, max_priority=200),
        ],
        default_queue="rest",
    )
    assert router.route(planned("a", 150)).queue == "urgent"
    assert router.route(planned("b", 3)).queue == "soon"
    assert router.route(planned("c", 0)).queue == "rest"


def test_band_needs_a_bound_in_order() -> None:
    with pytest.raises(ValueError, match="min_priority"):
        PriorityBand(queue="q")
    with pytest.raises(ValueError, match="above max_priority"):
        PriorityBand(queue="q", min_priority=5, max_priority=1)


# -- executor config -------------------------------------------------------------------


def parse(raw: dict[str, object]) -> CeleryExecutorConfig:
    parsed = celery_executor.parse_config(raw, path="run_config.execution.config")
    assert isinstance(parsed, CeleryExecutorConfig)
    return parsed


def test_config_defaults() -> None:
    config = parse({})
    assert config.default_queue == DEFAULT_QUEUE
    assert [band.queue for band in config.priority_bands] == [HIGH_QUEUE, LOW_QUEUE]
    assert config.retries.is_enabled
    assert config.heartbeat_timeout_s >= 2 * config.heartbeat_interval_s


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"heartbeat_interval_s": 2, "heartbeat_timeout_s": 3}, "heartbeat_timeout_s"),
        ({"queued_timeout_s": 0}, "queued_timeout_s"),
        ({"priority_bands": [{"queue": "x"}]}, "priority_bands.0"),
        ({"config_source": {"accept_content": ["pickle", "json"]}}, "config_source"),
        ({"config_source": {"task_serializer": "pickle"}}, "config_source"),
        ({"brokr": "redis://x"}, "brokr"),
        ({"retries": {"enabled": {}, "disabled": {}}}, "retries"),
    ],
)
def test_bad_config_names_the_field(raw: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    assert caught.value.path == f"run_config.execution.config.{path}"
    assert f"run_config.execution.config.{path}" in str(caught.value)


def test_configured_executor_validates_at_definition() -> None:
    with pytest.raises(ConfigError, match=r"celery\.configured\.heartbeat_interval_s"):
        celery_executor.configured({"heartbeat_interval_s": -1})


# -- settings and the app --------------------------------------------------------------


def test_settings_from_env_defaults_and_redis_fallback() -> None:
    settings = CelerySettings.from_env({"COREEXEC_BROKER_URL": "redis://b:1/2"})
    assert settings.backend_url == "redis://b:1/2"
    assert settings.events_redis_url == "redis://b:1/2"
    explicit = CelerySettings.from_env(
        {"COREEXEC_BROKER_URL": "amqp://r//", "COREEXEC_REDIS_URL": "redis://e:3/0"}
    )
    assert explicit.events_redis_url == "redis://e:3/0"
    with pytest.raises(ConfigError, match="COREEXEC_REDIS_URL"):
        _ = CelerySettings.from_env({"COREEXEC_BROKER_URL": "amqp://r//"}).events_redis_url


def test_settings_read_extra_celery_config_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "celery.yaml"
    path.write_text("worker_max_tasks_per_child: 50\n", encoding="utf-8")
    settings = CelerySettings.from_env({"COREEXEC_CELERY_CONFIG": str(path)})
    assert settings.celery_config == {"worker_max_tasks_per_child": 50}
    assert make_app(settings, set_as_current=False).conf.worker_max_tasks_per_child == 50
    with pytest.raises(ConfigError, match="COREEXEC_CELERY_CONFIG"):
        CelerySettings.from_env({"COREEXEC_CELERY_CONFIG": str(tmp_path / "missing.yaml")})
    with pytest.raises(ConfigError, match="COREEXEC_CELERY_CONFIG"):
        CelerySettings.from_env({"COREEXEC_CELERY_CONFIG": "no_such_module_anywhere"})


def test_app_is_json_only_late_ack_and_declares_priority_queues() -> None:
    # An unreachable broker: building the app must not connect.
    app = make_app(CelerySettings(broker_url="redis://127.0.0.1:1/0"), set_as_current=False)
    conf = app.conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.result_accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    # Workers send task events (Flower); the coordinator's task-sent event is opt-in: it
    # costs a publish per step and only shows steps still queued.
    assert conf.worker_send_task_events and not conf.task_send_sent_event
    queues = {queue.name: queue for queue in conf.task_queues}
    assert set(queues) == set(ALL_QUEUES)
    assert all(q.max_priority == 10 for q in queues.values())  # x-max-priority on RabbitMQ
    options = conf.broker_transport_options
    assert options["priority_steps"] == list(range(10))
    assert options["queue_order_strategy"] == "priority"
    assert conf.task_routes["coreexec.coordinate_run"] == {"queue": RUNS_QUEUE}
    assert {"coreexec.step", "coreexec.coordinate_run"} <= set(app.tasks)
    step = app.tasks["coreexec.step"]
    assert step.acks_late and step.reject_on_worker_lost and step.ignore_result


def test_app_refuses_pickle_from_user_settings() -> None:
    settings = CelerySettings(celery_config={"accept_content": ["json", "pickle"]})
    with pytest.raises(ConfigError, match="accept_content"):
        make_app(settings, set_as_current=False)


def test_amqp_broker_gets_no_redis_transport_options() -> None:
    app = make_app(
        CelerySettings(broker_url="amqp://guest@127.0.0.1:1//", redis_url="redis://x:1/0"),
        set_as_current=False,
    )
    assert not app.conf.broker_transport_options
