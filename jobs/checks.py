"""System checks for the JOBS settings, the database the worker claims from, and a project's wiring.

Ids: jobs.E001-E009 for the settings and databases, E020-E029 and W020-W029 for what a project
adds when it installs the app (the TASKS backend, INSTALLED_APPS, the URLs); every message names
the line to add or fix.
"""
from __future__ import annotations

from django.core.checks import Error, Warning, register

from notifications.checks import settings_module, unroutable

from . import conf

__all__ = ["check_settings", "check_databases", "check_installation", "JOB_BACKEND"]

# The dotted path a project writes in TASKS.
JOB_BACKEND = "jobs.backends.JobBackend"

_POSITIVE = ("POLL_INTERVAL", "HEARTBEAT_INTERVAL", "STALE_AFTER", "CANCEL_POLL_INTERVAL", "PROGRESS_INTERVAL", "RETRY_BACKOFF", "RETRY_BACKOFF_MAX")
_WHOLE = ("CONCURRENCY", "LOG_LIMIT", "MAX_ATTEMPTS")


@register()
def check_settings(app_configs=None, **kwargs):
    from django.conf import settings

    errors = []
    configured = getattr(settings, "JOBS", {}) or {}
    if not isinstance(configured, dict):
        return [Error("JOBS must be a dict.", id="jobs.E001")]
    unknown = sorted(set(configured) - set(conf.DEFAULTS))
    if unknown:
        errors.append(Error(f"Unknown JOBS key(s): {', '.join(unknown)}.",
                            hint=f"Known keys: {', '.join(sorted(conf.DEFAULTS))}.", id="jobs.E001"))
    for key in _POSITIVE:
        value = conf.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            errors.append(Error(f"JOBS[{key!r}] must be a positive number, not {value!r}.", id="jobs.E002"))
    for key in _WHOLE:
        value = conf.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            errors.append(Error(f"JOBS[{key!r}] must be a whole number of at least 1, not {value!r}.", id="jobs.E002"))
    for key in ("TIME_LIMIT",):
        value = conf.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            errors.append(Error(f"JOBS[{key!r}] must be None or a positive number of seconds, not {value!r}.", id="jobs.E002"))
    for key in ("PREFETCH",):
        value = conf.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            errors.append(Error(f"JOBS[{key!r}] must be a whole number of at least 0, not {value!r}.", id="jobs.E002"))
    for key, none_ok in (("PREFETCH_SECONDS", True), ("DEBUG_REPORT_STEP_DELAY", False)):
        value = conf.get(key)
        if value is None and none_ok:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            allowed = "None or zero or more seconds" if none_ok else "zero or more seconds"
            errors.append(Error(f"JOBS[{key!r}] must be {allowed}, not {value!r}.", id="jobs.E002"))
    grace = conf.get("SHUTDOWN_GRACE")
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or grace < 0:
        errors.append(Error(f"JOBS['SHUTDOWN_GRACE'] must be zero or more seconds, not {grace!r}.", id="jobs.E002"))
    if not errors and conf.get("STALE_AFTER") <= 2 * conf.get("HEARTBEAT_INTERVAL"):
        errors.append(Error("JOBS['STALE_AFTER'] must be more than twice JOBS['HEARTBEAT_INTERVAL'], or live jobs look dead.",
                            id="jobs.E004"))

    errors.extend(check_databases(settings.DATABASES))
    return errors


def check_databases(databases: dict) -> list[Error]:
    """jobs.E003 for every SQLite database whose transactions would not take the write lock at BEGIN."""
    errors = []
    for alias, db in databases.items():
        if db.get("ENGINE") == "django.db.backends.sqlite3":
            mode = str((db.get("OPTIONS") or {}).get("transaction_mode") or "").upper()
            if mode not in {"IMMEDIATE", "EXCLUSIVE"}:
                errors.append(Error(
                    f"DATABASES[{alias!r}] is SQLite without transaction_mode IMMEDIATE: job claims would not be atomic "
                    "across worker processes.",
                    hint=f'Add DATABASES[{alias!r}]["OPTIONS"] = {{"transaction_mode": "IMMEDIATE", "timeout": 20}} '
                    "to your settings (or add the key to the OPTIONS you have).",
                    id="jobs.E003",
                ))
    return errors


