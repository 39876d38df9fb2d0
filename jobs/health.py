"""Health checks: for `manage.py jobhealth` (workers, queues, broker) and the HTTP endpoint a load
balancer polls (this web process's database and hub).

Each check returns a Check: a name, ok, and a sentence a person can act on. They never raise:
an error while checking is itself the reason a check fails.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection
from django.db.models import Count, Min
from django.utils import timezone

from . import conf, workers
from .models import Job, JobStatus

__all__ = ["Check", "check_workers", "check_queues", "check_broker", "check_database", "check_hub"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    """One health check's verdict."""

    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict:
        return {"ok": self.ok, "detail": self.detail}


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def check_workers(max_age: float | None = None, now: datetime | None = None) -> Check:
    """Some worker heartbeated within max_age seconds (default JOBS["STALE_AFTER"])."""
    max_age = float(conf.get("STALE_AFTER")) if max_age is None else max_age
    now = now or timezone.now()
    try:
        alive = list(workers.alive(now).filter(heartbeat_at__gte=now - timedelta(seconds=max_age))
                     .values_list("id", "heartbeat_at"))
        if alive:
            latest = max(at for _, at in alive)
            return Check("workers", True, f"{len(alive)} worker(s) alive, last heartbeat "
                                          f"{_seconds((now - latest).total_seconds())} ago")
        from .models import Worker

        last = Worker.objects.order_by("-heartbeat_at").values_list("id", "heartbeat_at", "state").first()
    except Exception as exc:
        return Check("workers", False, f"could not read the workers: {exc}")
    if last is None:
        return Check("workers", False, "no worker has ever run (start `manage.py jobworker`)")
    worker_id, at, state = last
    return Check("workers", False, f"no worker heartbeated in the last {_seconds(max_age)}; the last was {worker_id} "
                                   f"({state}) {_seconds((now - at).total_seconds())} ago")


def check_queues(max_age: float | None = None, queues: list[str] | None = None,
                 now: datetime | None = None) -> list[Check]:
    """No due READY job waits longer than max_age seconds (default JOBS["HEALTH_MAX_READY_AGE"]),
    one Check per queue with waiting jobs (or one saying none waits)."""
    max_age = float(conf.get("HEALTH_MAX_READY_AGE")) if max_age is None else max_age
    now = now or timezone.now()
    try:
        rows = Job.objects.filter(status=JobStatus.READY, run_after__lte=now)
        if queues:
            rows = rows.filter(queue__in=queues)
        waiting = list(rows.values("queue").annotate(oldest=Min("run_after"), n=Count("id")).order_by("queue"))
    except Exception as exc:
        return [Check("queues", False, f"could not read the queues: {exc}")]
    if not waiting:
        return [Check("queues", True, "no job is waiting")]
    checks = []
    for row in waiting:
        age = (now - row["oldest"]).total_seconds()
        ok = age <= max_age
        detail = f"{row['n']} job(s) waiting, the oldest for {_seconds(age)}"
        checks.append(Check(f"queue {row['queue']}", ok, detail if ok else f"{detail} (limit {_seconds(max_age)})"))
    return checks


def check_broker(timeout: float | None = None) -> Check:
    """A STOMP session with NOTIFICATIONS["BROKER_URL"] opens within timeout seconds (the
    publisher's own connection code: URL list, TLS and all)."""
    from notifications.publisher import Publisher

    timeout = float(conf.get("HEALTH_BROKER_TIMEOUT")) if timeout is None else timeout
    try:
        publisher = Publisher()
    except Exception as exc:
        return Check("broker", False, f"the broker URL is not usable: {exc}")
    began = time.monotonic()
    try:
        publisher.start()
        while not publisher.connected and time.monotonic() - began < timeout:
            time.sleep(0.02)
        connected = publisher.connected
        where = str(publisher.url)
    finally:
        publisher.close(timeout=2.0)
    if connected:
        return Check("broker", True, f"{where} answered in {1000 * (time.monotonic() - began):.0f} ms")
    return Check("broker", False, f"no STOMP session with {where} within {timeout:g} s")


def check_database() -> Check:
    """This process's default database answers a query."""
    began = time.monotonic()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return Check("database", False, f"{connection.vendor} did not answer: {exc}")
    return Check("database", True, f"{connection.vendor} answered in {1000 * (time.monotonic() - began):.0f} ms")


async def check_hub(timeout: float = 2.0) -> Check:
    """This process's STOMP hub (started if no WebSocket started it yet) is connected."""
    try:
        from notifications.hub import get_hub

        hub = get_hub()
        connected = hub.connected or await hub.wait_connected(timeout)
    except Exception as exc:
        return Check("hub", False, f"no hub in this process: {exc}")
    if connected:
        return Check("hub", True, f"connected to {hub.url}")
    return Check("hub", False, f"not connected to {hub.url} (reconnecting)")
