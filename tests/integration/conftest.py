"""Fixtures of the submission tests: the environment a coordinator worker and step workers
share, and a Celery run launcher that talks to this test's broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_app.app import make_app
from celery_app.run_launcher import CeleryRunLauncher
from celery_app.settings import CelerySettings
from tests.support.fleet_fixtures import (  # noqa: F401  (fixtures of the fleet tests)
    postgres_server,
    postgres_url,
    s3_env,
    s3_server,
)


@pytest.fixture
def env(celery_env: str, coreexec_home: Path) -> Path:
    """The shared Celery environment (tests/conftest.py); the home it exports."""
    return coreexec_home


@pytest.fixture
def launcher(env: Path) -> CeleryRunLauncher:
    # celery_app.app was built when first imported; this one sees the test's broker.
    return CeleryRunLauncher(make_app(CelerySettings.from_env(), set_as_current=False))
