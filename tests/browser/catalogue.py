"""Every page the product ships, in known states: what the screenshots and the accessibility
checks look at.

seed(stack) writes jobs in each state (no worker runs, so they stay put) and a few
notifications; PAGES names each page, who looks at it and how to reach its interesting state.
Used by scripts/screenshots (tests/browser/screenshots.py) and tests/browser/test_pages.py.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["SEED", "Page", "PAGES", "seed", "open_page"]

# Run in `manage.py shell` of the stack: jobs of alice in every state, one of bob's, a result
# file, notifications. Prints the ids as JSON.
SEED = r"""
import json
from datetime import timedelta
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone
from jobs.api import job_options
from jobs.models import Job
from jobs.tasks import debug_report
from notifications.api import notify

User = get_user_model()
alice, bob = User.objects.get(username="alice"), User.objects.get(username="bob")
now = timezone.now()
STEPS = ["Collecting Python and Django versions", "Listing installed packages", "Checking settings (secrets masked)",
         "Running Django's system checks", "Checking the database", "Checking the STOMP broker",
         "Collecting recent log lines"]
SUMMARIES = ["Environment: Python 3.13.5, Django 6.1.3", "Installed packages: 84 installed packages",
             "Settings: 2 settings problems", "System checks (deployment included): 6 system check messages",
             "Database: database ok", "STOMP broker: broker ok", "Recent log lines: 12 recent log lines"]

def make(owner, name, **state):
    with job_options(owner=owner, name=name):
        result = debug_report.enqueue()
    job = Job.objects.get(pk=result.id)
    if "started_at" in state:
        state.setdefault("enqueued_at", state["started_at"] - timedelta(seconds=2))
    if state:
        Job.objects.filter(pk=job.pk).update(**state)
    return Job.objects.get(pk=job.pk)

def log(n, minutes_ago=1):
    at = now - timedelta(minutes=minutes_ago)
    return [{"n": i + 1, "at": (at + timedelta(seconds=i)).isoformat(), "text": SUMMARIES[i]} for i in range(n)]

ready = make(alice, "Debug report (waiting)")
running = make(alice, "Debug report", status="RUNNING", started_at=now - timedelta(seconds=4), heartbeat_at=now,
               attempts=1, progress_done=3, progress_total=8, message=STEPS[3] + "…", log=log(3), log_count=3,
               worker_id="screens-1")
starting = make(alice, "Debug report (starting)", status="RUNNING", started_at=now, heartbeat_at=now, attempts=1,
                progress_done=0, progress_total=8, message=STEPS[0] + "…", worker_id="screens-1")
done = make(alice, "Debug report", status="SUCCESSFUL", started_at=now - timedelta(minutes=3, seconds=5),
            finished_at=now - timedelta(minutes=3), attempts=1, progress_done=8, progress_total=8,
            message="Report ready", log=log(7, 3) + [{"n": 8, "at": (now - timedelta(minutes=3)).isoformat(),
            "text": "Wrote debug-report-20261122-054812.txt (9120 bytes)"}], log_count=8, result={"size": 9120})
name = default_storage.save(f"jobs/{done.pk}/debug-report-20261122-054812.txt", ContentFile(b"Debug report\n" + b"x\n" * 4000))
Job.objects.filter(pk=done.pk).update(result_file=name)
failed = make(alice, "Debug report", status="FAILED", started_at=now - timedelta(minutes=9, seconds=2),
              finished_at=now - timedelta(minutes=9), attempts=1, progress_done=4, progress_total=8,
              message=STEPS[4] + "…", log=log(4, 9), log_count=4, error_type="builtins.OSError",
              error_message="[Errno 28] No space left on device", error_traceback="Traceback (most recent call last):\n  ...\nOSError: [Errno 28] No space left on device")
cancelled = make(alice, "Debug report", status="CANCELLED", started_at=now - timedelta(minutes=12, seconds=2),
                 finished_at=now - timedelta(minutes=12), attempts=1, progress_done=1, progress_total=8,
                 message=STEPS[1] + "…", log=log(1, 12), log_count=1, cancel_requested=True,
                 error_type="jobs.exceptions.JobCancelled", error_message="Cancelled while running.")
