"""The chaos harness: the real product under faults, and watchers that count what a person would see.

A run starts the whole stack as separate processes on one database (a SQLite file, or a fresh
PostgreSQL database): the embedded broker (``python -m notifications.broker``), daphne with the
project's ASGI application, and ``manage.py jobworker`` processes. It enqueues jobs owned by a
plain user, opens watchers, then injects faults on a schedule:

- ``kill``: SIGKILL a worker while jobs run (a replacement starts at once);
- ``stop``: SIGSTOP a worker past ``STALE_AFTER``, then SIGCONT it (it must drop what it lost);
- ``finish-kill``: SIGKILL a worker right after it committed a job's final state, before it
  notified the owner (issue 8's defect 3; the window is held open by tests.chaos.tasks);
- ``broker``: kill -9 the embedded broker; while it is down, enqueue jobs and create
  notifications; restart it on the same port;
- ``web``: restart daphne (SIGTERM, then a new process on the same port).

Watchers: a stomp.py client on the broker's raw topics (``/topic/jobs.all`` and the user's
notification topic), and WebSocket clients through daphne as a browser would use them (an admin
on ``/topic/jobs.all``; the owner on ``/user/queue/jobs``, ``/user/queue/notifications`` and a few
``/topic/jobs.<uuid>``), each reconnecting and resubscribing after any drop.

At the end (every job final in the database, watchers given time to settle) ``Outcome`` compares
everything with the database: jobs lost, final states, executions (re-runs after a SIGKILL are
at-least-once and counted), notification rows missing or doubled, watchers left on a stale state,
duplicated final states, and processes that died without being killed (crashes).

Used by tests/chaos (short runs in CI) and bench/chaos.py (long runs by hand).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from notifications.codec import HEARTBEAT, FrameParser

__all__ = [
    "ROOT",
    "ChaosConfig",
    "ChaosRun",
    "Outcome",
    "Database",
    "StompWatcher",
    "WsWatchers",
    "free_port",
    "wait_port",
    "rss_bytes",
]

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
# Bounded waits: a loaded 2-core machine starts Django in seconds, not milliseconds.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
FINAL_STATUSES = frozenset({"SUCCESSFUL", "FAILED", "CANCELLED"})
# Users and sessions of each PostgreSQL template database made in this process, by name.
_TEMPLATE_INFO: dict[str, str] = {}
# Rows of the admin page watcher (one subscription per row plus /topic/jobs.all, within the
# consumer's MAX_SUBSCRIPTIONS of 64).
PAGE_ROWS = 60
ALICE, ADMIN = "chaos-alice", "chaos-admin"

_SETUP = """
import json
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
User = get_user_model()
alice = User.objects.create_user({alice!r}, "alice@example.com", "chaos-pass-1")
admin = User.objects.create_superuser({admin!r}, "admin@example.com", "chaos-pass-1")
sessions = {{}}
for user in (alice, admin):
    s = SessionStore()
    s[SESSION_KEY] = str(user.pk)
    s[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    s[HASH_SESSION_KEY] = user.get_session_auth_hash()
    s.create()
    sessions[user.username] = s.session_key
print("CHAOS-SETUP " + json.dumps({{"alice_id": alice.pk, "admin_id": admin.pk,
                                   "alice_session": sessions[{alice!r}], "admin_session": sessions[{admin!r}]}}))
"""

_ENQUEUE = """
import json, os
from django.contrib.auth import get_user_model
from jobs.api import job_options
from tests.chaos.tasks import chaos_step
alice = get_user_model().objects.get(username={alice!r})
n, first = int(os.environ["CHAOS_N"]), int(os.environ["CHAOS_FIRST"])
steps, delay = int(os.environ["CHAOS_STEPS"]), float(os.environ["CHAOS_DELAY"])
ids = []
for i in range(first, first + n):
    with job_options(owner=alice, name=f"chaos-{{i}}", max_attempts=int(os.environ["CHAOS_MAX_ATTEMPTS"])):
        ids.append(str(chaos_step.enqueue(steps, delay).id))
print("CHAOS-IDS " + json.dumps(ids))
"""

_NOTIFY = """
import json, os
from django.contrib.auth import get_user_model
from notifications.api import notify
alice = get_user_model().objects.get(username={alice!r})
ids = [notify(alice, title=f"chaos note {{i}}", text="sent while the broker was down").pk
       for i in range(int(os.environ["CHAOS_N"]))]
print("CHAOS-NOTES " + json.dumps(ids))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _norm_id(value: Any) -> str:
    """A job id as the events spell it (UUID with dashes), from either database's column."""
    return str(uuid.UUID(str(value)))


# ------------------------------------------------------------------------------------ config


@dataclass
class ChaosConfig:
    """What one run does. Counts are exact: each fault listed is injected once."""

    db: str = "sqlite"  # "sqlite" or "postgres" (a fresh database from TEST_POSTGRES_URL)
    jobs: int = 40  # enqueued before the faults start
    steps: int = 6  # progress ticks per job
    step_delay: float = 0.1  # seconds between ticks
    max_attempts: int = 6  # a job killed this many times fails with WorkerLost
    workers: int = 2
    concurrency: int = 2
    worker_kills: int = 2
    worker_stops: int = 1
    finish_kills: int = 0
    broker_restarts: int = 0
    web_restarts: int = 0
    outage_jobs: int = 0  # enqueued during each broker outage
    outage_notifications: int = 0  # notify() calls during each broker outage
    job_watchers: int = 3  # per-job WebSocket subscriptions (a job page open)
    interval: float = 2.0  # seconds between faults
    stop_seconds: float = 4.0  # how long a SIGSTOPped worker stays frozen
    final_timeout: float = 120.0  # after the last fault, a run waits this long for one more job to end
    settle_timeout: float = 20.0  # watchers may take this long to reach the database's state
    stale_after: float = 2.5  # JOBS["STALE_AFTER"] of the run's workers
    seed: int = 1
    soak_samples: float = 0.0  # > 0: sample RSS every this many seconds

    def jobs_settings(self) -> dict[str, Any]:
        return {
            "HEARTBEAT_INTERVAL": 0.25,
            "STALE_AFTER": self.stale_after,
            "CANCEL_POLL_INTERVAL": 0.2,
            "PREFETCH": 2,
            "RETRY_BACKOFF": 0.2,
            "SHUTDOWN_GRACE": 2.0,
        }


# ---------------------------------------------------------------------------------- database


class Database:
    """The run's database, read back with the plain driver (never through the code under test)."""

    def __init__(self, url: str, admin_url: str | None = None, name: str | None = None):
        self.url = url
        self._admin_url = admin_url
        self._name = name

    @classmethod
    def sqlite(cls, path: Path) -> Database:
        return cls(f"sqlite:///{path}")

    @classmethod
    def postgres(cls, base_url: str, template: str | None = None) -> Database:
        """A new database next to TEST_POSTGRES_URL's (a copy of ``template`` when given)."""
        import psycopg

        name = f"{base_url.rsplit('/', 1)[-1] or 'postgres'}_chaos_{uuid.uuid4().hex[:8]}"
        copy = f' TEMPLATE "{template}"' if template else ""
        with psycopg.connect(base_url, autocommit=True, connect_timeout=5) as admin:
            # The template's last client (a process that just exited) may take a moment to leave.
            for attempt in range(50):
                try:
                    admin.execute(f'CREATE DATABASE "{name}"{copy}')
                    break
                except psycopg.errors.ObjectInUse:
                    if attempt == 49:
                        raise
                    time.sleep(0.2)
        return cls(base_url.rsplit("/", 1)[0] + "/" + name, admin_url=base_url, name=name)

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        if self.is_sqlite:
            conn = sqlite3.connect(self.url.removeprefix("sqlite:///"), timeout=30)
            sql = sql.replace("%s", "?")
        else:
            import psycopg

            conn = psycopg.connect(self.url)
        try:
            cur = conn.cursor()
            cur.execute(sql, params)
            return cur.fetchall()
        finally:
            conn.close()

    def jobs(self) -> dict[str, dict]:
        return {
            _norm_id(pk): {"status": status, "seq": seq, "attempts": attempts, "name": name, "error_type": error_type}
            for pk, status, seq, attempts, name, error_type in self.rows(
                "SELECT id, status, seq, attempts, name, error_type FROM jobs_job"
            )
        }

    def notifications(self, recipient_id: int) -> list[tuple[int, str, str]]:
        return [tuple(r) for r in self.rows(
            "SELECT id, title, link FROM notifications_notification WHERE recipient_id = %s", (recipient_id,)
        )]

    def drop(self) -> None:
        if self._admin_url and self._name:
            import psycopg

            with psycopg.connect(self._admin_url, autocommit=True, connect_timeout=5) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self._name}" WITH (FORCE)')


