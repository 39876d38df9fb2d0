"""Settings for bench/jobs_bench.py: the project's, with both task backends on one database.

"default" is this project's JobBackend, "tasksdb" is django-tasks-db's DatabaseBackend; a run
uses one of them, so both are measured on the same database with the same settings. DEBUG is
off (it keeps every query in memory) and connections are persistent (CONN_MAX_AGE None).
"""
from project.settings import *  # noqa: F401,F403

DEBUG = False
INSTALLED_APPS = [*INSTALLED_APPS, "django_tasks_db"]  # noqa: F405
DATABASES["default"]["CONN_MAX_AGE"] = None  # noqa: F405
TASKS = {
    "default": {"BACKEND": "jobs.backends.JobBackend", "QUEUES": ["default", "reports"]},
    "tasksdb": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default", "reports"]},
}
JOBS = {"CONCURRENCY": 1}
# Quiet for both: db_worker -v 0 silences django.tasks' two INFO lines per task, so ours must too.
LOGGING = {
    **LOGGING,  # noqa: F405
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {"django.tasks": {"level": "WARNING"}, "django_tasks_db": {"level": "WARNING"}},
}
