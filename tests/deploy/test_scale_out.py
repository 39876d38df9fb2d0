"""The deployment of deploy/, for real, in Chromium through nginx: 3 daphne processes and 3 job
workers on PostgreSQL and RabbitMQ's STOMP plugin (and again on ActiveMQ), behind nginx with
the project's own configuration over HTTPS.

Which web process serves a page's socket is read from the CONNECTED frame's session header
(`ws-<pid>-<n>`), as the page received it.
"""
from __future__ import annotations

import re
import signal
import ssl
import time
import urllib.request

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.deploy, pytest.mark.timeout(600)]

JOB_URL = re.compile(r"/jobs/([0-9a-f-]{36})/$")
# The debug report takes about 16 s here (tests/deploy/settings.py); a loaded 2-core machine
# may take several times longer, and a recovered job runs twice.
JOB_TIMEOUT_MS = 180_000

# Every job event a page applied: [browser clock in ms, status, attempts].
RECORD_UPDATES = """
window.__jobUpdates = [];
document.addEventListener('job:update',
  (e) => window.__jobUpdates.push([Date.now(), e.detail.status, e.detail.attempts]));
"""


class Sockets:
    """The web process (pid) behind each STOMP session a page opened, in order, read from the
    CONNECTED frames the page received."""

    def __init__(self, page):
        self.pids: list[int] = []
        page.on("websocket", lambda socket: socket.on("framereceived", self._frame))

    def _frame(self, payload) -> None:
        text = payload if isinstance(payload, str) else payload.decode("utf-8", "replace")
        for frame in text.split("\x00"):
            head, _, _ = frame.lstrip("\r\n").partition("\n\n")
            lines = head.split("\n")
            if lines[0] != "CONNECTED":
                continue
            headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
            match = re.fullmatch(r"ws-(\d+)-[0-9a-f]+", headers.get("session", ""))
            if match is None:
                raise AssertionError(f"CONNECTED without a ws-<pid>-<n> session header: {headers!r}")
            self.pids.append(int(match.group(1)))

    def wait(self, page, count: int, timeout: float = 60.0) -> int:
        """The pid of the page's ``count``-th session, once it was opened."""
        deadline = time.monotonic() + timeout
        while len(self.pids) < count and time.monotonic() < deadline:
            page.wait_for_timeout(100)  # lets Playwright deliver the frames
        assert len(self.pids) >= count, f"the page opened {len(self.pids)} STOMP sessions, not {count}"
        return self.pids[count - 1]


def open_watched(page, path: str) -> Sockets:
    sockets = Sockets(page)
    page.add_init_script(RECORD_UPDATES)
    page.goto(path)
    page.wait_for_function("document.documentElement.dataset.stomp === 'connected'")
    page.evaluate("window.__sameDocument = true")
    return sockets


def start_debug_report(page) -> tuple[str, Sockets]:
    """Start a debug report from the page listing the user's jobs; the page lands on the job's."""
    sockets = Sockets(page)
    page.add_init_script(RECORD_UPDATES)
    page.goto("/jobs/")
    page.wait_for_function("document.documentElement.dataset.stomp === 'connected'")
    sockets.wait(page, 1)
    sockets.pids.clear()  # the list page's session; the job page opens the one that counts
    page.click("form[action$='/debug-report/'] button[type=submit]")
    page.wait_for_url(JOB_URL)
    page.wait_for_function("document.documentElement.dataset.stomp === 'connected'")
    page.evaluate("window.__sameDocument = true")
    return JOB_URL.search(page.url).group(1), sockets


def job_widget(page, job_id: str):
    return page.locator(f'[data-job-live][data-job-id="{job_id}"]')


def admin_row(page, job_id: str):
    return page.locator(f'#result_list tbody tr:has(input.action-select[value="{job_id}"])')


def job_row(deployment, job_id: str) -> dict:
    """The job as the database has it now, with the pid of the worker that runs (or ran) it."""
    [(status, attempts, worker_ids, progress, pid)] = deployment.rows(
        "SELECT j.status, j.attempts, j.worker_ids, j.progress_done, w.pid FROM jobs_job j"
        " LEFT JOIN jobs_worker w ON w.id = j.worker_id WHERE j.id = %s", (job_id,)
    )
    return {"status": status, "attempts": attempts, "worker_ids": worker_ids, "progress": progress, "worker_pid": pid}


