"""jobs/live.py: the jobs app's declarations, and its list resync read in pages and bounded."""
from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from jobs import live as jobs_live
from jobs.models import Job

pytestmark = pytest.mark.django_db


def _jobs(n: int, owner=None, **fields) -> list[Job]:
    start = timezone.now() - timedelta(minutes=10)
    return [
        Job.objects.create(task_path="tests.jobs_tasks.noop", name=f"j{i}", owner=owner,
                           enqueued_at=start + timedelta(seconds=i), **fields)
        for i in range(n)
    ]


def test_a_resync_reads_every_changed_job_page_by_page_in_enqueue_order(monkeypatch):
    monkeypatch.setattr(jobs_live, "RESYNC_PAGE", 3)
    _jobs(7, status="RUNNING")
    names = [e["name"] for e in jobs_live._resync(None, since=timezone.now() - timedelta(hours=1), pending=[])]
    assert names == ["j0", "j1", "j2", "j3", "j4", "j5", "j6"]


def test_a_resync_sends_the_pending_jobs_first_and_each_job_once():
    old = _jobs(3, status="SUCCESSFUL")
    names = [e["name"] for e in jobs_live._resync(None, since=timezone.now() - timedelta(hours=1), pending=[str(old[2].pk)])]
    assert names == ["j2", "j0", "j1"]


def test_a_resync_stops_at_its_limit_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(jobs_live, "RESYNC_LIMIT", 4)
    _jobs(6, status="READY")
    with caplog.at_level(logging.WARNING, logger="jobs.live"):
        names = [e["name"] for e in jobs_live._resync(None, since=None, pending=[])]
    assert names == ["j0", "j1", "j2", "j3"]
    assert "stopped at 4 jobs (RESYNC_LIMIT)" in caplog.text


def test_without_a_time_a_resync_sends_the_unfinished_jobs_only():
    _jobs(1, status="SUCCESSFUL")
    running = _jobs(1, status="RUNNING")[0]
    assert [e["id"] for e in jobs_live._resync(None, since=None, pending=[])] == [str(running.pk)]


def test_a_users_resync_names_only_their_own_jobs():
    alice = get_user_model().objects.create_user("alice")
    bob = get_user_model().objects.create_user("bob")
    mine = _jobs(1, owner=alice, status="RUNNING")[0]
    _jobs(1, owner=bob, status="RUNNING")
    events = list(jobs_live._resync(alice, since=timezone.now() - timedelta(hours=1), pending=[], owner=alice))
    assert [e["id"] for e in events] == [str(mine.pk)]
