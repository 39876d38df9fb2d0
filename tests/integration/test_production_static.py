"""The production entry point: `collectstatic`, then a bare `daphne project.asgi:application` with
DEBUG off serves the pages' JavaScript and CSS itself (WhiteNoise), with no front server."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]

SERVED = {
    "/static/notifications/stomp-client.js": ROOT / "notifications/static/notifications/stomp-client.js",
    "/static/jobs/job-live.js": ROOT / "jobs/static/jobs/job-live.js",
    "/static/site.css": ROOT / "static/site.css",
}


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read(), response.headers.get("Cache-Control", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), ""


@pytest.mark.slow
def test_daphne_with_debug_off_serves_the_collected_static_files(tmp_path):
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings", DJANGO_DEBUG="0", DJANGO_SECRET_KEY="a-test-secret-" + "x" * 40,
        DJANGO_ALLOWED_HOSTS="127.0.0.1", DJANGO_VAR_DIR=str(tmp_path / "var"),
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", STOMP_BROKER_URL=f"stomp://127.0.0.1:{free_port()}",
    )
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=120)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "project.asgi:application"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                first = _get(base + "/static/site.css")
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        assert first[0] == 200
        for path, source in SERVED.items():
            status, body, _ = _get(base + path)
            assert (path, status, body) == (path, 200, source.read_bytes())
        assert _get(base + "/static/no-such-file.js")[0] == 404
    finally:
        proc.terminate()
        proc.wait(timeout=20)
