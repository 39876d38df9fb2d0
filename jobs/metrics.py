"""Prometheus metrics (prometheus_client, the standard exposition format), one set per process.

Every process counts what happens in it: jobs enqueued (any process), started, succeeded,
failed, cancelled and retried and their durations (workers), by task and queue, from Django's
task signals (task_enqueued, task_started, task_finished) and the worker's retry hook; plus
this process's publisher, hub, WebSocket endpoint, outbox relay and CPU/memory (notifications.metrics
and prometheus_client's process collectors). Web processes serve them at /ops/metrics together with
gauges read from the database at each scrape (queue depth and oldest READY age per queue, jobs
per state, workers per state and alive, the outbox's backlog), which are the same whichever process answers; workers
serve their own with `jobworker --metrics-port`. So Prometheus scrapes every process and sums:
``sum by (task, queue) (rate(jobs_succeeded_total[5m]))``, and takes the database gauges from any
one web process: ``max by (queue) (jobs_queue_depth)``. (prometheus_client's multiprocess mode is
not used: it cannot carry custom collectors such as the hub's.)

Access: a request passes with ``Authorization: Bearer <JOBS["METRICS_TOKEN"]>`` or from an
address in JOBS["METRICS_ALLOWED_IPS"] (addresses or networks). With neither set, only loopback
is allowed while DEBUG is on, and nobody in production. Refusals are counted
(jobs_metrics_refused_total) and logged.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from django.db.models import Count, Min
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils import timezone
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from notifications.metrics import OutboxBacklogCollector, live_collectors

from . import conf

__all__ = [
    "REGISTRY",
    "DatabaseCollector",
    "connect_signals",
    "count_outcomes",
    "exposition",
    "allowed",
    "serve",
]

logger = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)
for _collector in live_collectors():
    REGISTRY.register(_collector)

_LABELS = ["task", "queue"]
ENQUEUED = Counter("jobs_enqueued", "Jobs enqueued by this process.", _LABELS, registry=REGISTRY)
STARTED = Counter("jobs_started", "Job runs started by this worker.", _LABELS, registry=REGISTRY)
SUCCEEDED = Counter("jobs_succeeded", "Jobs that ended SUCCESSFUL here.", _LABELS, registry=REGISTRY)
FAILED = Counter("jobs_failed", "Jobs that ended FAILED here (time-outs and lost workers included).", _LABELS,
                 registry=REGISTRY)
CANCELLED = Counter("jobs_cancelled", "Jobs that ended CANCELLED here.", _LABELS, registry=REGISTRY)
RETRIED = Counter("jobs_retried", "Failed attempts queued to run again by this worker.", _LABELS, registry=REGISTRY)
DURATION = Histogram(
    "jobs_duration_seconds", "Run time of finished jobs (start to finish of the last attempt).",
    [*_LABELS, "status"], registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600),
)
REFUSED = Counter("jobs_metrics_refused", "Metrics requests refused (no token, address not allowed).",
                  registry=REGISTRY)
# One warning per this many seconds about refused scrapes (a misconfigured scraper retries often).
REFUSAL_LOG_INTERVAL = 60.0
_last_refusal_log = 0.0
_refusals = 0


# Counting ----------------------------------------------------------------------------------------


def _labels(result: Any) -> tuple[str, str]:
    task = result.task
    return getattr(task, "module_path", "") or "unknown", getattr(task, "queue_name", "") or "default"


def _on_enqueued(sender: Any, task_result: Any, **kwargs: Any) -> None:
    ENQUEUED.labels(*_labels(task_result)).inc()


def _on_started(sender: Any, task_result: Any, **kwargs: Any) -> None:
    STARTED.labels(*_labels(task_result)).inc()


def _on_finished(sender: Any, task_result: Any, **kwargs: Any) -> None:
    task, queue = _labels(task_result)
    status = str(getattr(task_result.status, "value", task_result.status))
    errors = list(getattr(task_result, "errors", None) or [])
    if status == "SUCCESSFUL":
        outcome, counter = "succeeded", SUCCEEDED
    elif errors and errors[-1].exception_class_path.endswith("JobCancelled"):
        outcome, counter = "cancelled", CANCELLED
    else:
        outcome, counter = "failed", FAILED
    counter.labels(task, queue).inc()
    if task_result.started_at is not None and task_result.finished_at is not None:
        seconds = (task_result.finished_at - task_result.started_at).total_seconds()
        DURATION.labels(task, queue, outcome).observe(max(0.0, seconds))


_connected = False


def connect_signals() -> None:
    """Count through Django's task signals (idempotent; jobs' AppConfig.ready() calls it)."""
    global _connected
    if _connected:
        return
    task_enqueued.connect(_on_enqueued, dispatch_uid="jobs.metrics.enqueued")
    task_started.connect(_on_started, dispatch_uid="jobs.metrics.started")
    task_finished.connect(_on_finished, dispatch_uid="jobs.metrics.finished")
    _connected = True


def count_outcomes(jobs: list, kinds: list[str]) -> None:
    """The worker's hook for what no signal says: attempts that failed and were queued again."""
    for job, kind in zip(jobs, kinds):
        if kind == "retried":
            RETRIED.labels(job.task_path, job.queue).inc()


