"""`manage.py jobs list|show|cancel|retry|watch`: the jobs from a terminal (logic in jobs.terminal)."""
from __future__ import annotations

import asyncio
import uuid

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from jobs import terminal
from jobs.exceptions import JobStateError
from jobs.models import Job, JobStatus


def _job_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return value  # a prefix, resolved against the database


class Command(BaseCommand):
    help = (
        "Jobs from a terminal: list (with filters), show one, cancel, retry, and watch one job or all jobs live "
        "(snapshot from the database, then the STOMP stream; progress bars on a terminal, plain lines when piped). "
        "`watch ID` exits 0 when the job ends SUCCESSFUL, 1 FAILED, 3 CANCELLED; bad options exit 2."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="{list,show,cancel,retry,watch}")
        listing = sub.add_parser("list", help="List jobs, newest first.")
        listing.add_argument("--status", action="append", choices=JobStatus.values, help="Repeat for several.")
        listing.add_argument("--queue")
        listing.add_argument("--task", help="A task path, or the end of one (e.g. debug_report).")
        listing.add_argument("--owner", help="A username.")
        listing.add_argument("--limit", type=int, default=20)
        listing.add_argument("--plain", action="store_true", help="Tab-separated lines even on a terminal.")
        show = sub.add_parser("show", help="Everything about one job.")
        show.add_argument("job", help="A job id, or its first 8 or more characters.")
        for name, what in (("cancel", "Cancel jobs (a running one stops when its task checks)."),
                           ("retry", "Run FAILED or CANCELLED jobs again.")):
            action = sub.add_parser(name, help=what)
            action.add_argument("jobs", nargs="+", metavar="job")
        watching = sub.add_parser("watch", help="Watch one job until it ends, or all active jobs.")
        watching.add_argument("job", nargs="?", help="A job id or prefix; none: every READY or RUNNING job.")
        watching.add_argument("--until-idle", action="store_true", help="Without a job: stop once none is active.")
        watching.add_argument("--plain", action="store_true", help="Plain lines even on a terminal.")

    def handle(self, *args, **options):
        return getattr(self, f"do_{options['action']}")(options)

    # ------------------------------------------------------------------------------------------

    def _find(self, value: str) -> Job:
        value = value.strip().lower()
        try:
            return Job.objects.get(pk=uuid.UUID(value))
        except ValueError:
            pass
        except Job.DoesNotExist:
            raise CommandError(f"No job {value}.", returncode=2) from None
        hexpart = value.replace("-", "")
        if len(hexpart) < 4 or any(c not in "0123456789abcdef" for c in hexpart):
            raise CommandError(f"{value!r} is not a job id (a UUID or its first characters).", returncode=2)
        low, high = uuid.UUID(hexpart.ljust(32, "0")), uuid.UUID(hexpart.ljust(32, "f"))
        found = list(Job.objects.filter(pk__gte=low, pk__lte=high)[:2])
        if not found:
            raise CommandError(f"No job starts with {value}.", returncode=2)
        if len(found) > 1:
            raise CommandError(f"Several jobs start with {value}; give more characters.", returncode=2)
        return found[0]

    def do_list(self, options):
        if options["limit"] < 1:
            raise CommandError("--limit must be at least 1.", returncode=2)
        jobs = Job.objects.select_related("owner").order_by("-enqueued_at")
        if options["status"]:
            jobs = jobs.filter(status__in=options["status"])
        if options["queue"]:
            jobs = jobs.filter(queue=options["queue"])
        if options["task"]:
            task = options["task"]
            jobs = jobs.filter(task_path=task) if "." in task else jobs.filter(task_path__endswith=f".{task}")
        if options["owner"]:
            username = get_user_model().USERNAME_FIELD
            jobs = jobs.filter(**{f"owner__{username}": options["owner"]})
        terminal.print_list(self.stdout._out, terminal.job_rows(jobs[: options["limit"]]), plain=options["plain"])

    def do_show(self, options):
        terminal.print_detail(self.stdout._out, self._find(options["job"]))

    def do_cancel(self, options):
        failed = 0
        for value in options["jobs"]:
            job = self._find(value)
            try:
                with transaction.atomic():
                    ended = job.cancel()
            except JobStateError as exc:
                self.stderr.write(str(exc))
                failed += 1
                continue
            self.stdout.write(f"{job.pk}: cancelled" if ended else f"{job.pk}: asked to stop (it is running)")
        if failed:
            raise CommandError(f"{failed} job(s) could not be cancelled.", returncode=1)

    def do_retry(self, options):
        failed = 0
        for value in options["jobs"]:
            job = self._find(value)
            try:
                with transaction.atomic():
                    job.retry()
            except JobStateError as exc:
                self.stderr.write(str(exc))
                failed += 1
                continue
            self.stdout.write(f"{job.pk}: queued to run again")
        if failed:
            raise CommandError(f"{failed} job(s) could not be retried.", returncode=1)

    def do_watch(self, options):
        job_id = str(self._find(options["job"]).pk) if options["job"] else None
        renderer = terminal.renderer_for(self.stdout._out, plain=options["plain"])
        try:
            status = asyncio.run(terminal.watch(job_id, renderer, until_idle=options["until_idle"]))
        except KeyboardInterrupt:
            return
        except LookupError as exc:
            raise CommandError(str(exc), returncode=2) from exc
        if status is None:
            return
        code = terminal.EXIT_CODES.get(status, 1)
        if code:
            raise CommandError(f"Job {job_id} ended {status}.", returncode=code)