def _is_job_backend(path) -> bool | None:
    """True for JobBackend or a subclass, False for another backend, None if it does not import."""
    from django.utils.module_loading import import_string

    from .backends import JobBackend

    try:
        backend = import_string(str(path))
    except Exception:  # noqa: BLE001 (Django's own tasks check reports a backend that does not import)
        return None
    return isinstance(backend, type) and issubclass(backend, JobBackend)


@register()
def check_installation(app_configs=None, **kwargs):
    """What a project adds to use the jobs: the TASKS backend, the notifications app, the pages' URLs."""
    from django.apps import apps
    from django.conf import settings

    errors = []
    tasks = getattr(settings, "TASKS", {}) or {}
    if isinstance(tasks, dict):
        ours = [alias for alias, config in tasks.items() if isinstance(config, dict) and _is_job_backend(config.get("BACKEND")) is True]
        if not ours:
            errors.append(Error(
                "No TASKS backend is jobs.backends.JobBackend, so tasks never become jobs and `manage.py jobworker` "
                "has nothing to run.",
                hint=f'Add TASKS = {{"default": {{"BACKEND": "{JOB_BACKEND}"}}}} to your settings ({settings_module() or "settings.py"}).',
                id="jobs.E020",
            ))
        elif "default" not in ours:
            errors.append(Warning(
                f"TASKS['default'] is not jobs.backends.JobBackend (only {', '.join(map(repr, ours))} is): tasks "
                "enqueued without using(backend=...) and the built-in debug report do not become jobs.",
                hint=f'Make it TASKS["default"] = {{"BACKEND": "{JOB_BACKEND}"}}, and run the worker with '
                "`manage.py jobworker --backend <alias>` for the others.",
                id="jobs.W020",
            ))
    if not apps.is_installed("notifications"):
        errors.append(Error(
            "'jobs' needs 'notifications' in INSTALLED_APPS: job events, owners' notifications and the live "
            "pages are delivered by it.",
            hint="Add 'notifications' to INSTALLED_APPS, before 'jobs'.",
            id="jobs.E021",
        ))
    if not unroutable("jobs:list") and (login_url := _unresolvable_login_url()):
        errors.append(Warning(
            f"LOGIN_URL ({login_url!r}) leads nowhere, so the jobs pages send visitors who are not logged in "
            "to a 404.",
            hint='Set LOGIN_URL = "admin:login" (the admin\'s login page, for staff users) or the name of your own '
            "login page.",
            id="jobs.W022",
        ))
    if unroutable("jobs:list"):
        errors.append(Warning(
            "The jobs URLs are not in ROOT_URLCONF, so job pages, download links and Cancel buttons lead nowhere.",
            hint=f'Add path("jobs/", include("jobs.urls")) to urlpatterns in '
            f"{getattr(settings, 'ROOT_URLCONF', 'your URLconf')}.",
            id="jobs.W021",
        ))
    return errors



def _unresolvable_login_url() -> str | None:
    """settings.LOGIN_URL when it is a path on this site that no URL pattern serves, else None."""
    from django.conf import settings
    from django.shortcuts import resolve_url
    from django.urls import Resolver404, get_script_prefix, resolve

    login_url = str(settings.LOGIN_URL)
    try:
        path = resolve_url(login_url)
    except Exception:  # noqa: BLE001 (a URLconf that does not import is Django's own check)
        return None
    if "://" in path or not path.startswith("/"):
        return None  # another site (single sign-on): not ours to judge
    prefix = get_script_prefix()
    try:
        resolve(path.split("?", 1)[0].removeprefix(prefix.rstrip("/")) or "/")
    except Resolver404:
        return login_url
    except Exception:  # noqa: BLE001
        return None
    return None
