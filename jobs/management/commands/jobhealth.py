"""`manage.py jobhealth`: exit 0 when workers, queues and the broker are healthy, 1 with the reasons."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from jobs import health


class Command(BaseCommand):
    help = (
        "Check that some worker heartbeated recently, that no due READY job waits too long and that the "
        "STOMP broker answers. Prints one line per check; exits 0 when all pass, 1 with the failed checks' "
        "reasons otherwise (2 for bad options)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--max-heartbeat-age", type=float, metavar="S",
                            help="Seconds since the freshest worker heartbeat (default JOBS['STALE_AFTER']).")
        parser.add_argument("--max-ready-age", type=float, metavar="S",
                            help="Seconds the oldest due READY job may wait (default JOBS['HEALTH_MAX_READY_AGE']).")
        parser.add_argument("--queue", action="append", dest="queues", metavar="Q",
                            help="Check only these queues (repeat; default all).")
        parser.add_argument("--broker-timeout", type=float, metavar="S",
                            help="Seconds to open a STOMP session (default JOBS['HEALTH_BROKER_TIMEOUT']).")
        parser.add_argument("--no-broker", action="store_true", help="Do not check the broker.")

    def handle(self, *args, **options):
        for key in ("max_heartbeat_age", "max_ready_age", "broker_timeout"):
            if options[key] is not None and options[key] <= 0:
                raise CommandError(f"--{key.replace('_', '-')} must be a positive number of seconds.", returncode=2)
        checks = [health.check_workers(options["max_heartbeat_age"]),
                  *health.check_queues(options["max_ready_age"], options["queues"])]
        if not options["no_broker"]:
            checks.append(health.check_broker(options["broker_timeout"]))
        for check in checks:
            style = self.style.SUCCESS if check.ok else self.style.ERROR
            self.stdout.write(style(f"{'OK' if check.ok else 'FAIL'} {check.name}: {check.detail}"))
        failed = [c for c in checks if not c.ok]
        if failed:
            raise CommandError("unhealthy: " + "; ".join(f"{c.name}: {c.detail}" for c in failed), returncode=1)
