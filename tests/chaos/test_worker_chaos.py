"""Workers SIGKILLed and SIGSTOPped while jobs run, one of them right after it committed a job's
final state (issue 8's defect 3), on this run's database (SQLite, or PostgreSQL in CI's second
pass): no job lost, each ends exactly once, no notification or final event lost, every watcher
ends on its final state.

A job whose worker died runs again (at-least-once execution): the re-runs are counted and must
be there, since the faults hit busy workers; the final state is still reached once.
"""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_workers_killed_and_frozen_while_jobs_run_lose_no_job_and_leave_no_watcher_stale(run_chaos):
    outcome = run_chaos(jobs=30, workers=2, worker_kills=2, worker_stops=1, finish_kills=1, interval=1.5)
    assert outcome.targets() == {
        "jobs lost": 0,
        "notifications lost": 0,
        "watchers left on a stale state": 0,
        "final events lost": 0,
        "duplicated final states": 0,
        "broker crashes": 0,
    }
    assert outcome.final_states == {"SUCCESSFUL": 30}
    assert outcome.notification_rows_duplicated == 0
    assert outcome.crashes == []
    assert [what for _, what in outcome.faults if "was final, before its notification" in what] != []
    # The faults really hit running jobs: some ran again (at-least-once); each final state came once.
    assert outcome.jobs_rerun >= 1
    assert outcome.executions == 30 + outcome.extra_runs
