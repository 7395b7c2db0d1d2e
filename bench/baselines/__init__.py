"""The systems coreexec is compared with: plain Celery and Dagster.

Kept free of imports: the Dagster virtualenv imports this package and has no Celery.
"""
