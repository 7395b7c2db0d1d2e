"""The example ETL job of :mod:`coreexec.examples.etl`, on the celery executor.

``coreexec submit celery_app.examples:defs.etl_job --wait`` runs it on a worker fleet
(`coreexec worker -Q coreexec.high,coreexec.default,coreexec.low,coreexec.runs`).
"""

from __future__ import annotations

from celery_app.executor import celery_executor
from coreexec import Definitions
from coreexec.examples.etl import etl_job

defs = Definitions(jobs=[etl_job], executor=celery_executor)
