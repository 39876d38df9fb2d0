"""Built-in tasks: the debug report, a downloadable text file about this installation.

The report is built step by step (each step reports progress and a log line, and honours a
cancel request), with a short pause between steps so a person can watch it run:
JOBS["DEBUG_REPORT_STEP_DELAY"] seconds (default 0.6; tests set 0). The text is stored with
jobs.progress.save_result_file() (default storage, jobs/<job id>/debug-report-<time>.txt) and
served by jobs:download; the task returns {"file": <storage name>, "size": <bytes>, ...}.

Secrets never reach the file: any setting whose name contains KEY, SECRET, PASSWORD, TOKEN,
PASS or CREDENTIAL is masked (recursively, inside dicts and lists too), and so is the password
of any URL (scheme://user:password@host) anywhere in settings values and log lines.

Recent log lines come from an in-process ring buffer (the last RECENT_LOG_LINES records of
the root logger at INFO and above), installed when this module is imported: admin autodiscovery
imports it in every process that loads the admin, the worker included.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import re
import socket
import ssl
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone
from typing import Any

from django.tasks import task
from django.template.defaultfilters import pluralize

from .progress import check_cancelled, current_job_id, log, report_progress, save_result_file

__all__ = [
    "debug_report",
    "build_debug_report",
    "ReportSection",
    "mask_secrets",
    "mask_url_passwords",
    "is_secret_name",
    "secret_key_problems",
    "RecentLogHandler",
    "install_recent_log_handler",
    "recent_log_lines",
    "DEFAULT_STEP_DELAY",
    "RECENT_LOG_LINES",
    "counted",
    "BrokerCheck",
    "check_broker",
    "check_brokers",
]

logger = logging.getLogger(__name__)

# A watchable demo: eight steps of ~0.6 s is about five seconds in total.
DEFAULT_STEP_DELAY = 0.6
# Log records kept in memory for the report's last section.
RECENT_LOG_LINES = 200
# How long the broker check may wait for TCP plus the CONNECTED frame.
BROKER_CHECK_TIMEOUT = 2.0
MASK = "********"

# Setting names (and dict keys inside settings) whose values are secrets.
_SECRET_NAME = re.compile(r"KEY|SECRET|PASSWORD|TOKEN|PASS|CREDENTIAL", re.IGNORECASE)
# scheme://user:password@host  ->  scheme://user:********@host
_URL_PASSWORD = re.compile(r"(?P<prefix>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<password>[^@\s/]+)(?P<at>@)")

# Django's own thresholds for a strong SECRET_KEY (django.core.checks.security.base).
SECRET_KEY_MIN_LENGTH = 50
SECRET_KEY_MIN_UNIQUE_CHARACTERS = 5
SECRET_KEY_INSECURE_PREFIXES = ("django-insecure", "insecure")


def counted(n: int, noun: str) -> str:
    """"1 problem", "2 problems": the report counts things in words, never "problem(s)"."""
    return f"{n} {noun}{pluralize(n)}"


# ----------------------------------------------------------------------------- masking


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(str(name)))


def mask_url_passwords(text: str) -> str:
    """Replace the password part of every URL in ``text``."""
    return _URL_PASSWORD.sub(lambda m: f"{m['prefix']}{MASK}{m['at']}", text)


def mask_secrets(value: Any, name: str = "") -> Any:
    """A copy of ``value`` fit for a report: secrets by name masked, URL passwords masked."""
    if name and is_secret_name(name):
        return MASK if value not in (None, "", [], {}, ()) else value
    if isinstance(value, dict):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_secrets(v) for v in value)
    if isinstance(value, str):
        return mask_url_passwords(value)
    return value


def secret_key_problems(key: str) -> list[str]:
    """Why SECRET_KEY is weak (empty list: strong enough), using Django's own thresholds."""
    problems = []
    if not key:
        return ["SECRET_KEY is empty"]
    if len(key) < SECRET_KEY_MIN_LENGTH:
        problems.append(f"shorter than {SECRET_KEY_MIN_LENGTH} characters ({len(key)})")
    if len(set(key)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS:
        problems.append(f"fewer than {SECRET_KEY_MIN_UNIQUE_CHARACTERS} distinct characters")
    if key.lower().startswith(SECRET_KEY_INSECURE_PREFIXES):
        problems.append("starts with 'insecure': a development key")
    return problems


# ----------------------------------------------------------------------------- recent logs


class RecentLogHandler(logging.Handler):
    """Keeps the last ``capacity`` formatted records in memory (a bounded ring buffer)."""

    def __init__(self, capacity: int = RECENT_LOG_LINES, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.records: deque[str] = deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append(self.format(record))
        except Exception:
            self.handleError(record)


_recent_handler: RecentLogHandler | None = None
_recent_lock = threading.Lock()


def install_recent_log_handler() -> RecentLogHandler:
    """Attach the ring buffer to the root logger once per process and return it."""
    global _recent_handler
    with _recent_lock:
        if _recent_handler is None:
            _recent_handler = RecentLogHandler()
            logging.getLogger().addHandler(_recent_handler)
        return _recent_handler


def recent_log_lines(limit: int = RECENT_LOG_LINES) -> list[str]:
    handler = install_recent_log_handler()
    lines = list(handler.records)
    return lines[-limit:] if limit else lines


install_recent_log_handler()


# ----------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class ReportSection:
    """One titled block of the report, and a one-line summary for the job's log."""

    title: str
    lines: tuple[str, ...]
    summary: str


def _section_environment() -> ReportSection:
    import django

    lines = (
        f"Python: {sys.version.split()[0]} ({platform.python_implementation()}, {sys.executable})",
        f"Django: {django.get_version()}",
        f"Platform: {platform.platform()}",
        f"Process: pid {os.getpid()} on {socket.gethostname()}",
        f"Settings module: {os.environ.get('DJANGO_SETTINGS_MODULE', '(not set)')}",
    )
    return ReportSection(
        "Environment", lines, f"Python {sys.version.split()[0]}, Django {django.get_version()}"
    )


def _section_packages() -> ReportSection:
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name") or ""
        if name:
            found.setdefault(name, dist.version)
    lines = tuple(f"{name}=={version}" for name, version in sorted(found.items(), key=lambda i: i[0].lower()))
    return ReportSection("Installed packages", lines, counted(len(lines), "installed package"))


def _section_settings() -> ReportSection:
    from django.conf import settings

    problems: list[str] = []
    if settings.DEBUG:
        problems.append("DEBUG is on: never in production")
    if not settings.ALLOWED_HOSTS:
        problems.append("ALLOWED_HOSTS is empty: only fine with DEBUG on")
    elif "*" in settings.ALLOWED_HOSTS:
        problems.append("ALLOWED_HOSTS contains '*': any Host header is accepted")
    key_problems = secret_key_problems(str(getattr(settings, "SECRET_KEY", "") or ""))
    lines = [
        f"DEBUG = {settings.DEBUG!r}",
        f"ALLOWED_HOSTS = {list(settings.ALLOWED_HOSTS)!r}",
        f"SECRET_KEY = {MASK} ({'strong enough' if not key_problems else 'weak: ' + '; '.join(key_problems)})",
    ]
    problems += [f"SECRET_KEY {p}" for p in key_problems]
    lines.append("")
    lines.append("Sanity: " + ("no problems found" if not problems else counted(len(problems), "problem")))
    lines += [f"  - {p}" for p in problems]
    lines.append("")
    lines.append("Settings set by this project, as `manage.py diffsettings` lists them (secrets masked):")
    for name in sorted(dir(settings)):
        if not name.isupper() or not settings.is_overridden(name):
            continue
        with warnings.catch_warnings():
            # Reading a deprecated setting warns; the report only shows it.
            warnings.simplefilter("ignore")
            value = mask_secrets(getattr(settings, name), name)
        lines.append(f"  {name} = {value!r}")
    summary = "settings look sane" if not problems else counted(len(problems), "settings problem")
    return ReportSection("Settings", tuple(lines), summary)


def _section_checks() -> ReportSection:
    from django.core import checks

    try:
        messages = checks.run_checks(include_deployment_checks=True)
    except Exception as exc:  # a broken check must not sink the whole report
        return ReportSection("System checks", (f"could not run: {type(exc).__name__}: {exc}",), "system checks failed to run")
    lines = tuple(mask_url_passwords(f"{m.id or '?'} [{logging.getLevelName(m.level)}] {m.msg}") for m in messages)
    return ReportSection(
        "System checks (deployment included)",
        lines or ("no issues",),
        counted(len(messages), "system check message") if messages else "no system check messages",
    )


def _section_database() -> ReportSection:
    from django.db import connection

    from .models import Job

    try:
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        elapsed_ms = (time.perf_counter() - started) * 1000
        version = _database_version(connection)
    except Exception as exc:
        return ReportSection(
            "Database", (f"FAILED: {type(exc).__name__}: {mask_url_passwords(str(exc))}",), "database check FAILED"
        )
    try:
        counts = {row["status"]: row["n"] for row in _job_counts(Job)}
        jobs_line = "Jobs by status: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")
    except Exception as exc:  # reachable but not migrated: say so, the check itself passed
        jobs_line = f"Jobs by status: unavailable ({type(exc).__name__}: {exc})"
    name = mask_url_passwords(str(connection.settings_dict.get("NAME", "")))
    lines = (
        f"Status: ok (SELECT 1 in {elapsed_ms:.1f} ms)",
        f"Vendor: {connection.vendor} {version}",
        f"Name: {name}",
        jobs_line,
    )
    return ReportSection("Database", lines, f"database ok ({connection.vendor} {version})")


def _database_version(connection) -> str:
    if connection.vendor == "sqlite":
        import sqlite3

        return sqlite3.sqlite_version
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SHOW server_version")
        else:
            cursor.execute("SELECT VERSION()")
        return str(cursor.fetchone()[0])


def _job_counts(Job) -> Iterable[dict]:
    from django.db.models import Count

    return Job.objects.order_by().values("status").annotate(n=Count("id"))


@dataclass(frozen=True)
class BrokerCheck:
    """What one broker of the list answered to a fresh STOMP connection."""

    url: str  # as str(BrokerURL) shows it: the password masked
    ok: bool
    detail: str  # "CONNECTED in 3 ms (STOMP 1.2, server ..., host header '/')" or why not


def check_brokers(url: Any = None, timeout: float = BROKER_CHECK_TIMEOUT) -> list[BrokerCheck]:
    """Open a fresh STOMP connection (CONNECT, wait for CONNECTED, DISCONNECT) to every broker of
    ``url`` at once, each within ``timeout`` seconds.

    ``url``: NOTIFICATIONS["BROKER_URL"] by default, or anything it may hold (one URL, several
    separated by commas, failover:(...), a list). Each connection is made as the hub and the
    publisher make theirs (notifications.connection): TLS with the certificate verified, the
    host header "/" then the broker's names when one is refused, a known defect named. A URL
    that cannot be read gives one failed entry saying why. Never raises.
    """
    from notifications import conf

    try:
        urls = conf.as_broker_urls(url)
    except ValueError as exc:
        given = url if url is not None else conf.get("BROKER_URL")
        return [BrokerCheck(mask_url_passwords(str(given)), False, str(exc))]
    if len(urls) == 1:
        return [_check_one_broker(urls[0], timeout)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(urls), thread_name_prefix="broker-check") as pool:
        return list(pool.map(lambda u: _check_one_broker(u, timeout), urls))


def check_broker(url: Any = None, timeout: float = BROKER_CHECK_TIMEOUT) -> tuple[bool, str]:
    """(every broker answered, one line per broker: "<url>: <what it answered>"); see check_brokers()."""
    results = check_brokers(url, timeout)
    return all(r.ok for r in results), "\n".join(f"{r.url}: {r.detail}" for r in results)


def _check_one_broker(url, timeout: float) -> BrokerCheck:
    from notifications import connection
    from notifications.codec import StompError

    state = connection.BrokerState(url, 0)
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    refused: list[str] = []
    try:
        context = connection.ssl_context(url)
    except OSError as exc:
        return BrokerCheck(str(url), False, str(exc))
    while True:
        host = state.host
        try:
            frame, tls = _connect_once(url, context, host, deadline)
        except TimeoutError:
            return BrokerCheck(str(url), False, f"no CONNECTED within {timeout:g} s (timed out)")
        except ssl.SSLError as exc:
            return BrokerCheck(str(url), False, connection.tls_error_text(url, exc))
        except (OSError, StompError, ValueError, UnicodeError) as exc:
            return BrokerCheck(str(url), False, f"{type(exc).__name__}: {exc}")
        if frame is None:
            return BrokerCheck(str(url), False, "connection closed before CONNECTED")
        if frame.command == "CONNECTED":
            break
        if frame.command != "ERROR":
            return BrokerCheck(str(url), False, f"answered CONNECT with {frame.command}")
        message = frame.get("message") or frame.body.decode("utf-8", "replace").strip() or "no message"
        refused.append(f"host {host!r}: {message}")
        # The next host header, as the hub and publisher would try (a vhost in the URL has none).
        if not state.host_refused(message):
            return BrokerCheck(str(url), False, f"refused the CONNECT ({'; '.join(refused)})")
    elapsed_ms = (time.perf_counter() - started) * 1000
    parts = [f"STOMP {frame.get('version') or '1.0'}"]
    server = frame.get("server")
    parts.append(f"server {server!r}" if server else "no server header")
    parts.append(f"host header {state.host_accepted()}")
    if tls:
        parts.append(tls)
    detail = f"CONNECTED in {elapsed_ms:.0f} ms ({', '.join(parts)})"
    defect = connection.known_defect(server)
    if defect is not None:
        detail += f"; known defect of {defect.broker}: {defect.reason}; the hub and publishers work around it by {defect.workaround}"
    return BrokerCheck(str(url), True, detail)


def _connect_once(url, context, host: str, deadline: float):
    """(the broker's first frame or None if it closed first, "TLS <version>" or None) for one
    CONNECT with ``host``; socket errors and TimeoutError pass through."""
    from notifications.codec import Frame, FrameParser, encode_frame

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        return left

    headers = [("accept-version", "1.0,1.1,1.2"), ("host", host), ("heart-beat", "0,0")]
    if url.login is not None:
        headers.append(("login", url.login))
    if url.passcode is not None:
        headers.append(("passcode", url.passcode))
    connect = encode_frame(Frame("CONNECT", tuple(headers)))
    with socket.create_connection((url.host, url.port), timeout=remaining()) as raw:
        sock = context.wrap_socket(raw, server_hostname=url.host) if context is not None else raw
        try:
            tls = f"TLS {sock.version()}" if context is not None else None
            sock.sendall(connect)
            parser = FrameParser()
            while True:
                sock.settimeout(remaining())
                data = sock.recv(65536)
                if not data:
                    return None, tls
                parser.receive_data(data)
                for event in parser.events_received():
                    if isinstance(event, Frame):
                        if event.command == "CONNECTED":
                            try:
                                sock.sendall(encode_frame(Frame("DISCONNECT")))
                            except OSError:
                                pass
                        return event, tls
        finally:
            if sock is not raw:
                sock.close()


def _section_broker() -> ReportSection:
    results = check_brokers()
    failed = sum(not r.ok for r in results)
    if not failed:
        status, summary = "Status: ok", "broker ok"
    elif failed == len(results):
        status, summary = "Status: FAILED", "broker check FAILED"
    else:
        status = f"Status: FAILED: {failed} of {len(results)} brokers did not answer (processes use the others meanwhile)"
        summary = f"broker check FAILED ({failed} of {len(results)} brokers did not answer)"
    lines = [status, *(f"{r.url}: {r.detail}" for r in results)]
    try:
        from notifications.publisher import get_publisher

        stats = get_publisher().stats()
        lines.append(
            f"This process's publisher: connected={stats.connected}, pending={stats.pending}, "
            f"in flight={stats.in_flight}, sent={stats.sent}, dropped={stats.dropped}, outages={stats.outages}"
        )
    except Exception as exc:
        lines.append(f"This process's publisher: unavailable ({type(exc).__name__}: {exc})")
    return ReportSection("STOMP broker", tuple(lines), summary)


def _section_logs() -> ReportSection:
    lines = tuple(mask_url_passwords(line) for line in recent_log_lines())
    return ReportSection(
        f"Recent log lines (last {RECENT_LOG_LINES} of this process, INFO and above)",
        lines or ("(none yet)",),
        counted(len(lines), "recent log line"),
    )


# (progress message, section builder); the order is the order of the file.
STEPS: tuple[tuple[str, Callable[[], ReportSection]], ...] = (
    ("Collecting Python and Django versions", _section_environment),
    ("Listing installed packages", _section_packages),
    ("Checking settings (secrets masked)", _section_settings),
    ("Running Django's system checks", _section_checks),
    ("Checking the database", _section_database),
    ("Checking the STOMP broker", _section_broker),
    ("Collecting recent log lines", _section_logs),
)


def _step_delay() -> float:
    from . import conf

    try:
        return max(0.0, float(conf.get("DEBUG_REPORT_STEP_DELAY")))
    except KeyError:  # a jobs.conf without the key (older tree): the built-in default
        return DEFAULT_STEP_DELAY
    except (TypeError, ValueError):
        logger.warning("JOBS['DEBUG_REPORT_STEP_DELAY'] must be a number of seconds; using %s", DEFAULT_STEP_DELAY)
        return DEFAULT_STEP_DELAY


def build_debug_report(
    before_step: Callable[[int, int, str], None] | None = None,
    after_step: Callable[[ReportSection], None] | None = None,
    step_delay: float = 0.0,
) -> tuple[str, list[ReportSection]]:
    """Build the report text. ``before_step(done, total, message)`` runs before each step (it
    may raise to stop, e.g. JobCancelled), ``after_step(section)`` after it."""
    generated = datetime.now(dt_timezone.utc)
    sections: list[ReportSection] = []
    total = len(STEPS) + 1
    for index, (message, build) in enumerate(STEPS):
        if before_step is not None:
            before_step(index, total, message)
        if step_delay:
            time.sleep(step_delay)
        section = build()
        sections.append(section)
        if after_step is not None:
            after_step(section)
    job_id = current_job_id()
    out = [
        "Debug report",
        f"Generated: {generated.isoformat(timespec='seconds')}",
        f"Job: {job_id}" if job_id else "Job: (run outside a worker)",
        "",
    ]
    for section in sections:
        out += [section.title, "=" * len(section.title), *section.lines, ""]
    return "\n".join(out), sections


def _before_step(done: int, total: int, message: str) -> None:
    check_cancelled()
    report_progress(done, total, message + "…")


def _after_step(section: ReportSection) -> None:
    log(f"{section.title}: {section.summary}")


def _report_queue() -> str:
    """"reports" when the default backend serves it (the project's settings), else a queue it does
    serve: importing this module (the admin does) must never fail on another project's TASKS."""
    from django.conf import settings

    queues = list((getattr(settings, "TASKS", {}) or {}).get("default", {}).get("QUEUES", ["default"]) or [])
    if not queues or "reports" in queues:
        return "reports"
    return "default" if "default" in queues else queues[0]


@task(queue_name=_report_queue())
def debug_report() -> dict[str, Any]:
    """Collect versions, packages, settings sanity, database and broker checks and recent logs
    into a downloadable text file, step by step."""
    total = len(STEPS) + 1
    text, sections = build_debug_report(_before_step, _after_step, step_delay=_step_delay())
    check_cancelled()
    report_progress(len(STEPS), total, "Writing the report file…")
    filename = f"debug-report-{datetime.now(dt_timezone.utc).strftime('%Y%m%d-%H%M%S')}.txt"
    name = save_result_file(filename, text)
    size = len(text.encode("utf-8"))
    failed = [s.title for s in sections if "FAILED" in s.summary]
    report_progress(total, total, "Report ready" + (f" ({', '.join(failed)} failed)" if failed else ""))
    log(f"Wrote {filename} ({size} bytes)")
    return {
        "file": name,
        "filename": filename,
        "size": size,
        "sections": [s.title for s in sections],
        "failed_checks": failed,
    }