# The database's view (the same from every process) --------------------------------------------------


class DatabaseCollector(Collector):
    """jobs_queue_depth, jobs_oldest_ready_age_seconds, jobs_in_state, jobs_workers*, read at each scrape."""

    def collect(self) -> Iterator[Metric]:
        from . import workers
        from .models import Job, JobStatus, Worker

        now = timezone.now()
        depth = GaugeMetricFamily("jobs_queue_depth", "Due READY jobs waiting per queue.", labels=["queue"])
        oldest = GaugeMetricFamily("jobs_oldest_ready_age_seconds", "How long the oldest due READY job has waited.",
                                   labels=["queue"])
        waiting = (Job.objects.filter(status=JobStatus.READY, run_after__lte=now).values("queue")
                   .annotate(n=Count("id"), first=Min("run_after")).order_by("queue"))
        for row in waiting:
            depth.add_metric([row["queue"]], row["n"])
            oldest.add_metric([row["queue"]], max(0.0, (now - row["first"]).total_seconds()))
        yield depth
        yield oldest
        states = GaugeMetricFamily("jobs_in_state", "Jobs in the database per state.", labels=["status"])
        counts = dict(Job.objects.values_list("status").annotate(n=Count("id")).order_by())
        for status in JobStatus.values:
            states.add_metric([status], counts.get(status, 0))
        yield states
        per_state = GaugeMetricFamily("jobs_workers", "Worker rows per state.", labels=["state"])
        for state, n in Worker.objects.values_list("state").annotate(n=Count("id")).order_by("state"):
            per_state.add_metric([state], n)
        yield per_state
        yield GaugeMetricFamily("jobs_workers_alive", "Workers that heartbeated within STALE_AFTER.",
                                value=workers.alive(now).count())


class _Exposed(Collector):
    """This process's registry, plus the database gauges where wanted."""

    def __init__(self, database: bool) -> None:
        self.database = database

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
        if self.database:
            for collector in (DatabaseCollector(), OutboxBacklogCollector()):
                try:
                    yield from collector.collect()
                except Exception:
                    logger.exception("Could not read the database gauges (%s)", type(collector).__name__)


def exposition(accept: str = "", *, database: bool = True) -> tuple[bytes, str]:
    """The body and content type of a scrape (OpenMetrics when the Accept header asks for it)."""
    encoder, content_type = choose_encoder(accept)
    return encoder(_Exposed(database)), content_type


# Access -------------------------------------------------------------------------------------------


def allowed(remote_addr: str | None, authorization: str | None, *, default_loopback: bool | None = None) -> bool:
    """Whether a scrape may read the metrics (see the module docstring); refusals are counted and logged."""
    global _last_refusal_log, _refusals
    from django.conf import settings

    token = conf.get("METRICS_TOKEN")
    if token and authorization and hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode()):
        return True
    networks = conf.get("METRICS_ALLOWED_IPS")
    if networks is None:
        loopback = settings.DEBUG if default_loopback is None else default_loopback
        networks = ["127.0.0.0/8", "::1"] if loopback else []
    try:
        address = ipaddress.ip_address((remote_addr or "").split("%")[0])
        if any(address in ipaddress.ip_network(net, strict=False) for net in networks):
            return True
    except ValueError:
        pass
    REFUSED.inc()
    _refusals += 1
    now = time.monotonic()
    if now - _last_refusal_log >= REFUSAL_LOG_INTERVAL:
        _last_refusal_log = now
        logger.warning("Metrics refused to %s (%s); %d refusal(s) so far. Set JOBS['METRICS_TOKEN'] or "
                       "JOBS['METRICS_ALLOWED_IPS'].", remote_addr or "an unknown address",
                       "wrong token" if authorization else "no token", _refusals)
    return False


# A worker's own endpoint ---------------------------------------------------------------------------


def serve(port: int, host: str = "127.0.0.1") -> Any:
    """Serve this process's metrics (no database gauges) over HTTP in a daemon thread, with the
    same access rules, loopback allowed by default; returns the server (call .shutdown())."""
    from wsgiref.simple_server import make_server

    from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

    def app(environ, start_response):
        if not allowed(environ.get("REMOTE_ADDR"), environ.get("HTTP_AUTHORIZATION"), default_loopback=True):
            start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"Metrics: forbidden (JOBS['METRICS_TOKEN'] or JOBS['METRICS_ALLOWED_IPS']).\n"]
        body, content_type = exposition(environ.get("HTTP_ACCEPT", ""), database=False)
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = make_server(host, port, app, Server, handler_class=_SilentHandler)
    threading.Thread(target=server.serve_forever, name="jobs-metrics", daemon=True).start()
    logger.info("Metrics on http://%s:%d/metrics", host, server.server_port)
    return server
