"""The product run for real, for end-to-end tests: daphne and `manage.py jobworker` as subprocesses
sharing one file SQLite database and a STOMP broker, configured only through the environment.

Used by the browser tests and the @stomp/stompjs interoperability test.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_port
from tests.processes import stop_all

__all__ = ["ROOT", "PYTHON", "free_port", "wait_port", "LiveStack", "prepare_database", "manage"]

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
# Every wait in these tests is bounded; a loaded 2-core machine makes Django start in seconds.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

# Users every stack has: (username, password, is_superuser).
USERS = (("alice", "alice-pass-1", False), ("bob", "bob-pass-1", False), ("admin", "admin-pass-1", True))

_CREATE_USERS = """
from django.contrib.auth import get_user_model
User = get_user_model()
for name, password, superuser in {users!r}:
    if superuser:
        User.objects.create_superuser(name, name + "@example.com", password)
    else:
        User.objects.create_user(name, name + "@example.com", password)
"""


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


def environment(var_dir: Path, broker_url: str, debug: bool = True) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "tests.browser.e2e_settings",
            "DATABASE_URL": f"sqlite:///{var_dir / 'db.sqlite3'}",
            "DJANGO_VAR_DIR": str(var_dir),
            "STOMP_BROKER_URL": broker_url,
            "DJANGO_DEBUG": "1" if debug else "0",
            "DJANGO_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def manage(env: dict[str, str], *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run one management command to completion; its output is kept for the failure message."""
    done = subprocess.run(
        [PYTHON, str(ROOT / "manage.py"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def prepare_database(var_dir: Path) -> Path:
    """Migrate a fresh database and create the test users once; stacks copy the file."""
    var_dir.mkdir(parents=True, exist_ok=True)
    env = environment(var_dir, "stomp://127.0.0.1:1")
    manage(env, "migrate", "--noinput", timeout=120)
    manage(env, "shell", "--no-imports", "-c", _CREATE_USERS.format(users=USERS))
    # Fold the WAL into the main file so a plain copy carries everything.
    import sqlite3
    from contextlib import closing

    # A connection's own `with` ends a transaction, not the connection: closing() closes it.
    with closing(sqlite3.connect(var_dir / "db.sqlite3")) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return var_dir / "db.sqlite3"


@dataclass
class LiveStack:
    """daphne on a free port and one job worker, sharing `var_dir` and `broker_url`."""

    var_dir: Path
    broker_url: str
    template_db: Path | None = None
    worker: bool = True
    # DEBUG off: the production error pages; the static files must be collected first.
    debug: bool = True
    port: int = 0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return environment(self.var_dir, self.broker_url, self.debug)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/stomp/"

    def start(self) -> LiveStack:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        if self.template_db is not None:
            shutil.copyfile(self.template_db, self.var_dir / "db.sqlite3")
        self.port = free_port()
        # Daphne's runserver: the same daphne server and ASGI application, plus the static files
        # (DEBUG) that a bare `daphne project.asgi:application` leaves to a front server.
        self.start_web()
        if self.worker:
            self.start_worker()
        return self

    def start_web(self) -> None:
        """Start the web server on `self.port` and wait until it listens."""
        # The child gets its own copy of the log's file descriptor: ours is closed once it started.
        with open(self.var_dir / "web.log", "ab") as log:
            self.procs["web"] = subprocess.Popen(
                [PYTHON, str(ROOT / "manage.py"), "runserver", "--noreload", "--skip-checks", f"127.0.0.1:{self.port}"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            wait_port(self.port, START_TIMEOUT, self.procs["web"])
        except Exception:
            self.stop()
            raise

    def stop_web(self) -> None:
        """Stop the web server (every WebSocket drops); start_web() brings it back on the same port."""
        proc = self.procs.pop("web")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def start_worker(self) -> None:
        """Start `manage.py jobworker` (at start, or later by a test that wants jobs to wait first)."""
        with open(self.var_dir / "worker.log", "wb") as log:
            self.procs["worker"] = subprocess.Popen(
                [PYTHON, str(ROOT / "manage.py"), "jobworker", "--concurrency", "2", "--poll-interval", "0.5"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )

    def logs(self) -> str:
        out = []
        for name in self.procs:
            path = self.var_dir / f"{name}.log"
            if path.exists():
                out.append(f"--- {name} ---\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)

    def shell(self, code: str) -> str:
        """Run Python in a separate `manage.py shell` process against the same database and broker."""
        return manage(self.env, "shell", "--no-imports", "-c", code).stdout

    def stop(self) -> None:
        stop_all(self.procs, STOP_TIMEOUT)
        self.procs.clear()