# ---------------------------------------------------------------------------------- watchers


@dataclass
class JobView:
    """What one subscription showed of each job: the state with the highest seq it received."""

    latest: dict[str, tuple[int, str]] = field(default_factory=dict)  # job -> (seq, status)
    finals: dict[str, set[tuple[int, str]]] = field(default_factory=lambda: defaultdict(set))
    deliveries: int = 0
    final_repeats: int = 0  # the same final (seq, status) delivered again (clients drop it by seq)

    def on_job(self, event: dict) -> None:
        job, seq, status = str(event.get("id")), int(event.get("seq", -1)), str(event.get("status"))
        self.deliveries += 1
        if event.get("final") or status in FINAL_STATUSES:
            if (seq, status) in self.finals[job]:
                self.final_repeats += 1
            self.finals[job].add((seq, status))
        known = self.latest.get(job)
        if known is None or seq > known[0]:
            self.latest[job] = (seq, status)


@dataclass
class NotificationView:
    """Notification ids a subscription showed, live or in a sync message."""

    ids: set[int] = field(default_factory=set)
    syncs: int = 0

    def on_event(self, event: dict) -> list[int]:
        """Take what live-notifications.js lists from one event: a notification, or a sync's
        "missed" (its newest-unread list only sets the counter). Returns the ids added."""
        if event.get("type") == "notification" and "id" in event:
            return self.add([event])
        if event.get("type") == "notifications.sync":
            self.syncs += 1
            return self.add(event.get("missed") or [])
        return []

    def add(self, items: list) -> list[int]:
        ids = [int(item["id"]) for item in items if isinstance(item, dict) and "id" in item]
        self.ids.update(ids)
        return ids


