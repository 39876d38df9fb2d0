"""@stomp/stompjs (run by node, `ws` as its WebSocket) talks to the site's /ws/stomp/ endpoint on a
real daphne, unchanged: it connects with the session cookie and receives a job's events."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from tests.browser.stack import ROOT, LiveStack, prepare_database
from tests.conftest import service_missing

pytestmark = pytest.mark.slow

INTEROP = ROOT / "tests" / "interop"
SCRIPT = INTEROP / "stompjs_ws_job.mjs"
# A debug report takes a few seconds; the machine may be loaded.
READ_TIMEOUT = 60.0

SETUP = """
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from jobs.api import enqueue_for
from jobs.tasks import debug_report

users = get_user_model()
alice, bob = users.objects.get(username="alice"), users.objects.get(username="bob")
sessions = []
for user in (alice, bob):
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    sessions.append(session.session_key)
job = enqueue_for(alice, debug_report)
print(sessions[0], sessions[1], job.id)
"""


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        service_missing("node is not installed")
    if not (INTEROP / "node_modules" / "@stomp" / "stompjs").exists() or not (INTEROP / "node_modules" / "ws").exists():
        service_missing("tests/interop/node_modules is missing: run `npm ci` in tests/interop")
    return path


@pytest.fixture
def broker_url(request) -> str:
    """The embedded broker; E2E_BROKER=rabbitmq runs the same tests on RabbitMQ."""
    if os.environ.get("E2E_BROKER") == "rabbitmq":
        return request.getfixturevalue("rabbitmq_stomp_url")
    return request.getfixturevalue("embedded_broker").url


@pytest.fixture(scope="module")
def template_db(tmp_path_factory):
    return prepare_database(tmp_path_factory.mktemp("template-db"))


@pytest.fixture
def stack(tmp_path, broker_url, template_db):
    """daphne without a worker yet, alice's READY debug report, and sessions for alice and bob."""
    running = LiveStack(var_dir=tmp_path / "var", broker_url=broker_url, template_db=template_db, worker=False)
    running.start()
    try:
        alice_session, bob_session, job_id = running.shell(SETUP).split()
        running.alice_session, running.bob_session, running.job_id = alice_session, bob_session, job_id
        yield running
    finally:
        running.stop()
        print(running.logs())


def run_client(node: str, stack: LiveStack, session: str, destination: str) -> subprocess.Popen:
    return subprocess.Popen(
        [node, str(SCRIPT), stack.ws_url, stack.url, session, destination],
        cwd=INTEROP, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def read_until(proc: subprocess.Popen, stop, timeout: float = READ_TIMEOUT) -> list[dict]:
    """Lines the client printed, up to the one `stop` accepts (bounded by `timeout`)."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(json.loads(line))
        if stop(seen[-1]):
            return seen
    proc.kill()
    raise AssertionError(f"the client stopped early or timed out; it printed {seen}\n{proc.stderr.read()}")


def test_stompjs_over_websocket_gets_the_job_snapshot_then_its_events_up_to_the_final_state(node, stack):
    client = run_client(node, stack, stack.alice_session, f"/topic/jobs.{stack.job_id}")
    try:
        first = read_until(client, lambda line: "message" in line)
        stack.start_worker()
        rest = read_until(client, lambda line: line.get("done") is True)
        assert client.wait(timeout=10) == 0
    finally:
        if client.poll() is None:
            client.kill()
    connected, snapshot = first[0], first[1]["message"]
    events = [line["message"] for line in rest if "message" in line]
    assert connected["protocol"] == "v12.stomp"
    assert connected["connected"]["version"] == "1.2"
    assert (snapshot["id"], snapshot["status"], snapshot["final"]) == (stack.job_id, "READY", False)
    seqs = [snapshot["seq"]] + [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))
    assert "RUNNING" in [e["status"] for e in events]
    final = events[-1]
    assert (final["status"], final["final"], final["progress"]["percent"]) == ("SUCCESSFUL", True, 100.0)
    assert final["result_url"] == f"/jobs/{stack.job_id}/download/"


def test_stompjs_subscribing_to_another_users_job_gets_an_error_frame_naming_the_destination(node, stack):
    destination = f"/topic/jobs.{stack.job_id}"
    client = run_client(node, stack, stack.bob_session, destination)
    try:
        lines = read_until(client, lambda line: "error" in line or "message" in line)
    finally:
        client.kill()
        client.wait(timeout=10)
    assert "message" not in lines[-1]
    assert lines[-1]["error"]["destination"] == destination
    assert lines[-1]["error"]["message"] == f"Not allowed to subscribe to {destination}"


FINISH_WHILE_AWAY = """
from django.utils import timezone
from jobs.models import Job
job = Job.objects.get(pk="{job_id}")
assert job.cas_update(status="SUCCESSFUL", finished_at=timezone.now(), progress_done=1, progress_total=1)
"""


def test_the_pages_client_resubscribes_with_since_and_learns_how_a_job_ended_while_it_was_away(node, stack):
    # Issue 8, defect 2, from the browser's side: the web process restarts; meanwhile alice's job
    # ends (no event reaches anyone). /user/queue/jobs then shows only running jobs, so only the
    # resync the client asks for (SUBSCRIBE's since) can tell it how the job ended.
    client = subprocess.Popen(
        [node, str(INTEROP / "page_client_resync.mjs"), stack.ws_url, stack.url, stack.alice_session, "/user/queue/jobs"],
        cwd=INTEROP, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        before = read_until(client, lambda line: line.get("receipt") == 1)
        assert [m["message"]["status"] for m in before if "message" in m] == ["READY"]
        stack.stop_web()
        read_until(client, lambda line: line.get("state") == "reconnecting")
        stack.shell(FINISH_WHILE_AWAY.format(job_id=stack.job_id))
        stack.start_web()
        after = read_until(client, lambda line: line.get("message", {}).get("status") == "SUCCESSFUL")
    finally:
        client.kill()
        client.wait(timeout=10)
    subscribes = [line["subscribe"] for line in before + after if "subscribe" in line]
    # The first SUBSCRIBE has no since; every one after a reconnect has it (a busy machine may
    # take more than one reconnect before the restarted web process answers).
    assert len(subscribes) >= 2
    assert ["since" in headers for headers in subscribes] == [False] + [True] * (len(subscribes) - 1)
    final = after[-1]["message"]
    assert (final["id"], final["status"], final["final"]) == (stack.job_id, "SUCCESSFUL", True)
