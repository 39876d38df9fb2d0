"""Job events on a real STOMP broker: a subscriber sees a job's events in order and complete,
and a worker starts a new job on a STOMP wake-up long before its next poll."""
from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
import stomp

from jobs.events import job_event
from jobs.models import Job
from jobs.worker import Worker
from jobs import live as destinations
from notifications import publisher as publisher_module
from notifications.conf import parse_broker_url
from tests import jobs_tasks

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]


class Subscriber:
    """A plain stomp.py client collecting the JSON bodies sent to some destinations."""

    def __init__(self, url: str):
        parsed = parse_broker_url(url)
        self.events: list[tuple[str, dict]] = []
        self._cond = threading.Condition()
        self._receipts: set[str] = set()
        self.conn = stomp.Connection12([(parsed.host, parsed.port)], vhost=parsed.vhost or "/", auto_decode=False)
        self.conn.set_listener("collect", self)
        self.conn.connect(parsed.login, parsed.passcode, wait=True, with_connect_command=True)

    def subscribe(self, destination: str) -> None:
        receipt = uuid.uuid4().hex
        self.conn.subscribe(destination, id=receipt, ack="auto", headers={"receipt": receipt})
        with self._cond:
            assert self._cond.wait_for(lambda: receipt in self._receipts, 5), "no RECEIPT for SUBSCRIBE"

    def on_receipt(self, frame) -> None:
        with self._cond:
            self._receipts.add(frame.headers.get("receipt-id"))
            self._cond.notify_all()

    def on_message(self, frame) -> None:
        with self._cond:
            self.events.append((frame.headers.get("destination"), json.loads(frame.body)))
            self._cond.notify_all()

    def wait_until(self, predicate, timeout: float = 15.0) -> list[tuple[str, dict]]:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.events), timeout), f"got {self.events}"
            return list(self.events)

    def close(self) -> None:
        try:
            self.conn.disconnect()
        except Exception:
            pass


@pytest.fixture
def broker(stomp_broker_url, settings):
    """Point this process's publisher (the worker's and enqueue's) at the test broker."""
    settings.NOTIFICATIONS = {"BROKER_URL": stomp_broker_url, "RECONNECT_MIN": 0.05, "RECONNECT_MAX": 0.2}
    settings.JOBS = {"PROGRESS_INTERVAL": 0.02, "HEARTBEAT_INTERVAL": 0.2, "CANCEL_POLL_INTERVAL": 0.1}
    publisher_module._publisher = None
    yield stomp_broker_url
    made, publisher_module._publisher = publisher_module._publisher, None
    if made is not None:
        made.close()


@pytest.fixture
def subscriber(broker):
    sub = Subscriber(broker)
    yield sub
    sub.close()


def run_worker_until(predicate, timeout: float = 20.0, **options) -> Worker:
    worker = Worker(**options)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not predicate(worker) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert predicate(worker), "condition not met"
    finally:
        worker.stop(force=True)
        thread.join(10)
    assert not thread.is_alive()
    return worker


def final_of(events, job_id, destination):
    return any(d == destination and e["id"] == job_id and e["final"] for d, e in events)


def test_a_subscriber_gets_every_state_of_a_job_in_order_ending_with_the_final_row(broker, subscriber):
    subscriber.subscribe(destinations.JOBS_ALL)
    result = jobs_tasks.count_slowly.enqueue(10)
    subscriber.subscribe(destinations.job(result.id))
    run_worker_until(lambda w: Job.objects.get(pk=result.id).is_final, poll_interval=0.05)
    events = subscriber.wait_until(lambda evs: final_of(evs, result.id, destinations.JOBS_ALL)
                                   and final_of(evs, result.id, destinations.job(result.id)))
    stream = [e for d, e in events if d == destinations.JOBS_ALL and e["id"] == result.id]
    seqs = [e["seq"] for e in stream]
    assert seqs == sorted(set(seqs))  # strictly increasing: in order, no duplicates
    assert [stream[0]["status"], stream[1]["status"], stream[-1]["status"]] == ["READY", "RUNNING", "SUCCESSFUL"]
    assert stream[-1] == job_event(Job.objects.get(pk=result.id))  # complete: the final row itself
    assert (stream[-1]["progress"], stream[-1]["message"]) == ({"done": 10, "total": 10, "percent": 100.0}, "step 10")


def test_progress_updates_are_published_while_the_job_runs(broker, subscriber):
    subscriber.subscribe(destinations.JOBS_ALL)
    result = jobs_tasks.count_slowly.enqueue(10)
    run_worker_until(lambda w: Job.objects.get(pk=result.id).is_final, poll_interval=0.05)
    events = subscriber.wait_until(lambda evs: final_of(evs, result.id, destinations.JOBS_ALL))
    partial = [e["progress"]["done"] for d, e in events if e["id"] == result.id and e["status"] == "RUNNING"]
    assert any(0 < done < 10 for done in partial), partial


def test_the_per_job_topic_ends_with_the_same_final_event_as_the_all_jobs_topic(broker, subscriber):
    result = jobs_tasks.add.enqueue(1, 2)
    subscriber.subscribe(destinations.job(result.id))
    subscriber.subscribe(destinations.JOBS_ALL)
    run_worker_until(lambda w: Job.objects.get(pk=result.id).is_final, poll_interval=0.05)
    events = subscriber.wait_until(lambda evs: final_of(evs, result.id, destinations.JOBS_ALL)
                                   and final_of(evs, result.id, destinations.job(result.id)))
    last = {d: e for d, e in events if e["id"] == result.id}
    assert last[destinations.job(result.id)] == last[destinations.JOBS_ALL]
    assert last[destinations.JOBS_ALL]["status"] == "SUCCESSFUL"


def test_a_new_job_starts_on_the_wakeup_long_before_the_next_poll(broker):
    worker = Worker(poll_interval=30, wakeups=True)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while worker.polls < 1 and time.monotonic() < deadline:  # the first poll at start found nothing
            time.sleep(0.01)
        time.sleep(0.2)  # let the SUBSCRIBE reach the broker (the publisher sends it first anyway)
        result = jobs_tasks.add.enqueue(1, 2)
        while not Job.objects.get(pk=result.id).is_final and time.monotonic() < deadline + 10:
            time.sleep(0.005)
    finally:
        worker.stop(force=True)
        thread.join(10)
    job = Job.objects.get(pk=result.id)
    latency = (job.started_at - job.enqueued_at).total_seconds()
    assert latency < 5.0, f"started {latency:.3f} s after enqueue; the poll interval is 30 s"


def test_without_a_broker_a_worker_still_starts_jobs_by_polling(settings):
    settings.NOTIFICATIONS = {"BROKER_URL": "stomp://127.0.0.1:9", "RECONNECT_MIN": 0.05, "RECONNECT_MAX": 0.2}
    publisher_module._publisher = None
    try:
        worker = Worker(poll_interval=0.3, wakeups=True)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            time.sleep(0.1)
            result = jobs_tasks.add.enqueue(1, 2)
            deadline = time.monotonic() + 10
            while not Job.objects.get(pk=result.id).is_final and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            worker.stop(force=True)
            thread.join(10)
        job = Job.objects.get(pk=result.id)
        assert (job.status, (job.started_at - job.enqueued_at).total_seconds() < 3) == ("SUCCESSFUL", True)
    finally:
        made, publisher_module._publisher = publisher_module._publisher, None
        if made is not None:
            made.close(timeout=1.0)