def wait_running(deployment, job_id: str, timeout: float = 60.0) -> dict:
    """The job once a worker runs it and has reported progress (AssertionError if it ended first)."""
    deadline = time.monotonic() + timeout
    row = job_row(deployment, job_id)
    while time.monotonic() < deadline:
        row = job_row(deployment, job_id)
        if row["status"] == "RUNNING" and row["progress"] >= 1 and row["worker_pid"]:
            return row
        assert row["status"] in {"READY", "RUNNING"}, f"the job ended before the test could act mid-job: {row}"
        time.sleep(0.1)
    raise AssertionError(f"the job was not running with progress within {timeout} s: {row}")


# ----------------------------------------------------------------------------------- tests


def test_nginx_serves_the_static_files_itself_and_passes_pages_to_the_web_processes(deployment):
    context = ssl.create_default_context(cafile=str(deployment.ca_file))
    with urllib.request.urlopen(f"{deployment.url}/static/notifications/stomp-client.js", context=context) as static:
        body = static.read()
        cache = static.headers["Cache-Control"]
    # A process nginx found refusing a connection (one still starting) is skipped for
    # fail_timeout (5 s): load the page until each process has served it, at most 10 rounds.
    served_by: set[int] = set()
    for _ in range(10 * len(deployment.web_ports)):
        with urllib.request.urlopen(f"{deployment.url}/login/", context=context) as login:
            assert login.status == 200
        logged = [line for line in deployment.nginx.access_log() if '"GET /login/ ' in line]
        served_by = {int(line.rsplit(":", 1)[1]) for line in logged}
        if served_by == set(deployment.web_ports):
            break
        time.sleep(0.5)

    assert b"export class" in body or b"export function" in body
    assert cache == "max-age=3600"  # nginx's `expires 1h`; WhiteNoise would say max-age=60
    assert served_by == set(deployment.web_ports)  # every process took some of the page loads
    assert not [line for line in deployment.nginx.access_log() if "/static/" in line]


def test_three_pages_on_three_web_processes_follow_a_job_started_from_one_of_them_to_its_end(
    deployment, new_page
):
    starter, watcher, admin = new_page("alice"), new_page("alice"), new_page("admin")

    job_id, starter_sockets = start_debug_report(starter)
    watcher_sockets = open_watched(watcher, f"/jobs/{job_id}/")
    admin_sockets = open_watched(admin, "/admin/jobs/job/")

    pids = [starter_sockets.wait(starter, 1), watcher_sockets.wait(watcher, 1), admin_sockets.wait(admin, 1)]
    assert len(set(pids)) == 3 and set(pids) <= set(deployment.web_pids())
    for page in (starter, watcher):
        expect(job_widget(page, job_id)).to_have_attribute("data-status", "SUCCESSFUL", timeout=JOB_TIMEOUT_MS)
        expect(job_widget(page, job_id).locator("[data-field=result]")).to_be_visible()
    row = admin_row(admin, job_id)
    expect(row.locator(".field-status_display")).to_have_text("Successful", timeout=JOB_TIMEOUT_MS)
    expect(row.locator(".field-progress_display [data-field=percent]")).to_have_text("100%")
    for page in (starter, watcher, admin):
        assert page.evaluate("window.__sameDocument") is True
    seen = [status for _, status, _ in watcher.evaluate("window.__jobUpdates")]
    assert "RUNNING" in seen and seen[-1] == "SUCCESSFUL"  # followed live, not loaded finished


def test_a_notification_sent_from_a_manage_py_shell_process_reaches_the_users_page(deployment, new_page):
    # Earlier tests' jobs notified alice at their end: none of that is unread.
    deployment.shell("from notifications.models import Notification\nNotification.objects.update(read=True)\n")
    page = new_page("alice")
    page.goto("/")
    expect(page.locator("[data-live-notifications]")).to_have_attribute("data-live", "ready")

    deployment.shell(
        "from django.contrib.auth import get_user_model\n"
        "from notifications.api import notify\n"
        "from notifications.publisher import get_publisher\n"
        "notify(get_user_model().objects.get(username='alice'), title='Hello from the shell',"
        " text='Sent by another process', level='warning')\n"
        "assert get_publisher().flush(10)\n"
    )

    toast = page.locator(".ln-toast")
    expect(toast).to_have_count(1)
    expect(toast.locator(".ln-title")).to_have_text("Hello from the shell")
    expect(page.locator(".ln-badge")).to_have_text("1")


