"""`manage.py prunejobs`: delete finished jobs (with result files), old schedule runs and gone workers."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from jobs import conf
from jobs.retention import prune_jobs, prune_schedule_runs, prune_workers
from notifications.retention import parse_age


class Command(BaseCommand):
    help = (
        "Delete SUCCESSFUL, FAILED and CANCELLED jobs that finished more than --older-than ago (default "
        "JOBS['PRUNE_JOBS_AFTER'], 7 days) with their result files, schedule runs that old, and STOPPED or "
        "LOST worker rows older than JOBS['PRUNE_WORKERS_AFTER'], in small batches."
    )

    def add_arguments(self, parser):
        parser.add_argument("--older-than", metavar="AGE", help="e.g. 7d, 12h, 90m (default: the setting).")
        parser.add_argument("--batch-size", type=int, help="Rows deleted per transaction (default JOBS['PRUNE_BATCH']).")
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")

    def handle(self, *args, **options):
        try:
            older_than = parse_age(options["older_than"]) if options["older_than"] else None
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if options["batch_size"] is not None and options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        if older_than is None and conf.get("PRUNE_JOBS_AFTER") is None:
            self.stdout.write("JOBS['PRUNE_JOBS_AFTER'] is None: jobs are kept; pass --older-than to prune anyway.")
        dry_run = options["dry_run"]
        jobs = prune_jobs(older_than=older_than, batch_size=options["batch_size"], dry_run=dry_run)
        runs = prune_schedule_runs(older_than=older_than, batch_size=options["batch_size"], dry_run=dry_run)
        workers = prune_workers(dry_run=dry_run)
        verb = "Would delete" if dry_run else "Deleted"
        self.stdout.write(
            f"{verb} {jobs.jobs} job(s) ({jobs.files} result file(s)), {runs.schedule_runs} schedule run(s) and "
            f"{workers.workers} worker row(s)" + (" (dry run: nothing deleted)." if dry_run else
                                                   f" in {jobs.batches + runs.batches + workers.batches} batch(es).")
        )
        if jobs.file_errors:
            self.stderr.write(f"{jobs.file_errors} result file(s) could not be deleted; see the log.")