class StompWatcher:
    """A stomp.py client on the broker's raw topics; reconnects and resubscribes after a drop."""

    def __init__(self, host: str, port: int, jobs_topic: str, notifications_topic: str):
        self.host, self.port = host, port
        self.jobs_topic, self.notifications_topic = jobs_topic, notifications_topic
        self.jobs = JobView()
        self.notes = NotificationView()
        self.connects = 0
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-stomp-watcher", daemon=True)
        self._ready = threading.Event()

    def start(self, timeout: float = START_TIMEOUT) -> StompWatcher:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the stomp.py watcher did not connect")
        return self

    def _run(self) -> None:
        import stomp

        watcher = self

        class Listener(stomp.ConnectionListener):
            def on_message(self, frame) -> None:
                try:
                    event = json.loads(frame.body)
                except (TypeError, ValueError):
                    return
                if not isinstance(event, dict):
                    return
                with watcher.lock:
                    if event.get("type") == "job":
                        watcher.jobs.on_job(event)
                    else:
                        watcher.notes.on_event(event)

        conn = None
        while not self._stop.is_set():
            if conn is None or not conn.is_connected():
                with contextlib.suppress(Exception):
                    if conn is not None:
                        conn.disconnect()
                conn = stomp.Connection12([(self.host, self.port)], heartbeats=(0, 0), reconnect_attempts_max=1)
                conn.set_listener("chaos", Listener())
                try:
                    conn.connect(wait=True, headers={"host": "/"})
                    conn.subscribe(self.jobs_topic, id="jobs", ack="auto")
                    conn.subscribe(self.notifications_topic, id="notes", ack="auto", headers={"receipt": "ready"})
                except Exception:
                    conn = None
                    time.sleep(0.2)
                    continue
                self.connects += 1
                time.sleep(0.2)  # the receipt: stomp.py has no wait for it; the topics are quiet now
                self._ready.set()
            time.sleep(0.05)
        with contextlib.suppress(Exception):
            if conn is not None:
                conn.disconnect()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class _WsSocket:
    """One WebSocket as a page holds it: STOMP 1.2, some subscriptions, reconnect after any close."""

    name: str
    kind: str  # "page": the jobs in `expected`; "list": a bare list subscription; "notifications"
    session: str
    subscriptions: dict[str, str]  # subscription id -> destination
    views: dict[str, Any]  # subscription id -> JobView | NotificationView
    expected: list[str] = field(default_factory=list)  # a page's jobs (its rows)
    connects: int = 0
    closes: int = 0
    errors: list[str] = field(default_factory=list)
    # As notifications/static/notifications/stomp-client.js: the server's clock less ours (from
    # CONNECTED's server-time), when we last heard from the server, and from when we were away.
    server_offset_ms: float = 0.0
    last_received_ms: float = 0.0
    away_since_ms: float | None = None
    newest_notification: int = 0
    catch_ups: int = 0


class WsWatchers:
    """Browser-like WebSocket clients through daphne, on an asyncio loop of their own (a thread)."""

    def __init__(self, port: int):
        self.port = port
        self.sockets: list[_WsSocket] = []
        self.lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-ws-watchers", daemon=True)
        self._tasks: list[Any] = []
        self._stopping = False

    def add(self, name: str, kind: str, session: str, destinations: list[str],
            expected: list[str] | None = None) -> _WsSocket:
        subs = {f"s{i}": d for i, d in enumerate(destinations)}
        views = {sid: (NotificationView() if "notifications" in d else JobView()) for sid, d in subs.items()}
        sock = _WsSocket(name, kind, session, subs, views, list(expected or ()))
        self.sockets.append(sock)
        return sock

    def start(self, timeout: float = START_TIMEOUT) -> WsWatchers:
        self._thread.start()
        for sock in self.sockets:
            self._tasks.append(asyncio.run_coroutine_threadsafe(self._keep(sock), self._loop))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s.connects for s in self.sockets):
                return self
            time.sleep(0.05)
        raise TimeoutError(f"WebSocket watchers not subscribed within {timeout} s: "
                           f"{[(s.name, s.connects, s.errors[-1:]) for s in self.sockets]}")

    async def _keep(self, sock: _WsSocket) -> None:
        while not self._stopping:
            try:
                await self._session(sock)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a dropped socket: reconnect, as the page's client does
                sock.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            sock.closes += 1
            await asyncio.sleep(0.3)

    async def _session(self, sock: _WsSocket) -> None:
        from websockets.asyncio.client import connect

        origin = f"http://127.0.0.1:{self.port}"
        async with connect(
            f"ws://127.0.0.1:{self.port}/ws/stomp/",
            subprotocols=["v12.stomp", "v11.stomp", "v10.stomp"],
            additional_headers={"Cookie": f"sessionid={sock.session}"},
            origin=origin,
            open_timeout=20,
            max_size=None,
            ping_interval=None,
        ) as ws:
            parser = FrameParser()
            connected = False
            await ws.send("CONNECT\naccept-version:1.2\nhost:127.0.0.1\nheart-beat:0,0\n\n\x00")
            # Resubscribing after a drop, a client asks for what changed since it last heard
            # from the server (the `since` header), as the project's client does.
            since = f"since:{int(sock.away_since_ms)}\n" if sock.away_since_ms is not None else ""
            for sid, destination in sock.subscriptions.items():
                await ws.send(f"SUBSCRIBE\nid:{sid}\ndestination:{destination}\n{since}receipt:{sid}\n\n\x00")
            receipts = set()
            try:
                async for data in ws:
                    sock.last_received_ms = time.time() * 1000
                    parser.receive_data(data.encode() if isinstance(data, str) else data)
                    for frame in parser.events_received():
                        if frame is HEARTBEAT:
                            continue
                        if frame.command == "CONNECTED":
                            connected = True
                            if frame.get("server-time"):
                                sock.server_offset_ms = float(frame.get("server-time")) - time.time() * 1000
                        elif frame.command == "RECEIPT":
                            receipts.add(frame.get("receipt-id"))
                            if sock.kind == "notifications":  # the page's catch-up once subscribed
                                await self._catch_up(sock)
                            if receipts >= set(sock.subscriptions):
                                sock.connects += 1
                        elif frame.command == "MESSAGE":
                            self._on_message(sock, frame)
                        elif frame.command == "ERROR":
                            sock.errors.append(f"ERROR {frame.get('message')}: {frame.body[:200]!r}")
            finally:
                if connected:
                    sock.away_since_ms = sock.last_received_ms + sock.server_offset_ms

    async def _catch_up(self, sock: _WsSocket) -> None:
        """What live-notifications.js does once its subscription is confirmed: GET every
        notification after the newest it has (?after=<id>), page by page."""
        import urllib.request

        def fetch(after: int) -> dict:
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.port}/notifications/?after={after}&limit=100",
                headers={"Cookie": f"sessionid={sock.session}", "Accept": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())

        for _ in range(50):
            data = await asyncio.to_thread(fetch, sock.newest_notification)
            with self.lock:
                for view in sock.views.values():
                    if isinstance(view, NotificationView):
                        added = view.add(data.get("notifications") or [])
                        sock.newest_notification = max([sock.newest_notification, *added])
            sock.catch_ups += 1
            if not data.get("more"):
                return

    def _on_message(self, sock: _WsSocket, frame) -> None:
        view = sock.views.get(frame.get("subscription"))
        try:
            event = json.loads(frame.body)
        except ValueError:
            return
        if view is None or not isinstance(event, dict):
            return
        with self.lock:
            if isinstance(view, JobView):
                if event.get("type") == "job":
                    view.on_job(event)
                for item in event.get("jobs") or ():  # a list snapshot sent as one message
                    if isinstance(item, dict) and item.get("type") == "job":
                        view.on_job(item)
            else:
                added = view.on_event(event)
                sock.newest_notification = max([sock.newest_notification, *added])
        if event.get("type") == "notifications.sync" and event.get("more"):
            asyncio.get_running_loop().create_task(self._catch_up(sock))

    def stop(self) -> None:
        self._stopping = True

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# ------------------------------------------------------------------------------------ outcome


