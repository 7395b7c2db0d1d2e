"""The Celery application of coreexec: ``celery -A celery_app worker -Q coreexec.high``.

``app`` is built from ``COREEXEC_*`` environment variables (see
:mod:`celery_app.settings`) when this package is imported; building it connects nowhere.
``celery_executor`` runs a job's steps as Celery tasks on the workers of that app;
``celery_docker_executor`` has those workers run each step in a container.
"""

from celery_app.app import CoreexecApp, make_app
from celery_app.docker_executor import CeleryDockerExecutorConfig, celery_docker_executor
from celery_app.executor import CeleryExecutorConfig, celery_executor
from celery_app.settings import CelerySettings

app = make_app(CelerySettings.from_env())

__all__ = [
    "CeleryDockerExecutorConfig",
    "CeleryExecutorConfig",
    "CelerySettings",
    "CoreexecApp",
    "app",
    "celery_docker_executor",
    "celery_executor",
    "make_app",
]