def test_pages_of_a_web_process_killed_mid_job_reconnect_through_nginx_to_another_and_end_on_the_final_state(
    deployment, new_page
):
    starter, watcher, admin = new_page("alice"), new_page("alice"), new_page("admin")
    job_id, starter_sockets = start_debug_report(starter)
    watcher_sockets = open_watched(watcher, f"/jobs/{job_id}/")
    admin_sockets = open_watched(admin, "/admin/jobs/job/")
    victim = watcher_sockets.wait(watcher, 1)
    others = {starter_sockets.wait(starter, 1), admin_sockets.wait(admin, 1)}
    wait_running(deployment, job_id)

    port = deployment.web_pids()[victim]
    deployment.kill(f"web@{port}", signal.SIGKILL)
    assert job_row(deployment, job_id)["status"] == "RUNNING"  # killed mid-job

    watcher.wait_for_function("document.documentElement.dataset.stomp === 'reconnecting'")
    new_pid = watcher_sockets.wait(watcher, 2)
    expect(job_widget(watcher, job_id)).to_have_attribute("data-status", "SUCCESSFUL", timeout=JOB_TIMEOUT_MS)
    expect(job_widget(starter, job_id)).to_have_attribute("data-status", "SUCCESSFUL", timeout=JOB_TIMEOUT_MS)
    expect(admin_row(admin, job_id).locator(".field-status_display")).to_have_text("Successful")

    assert victim not in others
    assert new_pid != victim and new_pid in deployment.web_pids()
    assert watcher.evaluate("window.__sameDocument") is True
    assert (len(starter_sockets.pids), len(admin_sockets.pids)) == (1, 1)  # theirs never dropped
    assert job_row(deployment, job_id)["status"] == "SUCCESSFUL"


def test_a_job_whose_worker_is_killed_mid_job_is_recovered_by_another_worker_and_every_page_ends_on_its_end(
    deployment, new_page
):
    starter, admin = new_page("alice"), new_page("admin")
    job_id, _ = start_debug_report(starter)
    open_watched(admin, "/admin/jobs/job/")
    running = wait_running(deployment, job_id)
    assert running["attempts"] == 1

    deployment.kill(deployment.worker_pids()[running["worker_pid"]], signal.SIGKILL)
    assert job_row(deployment, job_id)["status"] == "RUNNING"  # killed mid-job

    expect(job_widget(starter, job_id)).to_have_attribute("data-status", "SUCCESSFUL", timeout=JOB_TIMEOUT_MS)
    row = admin_row(admin, job_id)
    expect(row.locator(".field-status_display")).to_have_text("Successful", timeout=JOB_TIMEOUT_MS)
    expect(row.locator(".field-attempts_display")).to_have_text("2/2")
    final = job_row(deployment, job_id)
    assert (final["status"], final["attempts"]) == ("SUCCESSFUL", 2)
    assert len(set(final["worker_ids"])) == 2  # the second attempt ran on another worker
    attempts_seen = [attempts for _, status, attempts in starter.evaluate("window.__jobUpdates") if status == "RUNNING"]
    assert 1 in attempts_seen and 2 in attempts_seen  # the page followed both attempts live
    assert starter.evaluate("window.__sameDocument") is True


def test_a_web_process_stopped_as_systemd_stops_it_closes_its_sockets_with_1001_and_its_pages_move_at_once(
    deployment, new_page
):
    from .deployment import stop_signal

    page = new_page("alice")
    sockets = open_watched(page, "/")
    page.evaluate(
        """async () => {
            const m = await import('/static/notifications/stomp-client.js');
            window.__closes = [];
            m.connection().addEventListener('disconnect', (e) => window.__closes.push(e.detail.reason.code));
        }"""
    )
    first = sockets.wait(page, 1)

    deployment.kill(f"web@{deployment.web_pids()[first]}", stop_signal("live-jobs-web@.service"))

    second = sockets.wait(page, 2)
    assert page.evaluate("window.__closes") == [1001]  # through nginx, as daphne sent it
    assert second != first and second in deployment.web_pids()