@dataclass
class Outcome:
    """What a run measured; ``targets()`` lists the issue's targets with their figures."""

    config: dict
    jobs: int = 0
    jobs_lost: int = 0  # not final in the database by the end (or gone)
    final_states: dict = field(default_factory=dict)
    executions: int = 0  # task runs started (tests.chaos.tasks records each)
    jobs_rerun: int = 0  # jobs that started more than once (at-least-once after SIGKILL/SIGSTOP)
    extra_runs: int = 0  # executions beyond one per job
    completed_runs_extra: int = 0  # runs that got to the end more than once for one job
    notification_rows_missing: int = 0  # final jobs with no notification for their owner
    notification_rows_duplicated: int = 0  # final jobs with more than one
    outage_notifications: int = 0
    ws_notifications_missed: int = 0  # rows of the owner no WebSocket subscription showed
    stomp_notifications_missed: int = 0  # rows the raw-topic subscriber never received
    stale: dict = field(default_factory=dict)  # watcher -> jobs left on a non-final or wrong state
    unseen: dict = field(default_factory=dict)  # list watcher -> jobs it never showed
    final_missing: dict = field(default_factory=dict)  # watcher -> final jobs whose final event never came
    duplicated_finals: dict = field(default_factory=dict)  # watcher -> jobs with two different final states
    final_repeats: dict = field(default_factory=dict)  # watcher -> same final delivered again (harmless)
    crashes: list = field(default_factory=list)  # processes that exited without being killed
    faults: list = field(default_factory=list)  # (seconds since start, what)
    reconnects: dict = field(default_factory=dict)  # watcher -> times it resubscribed everything after a drop
    drops: dict = field(default_factory=dict)  # WebSocket watcher -> times its socket closed or failed to open
    ws_errors: dict = field(default_factory=dict)  # WebSocket watcher -> its last errors (ERROR frames, failures)
    rss: dict = field(default_factory=dict)  # process -> [(seconds, bytes)]
    seconds: float = 0.0
    examples: dict = field(default_factory=dict)  # a few ids per failing count, for the reproduction

    def targets(self) -> dict[str, int]:
        """The issue's targets, each 0 when it holds.

        A WebSocket list that never showed a job counts as stale (it shows a list without it).
        The stomp.py client on the raw topic counts only in runs without a broker restart: a
        topic keeps nothing for a subscriber that is away, and that client, unlike a page, has
        no snapshot to resync from (its figures are still reported).
        """
        ws = [k for k in self.stale if k.startswith("ws ")]
        raw = [k for k in self.stale if not k.startswith("ws ")] if not self.config.get("broker_restarts") else []
        return {
            "jobs lost": self.jobs_lost,
            "notifications lost": self.notification_rows_missing + self.ws_notifications_missed,
            "watchers left on a stale state": sum(self.stale[k] + self.unseen.get(k, 0) for k in ws + raw),
            "final events lost": sum(self.final_missing[k] for k in raw),
            "duplicated final states": sum(self.duplicated_finals.values()),
            "broker crashes": sum(1 for c in self.crashes if c["name"] == "broker"),
        }

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"{k}: {v}" for k, v in self.targets().items()]
        lines.append(f"final states: {self.final_states}; executions {self.executions} for {self.jobs} jobs "
                     f"({self.jobs_rerun} jobs re-run, {self.extra_runs} extra runs)")
        lines.append(f"notification rows missing {self.notification_rows_missing}, duplicated "
                     f"{self.notification_rows_duplicated}; WebSocket missed {self.ws_notifications_missed}, "
                     f"raw topic missed {self.stomp_notifications_missed}")
        lines.append(f"stale {self.stale}; unseen {self.unseen}; final missing {self.final_missing}")
        lines.append(f"reconnects {self.reconnects}; drops {self.drops}; WebSocket errors {self.ws_errors}")
        lines.append(f"crashes {self.crashes}; faults {len(self.faults)}; {self.seconds:.0f} s")
        if self.examples:
            lines.append(f"examples {self.examples}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------- run


class ChaosRun:
    """One run: ``with ChaosRun(config, workdir) as run: outcome = run.execute()``."""

    def __init__(self, config: ChaosConfig, workdir: Path, *, template_db: Path | str | None = None,
                 postgres_url: str | None = None):
        """``template_db``: a SQLite file made by make_template(), or, for PostgreSQL, the name of a
        database made by make_postgres_template() (either saves a migration per run)."""
        self.config = config
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rand = random.Random(config.seed)
        self.template_db = template_db
        self.postgres_url = postgres_url
        self.db: Database | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.killed: set[int] = set()  # pids this run signalled on purpose
        self.dead: list[subprocess.Popen] = []  # processes stopped on purpose, kept for their logs
        self.crashes: list[dict] = []
        self.faults: list[tuple[float, str]] = []
        self.broker_port = free_port()
        self.web_port = free_port()
        self.runs_file = self.dir / "runs.txt"
        self.linger_file = self.dir / "linger.txt"
        self.ids: list[str] = []
        self.outage_note_ids: list[int] = []
        self.info: dict[str, Any] = {}
        self.stomp: StompWatcher | None = None
        self.ws: WsWatchers | None = None
        self.rss: dict[str, list[tuple[float, int]]] = defaultdict(list)
        self._generation = Counter()
        self._t0 = time.monotonic()
        self._stopped: dict[str, float] = {}  # worker name -> monotonic time to SIGCONT

    # -- environment and processes

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "DJANGO_SETTINGS_MODULE": "tests.chaos.settings",
            "DATABASE_URL": self.db.url,
            "DJANGO_VAR_DIR": str(self.dir / "var"),
            "STOMP_BROKER_URL": f"stomp://127.0.0.1:{self.broker_port}",
            "CHAOS_JOBS_JSON": json.dumps(self.config.jobs_settings()),
            "CHAOS_RUNS_FILE": str(self.runs_file),
            "CHAOS_LINGER_FILE": str(self.linger_file),
            "CHAOS_LINGER_SECONDS": "1.0",
            "DJANGO_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        })
        return env

    def manage(self, *args: str, env: dict | None = None, timeout: float = 180.0) -> str:
        done = subprocess.run([PYTHON, str(ROOT / "manage.py"), *args], cwd=ROOT, env=env or self.env(),
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args[:2])} failed ({done.returncode}):\n"
                               f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    def _marked(self, out: str, marker: str) -> Any:
        for line in out.splitlines():
            if line.startswith(marker + " "):
                return json.loads(line[len(marker) + 1:])
        raise RuntimeError(f"no {marker} line in:\n{out[-2000:]}")

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        proc.chaos_name = name  # type: ignore[attr-defined]
        self.procs[name] = proc
        return proc

    def start_broker(self) -> None:
        proc = self._spawn("broker", [PYTHON, "-m", "notifications.broker", "--host", "127.0.0.1",
                                      "--port", str(self.broker_port), "--log-level", "WARNING"])
        wait_port(self.broker_port, START_TIMEOUT, proc)

    def start_web(self) -> None:
        proc = self._spawn("web", [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.web_port), "-v", "0",
                                   "project.asgi:application"])
        wait_port(self.web_port, START_TIMEOUT, proc)

    def start_worker(self, slot: int) -> None:
        self._generation[slot] += 1
        name = f"worker{slot}"
        worker_id = f"w{slot}-{self._generation[slot]}"
        self._spawn(name, [PYTHON, str(ROOT / "manage.py"), "jobworker", "--worker-id", worker_id,
                           "--concurrency", str(self.config.concurrency), "--poll-interval", "0.5"])

    def _signal(self, name: str, sig: int) -> subprocess.Popen | None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return None
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.killed.add(proc.pid)
        proc.send_signal(sig)
        return proc

    def _retire(self, name: str, timeout: float = STOP_TIMEOUT) -> None:
        proc = self.procs.pop(name)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.killed.add(proc.pid)
            proc.kill()
            proc.wait(5)
        self.dead.append(proc)

    def note(self, what: str) -> None:
        self.faults.append((round(time.monotonic() - self._t0, 2), what))
        logger.info("chaos: %s", what)

    def check_crashes(self) -> None:
        for name, proc in list(self.procs.items()):
            code = proc.poll()
            if code is not None and proc.pid not in self.killed:
                tail = (self.dir / f"{name}.log").read_text(errors="replace")[-1500:]
                self.crashes.append({"name": name.rstrip("0123456789"), "process": name, "code": code, "log": tail})
                self.procs.pop(name)
                self.dead.append(proc)
                if name.startswith("worker"):  # keep the run going with a replacement
                    self.start_worker(int(name.removeprefix("worker")))
                elif name == "broker":
                    self.start_broker()
                elif name == "web":
                    self.start_web()

    # -- setup

    def setup(self) -> None:
        cfg = self.config
        template = self.template_db
        if cfg.db == "postgres":
            if not self.postgres_url:
                raise RuntimeError("a PostgreSQL run needs TEST_POSTGRES_URL")
            self.db = Database.postgres(self.postgres_url, template=template)
        else:
            path = self.dir / "db.sqlite3"
            self.db = Database.sqlite(path)
            if template is not None:
                shutil.copyfile(template, path)
        if template is None:
            self.manage("migrate", "--noinput", "-v", "0")
            self.info = self._marked(self.manage("shell", "--no-imports", "-c", _SETUP.format(alice=ALICE, admin=ADMIN)),
                                     "CHAOS-SETUP")
        elif cfg.db == "postgres":
            self.info = json.loads(_TEMPLATE_INFO[template])
        else:
            self.info = json.loads((Path(template).parent / "setup.json").read_text())

    @staticmethod
    def make_postgres_template(postgres_url: str, workdir: Path) -> str:
        """A migrated PostgreSQL database with the run's users and sessions; runs copy it (TEMPLATE)."""
        run = ChaosRun(ChaosConfig(db="postgres"), workdir, postgres_url=postgres_url)
        run.db = Database.postgres(postgres_url)
        run.manage("migrate", "--noinput", "-v", "0")
        info = run._marked(run.manage("shell", "--no-imports", "-c", _SETUP.format(alice=ALICE, admin=ADMIN)),
                           "CHAOS-SETUP")
        _TEMPLATE_INFO[run.db.name] = json.dumps(info)
        return run.db.name

    @staticmethod
    def drop_postgres_template(postgres_url: str, name: str) -> None:
        Database(postgres_url.rsplit("/", 1)[0] + "/" + name, admin_url=postgres_url, name=name).drop()
        _TEMPLATE_INFO.pop(name, None)

    @staticmethod
    def make_template(directory: Path) -> Path:
        """A migrated SQLite database with the run's users and sessions, for runs to copy."""
        directory.mkdir(parents=True, exist_ok=True)
        run = ChaosRun(ChaosConfig(), directory / "template-run")
        run.db = Database.sqlite(directory / "db.sqlite3")
        run.manage("migrate", "--noinput", "-v", "0")
        info = run._marked(run.manage("shell", "--no-imports", "-c", _SETUP.format(alice=ALICE, admin=ADMIN)),
                           "CHAOS-SETUP")
        with sqlite3.connect(directory / "db.sqlite3") as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (directory / "setup.json").write_text(json.dumps(info))
        return directory / "db.sqlite3"

    def enqueue(self, n: int) -> list[str]:
        env = self.env() | {
            "CHAOS_N": str(n), "CHAOS_FIRST": str(len(self.ids)),
            "CHAOS_STEPS": str(self.config.steps), "CHAOS_DELAY": str(self.config.step_delay),
            "CHAOS_MAX_ATTEMPTS": str(self.config.max_attempts),
        }
        ids = self._marked(self.manage("shell", "--no-imports", "-c", _ENQUEUE.format(alice=ALICE), env=env), "CHAOS-IDS")
        self.ids.extend(ids)
        return ids

    def notify(self, n: int) -> list[int]:
        env = self.env() | {"CHAOS_N": str(n)}
        ids = self._marked(self.manage("shell", "--no-imports", "-c", _NOTIFY.format(alice=ALICE), env=env), "CHAOS-NOTES")
        self.outage_note_ids.extend(ids)
        return ids

    # -- faults

    def _live_workers(self) -> list[str]:
        return [n for n in self.procs if n.startswith("worker") and n not in self._stopped]

    def fault_kill(self, wait: float = 5.0) -> None:
        """SIGKILL a worker running a task (waiting up to ``wait`` s for one: a worker that is
        still starting up, on a loaded machine, has nothing to lose), else any worker."""
        deadline = time.monotonic() + wait
        while True:
            busy = self._busy_pids()
            names = self._live_workers()
            if any(self.procs[n].pid in busy for n in names) or time.monotonic() >= deadline:
                break
            self._sleep(0.1)
        preferred = [n for n in names if self.procs[n].pid in busy] or names
        if not preferred:
            return
        name = self.rand.choice(preferred)
        proc = self._signal(name, signal.SIGKILL)
        if proc is not None:
            self.note(f"SIGKILL {name} (pid {proc.pid}, {'busy' if proc.pid in busy else 'idle'})")
            self._retire(name)
            self.start_worker(int(name.removeprefix("worker")))

    def fault_stop(self) -> None:
        names = self._live_workers()
        if len(names) < 2:  # keep one worker running to take over
            return
        name = self.rand.choice(names)
        proc = self._signal(name, signal.SIGSTOP)
        if proc is not None:
            self._stopped[name] = time.monotonic() + self.config.stop_seconds
            self.note(f"SIGSTOP {name} (pid {proc.pid}) for {self.config.stop_seconds:g} s")

    def _resume_due(self, force: bool = False) -> None:
        now = time.monotonic()
        for name, due in list(self._stopped.items()):
            if force or now >= due:
                proc = self.procs.get(name)
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGCONT)
                    self.note(f"SIGCONT {name}")
                del self._stopped[name]

    def fault_finish_kill(self, timeout: float = 30.0) -> None:
        """SIGKILL the worker that just committed a lingering job's final state, before it notifies."""
        seen = set(self._linger_lines())
        Path(str(self.linger_file) + ".arm").touch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._tick()
            for line in self._linger_lines():
                if line in seen:
                    continue
                seen.add(line)
                job, pid = line.split()
                for name, proc in list(self.procs.items()):
                    if name.startswith("worker") and proc.pid == int(pid) and name not in self._stopped:
                        self._signal(name, signal.SIGKILL)
                        self.note(f"SIGKILL {name} (pid {pid}) after job {job} was final, before its notification")
                        self._retire(name)
                        self.start_worker(int(name.removeprefix("worker")))
                        return
            time.sleep(0.02)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(str(self.linger_file) + ".arm")
        self.note("finish-kill: no job finished in time (not injected)")

    def _linger_lines(self) -> list[str]:
        if not self.linger_file.exists():
            return []
        return [line.strip() for line in self.linger_file.read_text().splitlines() if line.strip()]

    def fault_broker(self) -> None:
        self._signal("broker", signal.SIGKILL)
        self.note("kill -9 broker")
        self._retire("broker")
        if self.config.outage_jobs:
            self.enqueue(self.config.outage_jobs)
            self.note(f"enqueued {self.config.outage_jobs} jobs while the broker was down")
        if self.config.outage_notifications:
            self.notify(self.config.outage_notifications)
            self.note(f"notify() x{self.config.outage_notifications} while the broker was down")
        if not (self.config.outage_jobs or self.config.outage_notifications):
            time.sleep(2.0)
        self.start_broker()
        self.note("broker restarted")

    def fault_web(self) -> None:
        self._signal("web", signal.SIGTERM)
        self.note("SIGTERM daphne")
        self._retire("web")
        self.start_web()
        self.note("daphne restarted")

    def _busy_pids(self) -> set[int]:
        started, ended = Counter(), Counter()
        if self.runs_file.exists():
            for line in self.runs_file.read_text().splitlines():
                parts = line.split()
                if len(parts) == 3:
                    (started if parts[0] == "start" else ended)[(parts[1], parts[2])] += 1
        return {int(pid) for (job, pid), n in started.items() if n > ended[(job, pid)]}

    def _tick(self) -> None:
        self._resume_due()
        self.check_crashes()
        if self.config.soak_samples:
            now = time.monotonic() - self._t0
            last = self.rss["broker"][-1][0] if self.rss["broker"] else -1e9
            if now - last >= self.config.soak_samples:
                for name in ("broker", "web"):
                    proc = self.procs.get(name)
                    if proc is not None:
                        self.rss[name].append((round(now, 1), rss_bytes(proc.pid)))

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._tick()
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    # -- the run

    def execute(self) -> Outcome:
        cfg = self.config
        self.setup()
        self.enqueue(cfg.jobs)
        self.start_broker()
        self.start_web()
        alice_id = self.info["alice_id"]
        self.stomp = StompWatcher("127.0.0.1", self.broker_port, "/topic/jobs.all",
                                  f"/topic/notifications.user.{alice_id}").start()
        self.ws = WsWatchers(self.web_port)
        # The admin's change list as jobs/admin-live.js runs it: /topic/jobs.all, plus the topic
        # of each row unfinished at load (every job is, here; a socket takes 64 subscriptions).
        rows = self.ids[:PAGE_ROWS]
        self.ws.add("admin-page", "page", self.info["admin_session"],
                    ["/topic/jobs.all"] + [f"/topic/jobs.{j}" for j in rows], expected=rows)
        # A job's own page (jobs/job-live.js) for the first few jobs.
        for i, job in enumerate(self.ids[: cfg.job_watchers]):
            self.ws.add(f"job-page-{i}", "page", self.info["alice_session"], [f"/topic/jobs.{job}"], expected=[job])
        # The bare list subscriptions a STOMP client may hold (issue 8's defect 2 is about them).
        self.ws.add("list-all", "list", self.info["admin_session"], ["/topic/jobs.all"])
        self.ws.add("list-mine", "list", self.info["alice_session"], ["/user/queue/jobs"])
        self.ws.add("notifications", "notifications", self.info["alice_session"], ["/user/queue/notifications"])
        self.ws.start()
        self._t0 = time.monotonic()
        for slot in range(cfg.workers):
            self.start_worker(slot)
        faults = (["kill"] * cfg.worker_kills + ["stop"] * cfg.worker_stops + ["finish-kill"] * cfg.finish_kills
                  + ["broker"] * cfg.broker_restarts + ["web"] * cfg.web_restarts)
        self.rand.shuffle(faults)
        self._wait_running()
        for fault in faults:
            self._sleep(cfg.interval)
            {"kill": self.fault_kill, "stop": self.fault_stop, "finish-kill": self.fault_finish_kill,
             "broker": self.fault_broker, "web": self.fault_web}[fault]()
        self._sleep(cfg.interval)
        self._resume_due(force=True)
        self._wait_final()
        self._settle()
        return self.outcome()

    def _wait_running(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._tick()
            if self._busy_pids():
                return
            time.sleep(0.05)
        raise TimeoutError(f"no job started within {timeout} s\n{self.logs()}")

    def _wait_final(self) -> None:
        """Wait until every job is final; give up only after ``final_timeout`` s without one more
        job ending (a slow machine is not a lost job; a stall is)."""
        deadline = time.monotonic() + self.config.final_timeout
        finished = -1
        while time.monotonic() < deadline:
            self._tick()
            jobs = self.db.jobs()
            done = sum(1 for j in jobs.values() if j["status"] in FINAL_STATUSES)
            if jobs and done == len(jobs):
                return
            if done > finished:
                finished = done
                deadline = time.monotonic() + self.config.final_timeout
            self._sleep(0.3)

    def _settle(self) -> None:
        """Give the watchers time to reach the database's state (reconnects, resyncs, retries)."""
        deadline = time.monotonic() + self.config.settle_timeout
        while time.monotonic() < deadline:
            targets = self.outcome().targets()
            if not (targets["watchers left on a stale state"] or targets["final events lost"]
                    or targets["notifications lost"]):
                break
            self._sleep(0.5)
        self._sleep(0.5)  # late duplicates, if any, are counted too

    # -- the outcome

    def outcome(self) -> Outcome:
        jobs = self.db.jobs()
        alice_id = self.info["alice_id"]
        notes = self.db.notifications(alice_id)
        with self.ws.lock, self.stomp.lock:
            return self._outcome(jobs, notes)

    def _outcome(self, jobs: dict[str, dict], notes: list[tuple[int, str, str]]) -> Outcome:
        out = Outcome(config=asdict(self.config), jobs=len(self.ids))
        out.seconds = round(time.monotonic() - self._t0, 1)
        lost = [j for j in self.ids if j not in jobs or jobs[j]["status"] not in FINAL_STATUSES]
        out.jobs_lost = len(lost)
        out.final_states = dict(Counter(jobs[j]["status"] for j in self.ids if j in jobs))
        starts = Counter()
        completed = Counter()
        for parts in (line.split() for line in self.runs_file.read_text().splitlines()) if self.runs_file.exists() else ():
            if len(parts) == 3:
                (starts if parts[0] == "start" else completed)[parts[1]] += 1
        out.executions = sum(starts.values())
        out.jobs_rerun = sum(1 for n in starts.values() if n > 1)
        out.extra_runs = sum(n - 1 for n in starts.values() if n > 1)
        out.completed_runs_extra = sum(n - 1 for n in completed.values() if n > 1)

        by_job: dict[str, list[int]] = defaultdict(list)
        names = {jobs[j]["name"]: j for j in self.ids if j in jobs}
        for pk, title, link in notes:
            job = next((j for j in self.ids if j in (link or "")), None)
            if job is None:
                job = names.get(title.rsplit(": ", 1)[0])  # "chaos-12: Successful"
            if job is not None:
                by_job[job].append(pk)
        final = [j for j in self.ids if j in jobs and jobs[j]["status"] in FINAL_STATUSES]
        missing_rows = [j for j in final if not by_job.get(j)]
        out.notification_rows_missing = len(missing_rows)
        out.notification_rows_duplicated = sum(1 for j in final if len(by_job.get(j, ())) > 1)
        out.outage_notifications = len(self.outage_note_ids)
        all_rows = {pk for pk, _, _ in notes}
        ws_seen: set[int] = set()
        for sock in self.ws.sockets:
            for view in sock.views.values():
                if isinstance(view, NotificationView):
                    ws_seen |= view.ids
        out.ws_notifications_missed = len(all_rows - ws_seen)
        out.stomp_notifications_missed = len(all_rows - self.stomp.notes.ids)

        def judge(name: str, view: JobView, expected: list[str], is_list: bool) -> None:
            stale = [j for j in expected if j in view.latest and view.latest[j][1] != jobs[j]["status"]]
            unseen = [j for j in expected if j not in view.latest]
            out.stale[name] = len(stale) + (0 if is_list else len(unseen))
            if is_list:
                out.unseen[name] = len(unseen)
            out.final_missing[name] = sum(1 for j in expected if not view.finals.get(j))
            out.duplicated_finals[name] = sum(1 for j in expected if len(view.finals.get(j, ())) > 1)
            out.final_repeats[name] = view.final_repeats
            if stale or unseen:
                out.examples[name] = {"stale": [(j, view.latest[j], jobs[j]["status"]) for j in stale[:3]],
                                      "unseen": [(j, jobs[j]["status"]) for j in unseen[:3]]}

        for sock in self.ws.sockets:
            job_views = [v for v in sock.views.values() if isinstance(v, JobView)]
            if sock.kind == "page":  # what the page shows: the newest state from any of its subscriptions
                merged = JobView()
                for view in job_views:
                    for job, latest in view.latest.items():
                        if job not in merged.latest or latest[0] > merged.latest[job][0]:
                            merged.latest[job] = latest
                    for job, finals in view.finals.items():
                        merged.finals[job] |= finals
                    merged.final_repeats += view.final_repeats
                judge(f"ws {sock.name}", merged, [j for j in sock.expected if j in jobs], is_list=False)
            elif sock.kind == "list":
                for view in job_views:
                    judge(f"ws {sock.name}", view, final, is_list=True)
            out.reconnects[f"ws {sock.name}"] = max(0, sock.connects - 1)
            out.drops[f"ws {sock.name}"] = sock.closes
            if sock.errors:
                out.ws_errors[f"ws {sock.name}"] = sock.errors[-3:]
        judge("stomp.py /topic/jobs.all", self.stomp.jobs, final, is_list=True)
        out.reconnects["stomp.py"] = max(0, self.stomp.connects - 1)
        if missing_rows:
            out.examples["notification rows missing"] = missing_rows[:3]
        out.crashes = [{k: v for k, v in c.items() if k != "log"} | {"log": c["log"][-600:]} for c in self.crashes]
        out.faults = list(self.faults)
        out.rss = {k: list(v) for k, v in self.rss.items()}
        return out

    # -- teardown

    def logs(self) -> str:
        out = []
        for path in sorted(self.dir.glob("*.log")):
            out.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)

    def close(self) -> None:
        self._resume_due(force=True)
        for watcher in (self.ws, self.stomp):
            if watcher is not None:
                with contextlib.suppress(Exception):
                    watcher.stop()
        for name in list(self.procs):
            if name.startswith("worker") or name == "web":
                self._signal(name, signal.SIGTERM)
        for name in [n for n in list(self.procs) if n != "broker"]:
            self._retire(name)
        if "broker" in self.procs:
            self._signal("broker", signal.SIGTERM)
            self._retire("broker")
        if self.db is not None:
            with contextlib.suppress(Exception):
                self.db.drop()

    def __enter__(self) -> ChaosRun:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
