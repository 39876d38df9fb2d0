"""`manage.py prunenotifications`: delete read notifications and broadcasts older than a limit."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from notifications import conf
from notifications.retention import DEFAULT_BATCH, parse_age, prune_notifications


class Command(BaseCommand):
    help = (
        "Delete read notifications and broadcasts older than --older-than (default "
        "NOTIFICATIONS['PRUNE_READ_AFTER'], 30 days), in small batches. Unread ones are kept."
    )

    def add_arguments(self, parser):
        parser.add_argument("--older-than", metavar="AGE", help="e.g. 30d, 12h, 90m (default: the setting).")
        parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                            help=f"Rows deleted per transaction (default {DEFAULT_BATCH}).")
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")

    def handle(self, *args, **options):
        try:
            older_than = parse_age(options["older_than"]) if options["older_than"] else None
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if older_than is None and conf.get("PRUNE_READ_AFTER") is None:
            self.stdout.write("NOTIFICATIONS['PRUNE_READ_AFTER'] is None: notifications are kept; "
                              "pass --older-than to prune anyway.")
            return
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        result = prune_notifications(older_than=older_than, batch_size=options["batch_size"],
                                     dry_run=options["dry_run"])
        if result.dry_run:
            self.stdout.write(f"Would delete {result.deleted} notification(s) (dry run: nothing deleted).")
        else:
            self.stdout.write(f"Deleted {result.deleted} notification(s) in {result.batches} batch(es).")
