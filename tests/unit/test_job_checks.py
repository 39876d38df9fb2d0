"""System checks for JOBS and for a database the worker could not claim from atomically."""
from __future__ import annotations

from jobs.checks import check_databases, check_settings


def ids(errors) -> list[str]:
    return [e.id for e in errors]


def test_the_project_settings_pass():
    assert check_settings() == []


def test_an_unknown_jobs_key_is_reported_with_the_known_keys(settings):
    settings.JOBS = {"POLL_INTERVALL": 1}
    [error] = check_settings()
    assert (error.id, error.msg) == ("jobs.E001", "Unknown JOBS key(s): POLL_INTERVALL.")


def test_a_negative_interval_is_reported(settings):
    settings.JOBS = {"POLL_INTERVAL": -1}
    assert ids(check_settings()) == ["jobs.E002"]


def test_a_concurrency_that_is_not_a_whole_number_is_reported(settings):
    settings.JOBS = {"CONCURRENCY": 1.5}
    assert ids(check_settings()) == ["jobs.E002"]


def test_a_stale_limit_too_close_to_the_heartbeat_is_reported(settings):
    settings.JOBS = {"HEARTBEAT_INTERVAL": 5, "STALE_AFTER": 8}
    assert ids(check_settings()) == ["jobs.E004"]


def test_sqlite_without_immediate_transactions_is_reported():
    databases = {"other": {"ENGINE": "django.db.backends.sqlite3", "NAME": "x.sqlite3", "OPTIONS": {}}}
    assert ids(check_databases(databases)) == ["jobs.E003"]


def test_sqlite_with_immediate_transactions_passes():
    databases = {"default": {"ENGINE": "django.db.backends.sqlite3", "OPTIONS": {"transaction_mode": "IMMEDIATE"}}}
    assert check_databases(databases) == []