theirs = make(bob, "Nightly export of the customer ledger for the finance department",
              status="RUNNING", started_at=now - timedelta(seconds=30), heartbeat_at=now, attempts=1,
              progress_done=1200, progress_total=5000, message="row 1200 of 5000", worker_id="screens-1")
notify(alice, title="Debug report: Successful", text="Report ready", level="success", link=f"/jobs/{done.pk}/download/")
notify(alice, title="Debug report: Failed", text="[Errno 28] No space left on device", level="error",
       link=f"/jobs/{failed.pk}/")
notify(alice, title="Maintenance tonight at 22:00", text="The site may be slow for ten minutes.", level="warning")
print(json.dumps({"ready": str(ready.pk), "running": str(running.pk), "starting": str(starting.pk),
                  "done": str(done.pk), "failed": str(failed.pk), "cancelled": str(cancelled.pk),
                  "theirs": str(theirs.pk)}))
"""


def seed(stack) -> dict[str, str]:
    """Seed a LiveStack's database (see SEED); returns the job ids by role."""
    return json.loads(stack.shell(SEED).strip().splitlines()[-1])


def _open_notifications(page) -> None:
    page.click(".ln-panel > summary")
    page.wait_for_selector(".ln-dropdown", state="visible")


def _show_toasts(page) -> None:
    """Two toasts as live-notifications.js shows them (its own toast(); nothing is sent)."""
    page.wait_for_function("window.liveNotifications !== undefined")
    page.evaluate(
        """() => {
          const ln = window.liveNotifications;
          ln.toast({ id: 990001, level: 'success', title: 'Debug report: Successful', text: 'Report ready',
                     link: '/jobs/00000000-0000-0000-0000-000000000000/download/' });
          ln.toast({ id: 990002, level: 'error', title: 'Debug report failed',
                     text: '[Errno 28] No space left on device', link: '/jobs/' });
        }"""
    )
    page.wait_for_selector(".ln-toast >> nth=1")


@dataclass(frozen=True)
class Page:
    """One page to look at: `path` may name seeded jobs as {running}, {done}..."""

    name: str
    user: str | None
    path: str
    prepare: Callable | None = None  # run on the loaded page, e.g. open a dropdown
    admin: bool = False

    def url(self, ids: dict[str, str]) -> str:
        return self.path.format(**ids)


PAGES: tuple[Page, ...] = (
    Page("home-anonymous", None, "/"),
    Page("login", None, "/login/"),
    Page("home", "alice", "/"),
    Page("jobs-list", "alice", "/jobs/"),
    Page("all-jobs", "admin", "/jobs/"),
    Page("job-running", "alice", "/jobs/{running}/"),
    Page("job-starting", "alice", "/jobs/{starting}/"),
    Page("job-finished", "alice", "/jobs/{done}/"),
    Page("job-failed", "alice", "/jobs/{failed}/"),
    Page("job-cancelled", "alice", "/jobs/{cancelled}/"),
    Page("start-debug-report", "alice", "/jobs/debug-report/"),
    Page("notifications-open", "alice", "/jobs/", prepare=_open_notifications),
    Page("toasts", "alice", "/", prepare=_show_toasts),
    Page("admin-toasts", "admin", "/admin/jobs/job/", prepare=_show_toasts, admin=True),
    Page("admin-jobs", "admin", "/admin/jobs/job/", admin=True),
    Page("admin-job-running", "admin", "/admin/jobs/job/{running}/change/", admin=True),
    Page("admin-job-finished", "admin", "/admin/jobs/job/{done}/change/", admin=True),
    Page("not-found", "bob", "/jobs/{done}/"),
)


def open_page(page, spec: Page, ids: dict[str, str]) -> None:
    """Load `spec` in `page` (its context has the stack's base_url and is logged in as
    spec.user), settled: live connection made where there is one, fonts loaded, its prepare
    step done."""
    page.goto(spec.url(ids))
    if spec.user is not None and page.locator("[data-live-notifications]").count():
        page.wait_for_function("document.documentElement.dataset.stomp === 'connected'", timeout=20_000)
    page.evaluate("document.fonts.ready")
    if spec.prepare is not None:
        spec.prepare(page)
