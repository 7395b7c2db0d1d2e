"""Settings resolved in one place, and URLs shown with their passwords masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_app.settings import CelerySettings
from coreexec.errors import ConfigError
from coreexec.instance import Instance
from coreexec.io_managers import FilesystemIOManager, OutputKey
from coreexec.object_store_io import ObjectStoreIOManager
from coreexec.settings import Settings
from coreexec.storage import SqliteRunStorage
from coreexec.urls import masked_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://user:s3cret@db:5432/runs", "postgresql://user:***@db:5432/runs"),
        ("postgresql://user:p%40ss@db/runs?sslmode=require", "postgresql://user:***@db/runs?sslmode=require"),
        ("postgresql://user@db/runs?password=s3cret&sslmode=require", "postgresql://user@db/runs?password=***&sslmode=require"),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
        ("postgresql://user:s3cret@[::1]:5432/runs", "postgresql://user:***@[::1]:5432/runs"),
    ],
)  # fmt: skip
def test_masked_url_hides_passwords_only(url: str, shown: str) -> None:
    assert masked_url(url) == shown


def test_defaults_resolve_under_the_home(tmp_path: Path) -> None:
    settings = Settings.from_env({"COREEXEC_HOME": str(tmp_path)})
    assert settings.resolved_storage_url == f"sqlite:///{tmp_path / 'runs.db'}"
    assert settings.resolved_io_url == f"file://{tmp_path / 'storage'}"
    assert settings.resolved_broker_url == "redis://127.0.0.1:6379/0"
    assert settings.resolved_redis_url == settings.resolved_broker_url
    assert settings.resolved()["result_backend"] == ("redis://127.0.0.1:6379/0", "the broker")


def test_a_broker_that_is_not_redis_needs_a_redis_url() -> None:
    settings = Settings.from_env({"COREEXEC_BROKER_URL": "amqp://guest:pw@rabbit//"})
    with pytest.raises(ConfigError, match="set COREEXEC_REDIS_URL"):
        _ = settings.resolved_redis_url
    shown = settings.resolved()
    assert shown["broker"] == ("amqp://guest:***@rabbit//", "COREEXEC_BROKER_URL")
    assert shown["redis"][0] == "(none)"


def test_celery_settings_read_the_same_urls_and_hide_passwords() -> None:
    env = {
        "COREEXEC_BROKER_URL": "redis://:pw-broker@cache:6379/0",
        "COREEXEC_STORAGE_URL": "postgresql://u:pw-db@db/runs",
        "COREEXEC_IO_URL": "s3://bucket/outputs",
    }
    settings = CelerySettings.from_env(env)
    assert settings.core() == Settings.from_env(env).model_copy(
        update={"broker_url": env["COREEXEC_BROKER_URL"]}
    )
    assert "pw-broker" not in repr(settings) and "pw-db" not in repr(settings.core())
    assert "pw-db" not in str(settings)


def test_the_instance_follows_the_settings(tmp_path: Path) -> None:
    default = Instance.from_settings(Settings(home=str(tmp_path)))
    assert isinstance(default.storage, SqliteRunStorage)
    assert isinstance(default.io_manager(), FilesystemIOManager)
    other = Instance.from_settings(
        Settings(home=str(tmp_path), storage_url=f"sqlite:///{tmp_path}/elsewhere.db",
                 io_url="memory://coreexec-unit/outputs")
    )  # fmt: skip
    assert isinstance(other.storage, SqliteRunStorage)
    assert other.storage.path == tmp_path / "elsewhere.db"
    manager = other.io_manager()
    assert isinstance(manager, ObjectStoreIOManager) and other.io_manager() is manager
    manager.store(OutputKey("r", "s", "result"), [1])
    assert ObjectStoreIOManager("memory://coreexec-unit/outputs").load(
        OutputKey("r", "s", "result")
    ) == [1]


def test_a_run_keeps_the_outputs_url_it_was_made_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery_app import celery_executor
    from coreexec.runs.create import create_run
    from coreexec.tags import IO_URL_TAG

    monkeypatch.delenv("COREEXEC_IO_URL", raising=False)
    instance = Instance.at(tmp_path)
    ref = "tests.jobs.core_jobs:scale_job"
    plain = create_run(ref, instance=instance)
    assert IO_URL_TAG not in plain.tags
    assert isinstance(instance.io_manager_for(plain), FilesystemIOManager)

    executor = celery_executor.configured({"io_url": "memory://coreexec-unit/run"})
    tagged = create_run(ref, instance=instance, executor_def=executor)
    assert tagged.tags[IO_URL_TAG] == "memory://coreexec-unit/run"
    # Any process reading the run, whatever its own settings, finds the same outputs.
    other = Instance.at(tmp_path / "elsewhere", io_url="memory://coreexec-unit/other")
    chosen = other.io_manager_for(instance.storage.get_run(tagged.run_id))
    assert isinstance(chosen, ObjectStoreIOManager) and chosen.url == "memory://coreexec-unit/run"
    assert other.io_manager_for(tagged) is chosen

    from_env = Instance.at(tmp_path, io_url="memory://coreexec-unit/env")
    assert create_run(ref, instance=from_env).tags[IO_URL_TAG] == "memory://coreexec-unit/env"
