from __future__ import annotations

from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from . import metrics, ops_checks, ops_live  # noqa: F401  (jobs.E1xx checks; /topic/ops.overview)
        from .backends import install_task_log

        install_task_log()  # a cancelled job is not logged as a failed task
        metrics.connect_signals()
