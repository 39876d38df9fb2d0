"""The project's SQLite settings, applied to a real database file: WAL with synchronous=NORMAL."""
from __future__ import annotations

import copy

import pytest
from django.conf import settings
from django.db.backends.sqlite3.base import DatabaseWrapper


@pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3", reason="the database is not SQLite"
)
def test_a_connection_to_the_sqlite_file_uses_wal_without_an_fsync_per_commit(tmp_path, django_db_blocker):
    config = copy.deepcopy(settings.DATABASES["default"])
    config["NAME"] = str(tmp_path / "db.sqlite3")
    wrapper = DatabaseWrapper(config, alias="sqlite-settings-check")
    try:
        with django_db_blocker.unblock(), wrapper.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode")
            journal = cursor.fetchone()[0]
            cursor.execute("PRAGMA synchronous")
            synchronous = cursor.fetchone()[0]
    finally:
        wrapper.close()
    assert (journal, synchronous) == ("wal", 1)  # 1 is NORMAL (2 is FULL, SQLite's default)
