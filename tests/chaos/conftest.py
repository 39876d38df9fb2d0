"""Fixtures of the chaos suite: the database a run uses and a runner that shows the logs on failure.

The database follows the test run's: SQLite (a file each run copies from one migrated template),
or, when DATABASE_URL names PostgreSQL (CI's second pass), a fresh database made from
TEST_POSTGRES_URL for each run.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import port_open, service_missing

from .harness import ChaosConfig, ChaosRun, Outcome


@pytest.fixture(scope="session")
def chaos_db() -> str:
    return "postgres" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite"


@pytest.fixture(scope="session")
def chaos_postgres(chaos_db) -> str | None:
    if chaos_db != "postgres":
        return None
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url or not port_open("127.0.0.1", 5432):
        service_missing("PostgreSQL chaos runs need TEST_POSTGRES_URL and a running server")
    return url


@pytest.fixture(scope="session")
def chaos_template(tmp_path_factory, chaos_db, chaos_postgres) -> Path | str | None:
    """One migrated database with the users and sessions, which every run copies."""
    if chaos_db == "sqlite":
        yield ChaosRun.make_template(tmp_path_factory.mktemp("chaos-template"))
        return
    name = ChaosRun.make_postgres_template(chaos_postgres, tmp_path_factory.mktemp("chaos-template"))
    try:
        yield name
    finally:
        ChaosRun.drop_postgres_template(chaos_postgres, name)


@pytest.fixture
def run_chaos(tmp_path, chaos_db, chaos_template, chaos_postgres):
    """run_chaos(**config) -> Outcome: one run of the harness on this test run's database."""
    postgres = chaos_postgres

    def run(**values) -> Outcome:
        chaos = ChaosRun(ChaosConfig(db=chaos_db, **values), tmp_path / "run", template_db=chaos_template,
                         postgres_url=postgres)
        try:
            outcome = chaos.execute()
        except BaseException:
            print(chaos.logs())
            raise
        finally:
            chaos.close()
        print(outcome.summary())  # shown when the test fails
        return outcome

    return run
