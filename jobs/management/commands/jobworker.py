"""`manage.py jobworker`: run jobs of some queues (all logic lives in jobs.worker.Worker)."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from jobs.worker import Worker


class Command(BaseCommand):
    help = (
        "Run jobs enqueued through the jobs.backends.JobBackend. SIGTERM/SIGINT stop claiming and let "
        "running jobs finish (up to JOBS['SHUTDOWN_GRACE'] seconds), then release them; a second signal forces."
    )

    def add_arguments(self, parser):
        parser.add_argument("--queue", action="append", dest="queues", metavar="Q",
                            help="A queue to serve (repeat for several; default: every queue of the backend).")
        parser.add_argument("--concurrency", type=int, help="Jobs run at once (default JOBS['CONCURRENCY']).")
        parser.add_argument("--burst", action="store_true", help="Exit once no job is ready to run and none runs.")
        parser.add_argument("--max-jobs", type=int, help="Exit after running this many jobs.")
        parser.add_argument("--poll-interval", type=float,
                            help="Seconds between claim queries without a STOMP wake-up (default JOBS['POLL_INTERVAL']).")
        parser.add_argument("--worker-id", help="Name recorded on the jobs it runs (default host:pid:random).")
        parser.add_argument("--backend", default="default", help="The TASKS alias to serve (default: default).")
        parser.add_argument("--shutdown-grace", type=float,
                            help="Seconds to let running jobs finish after SIGTERM (default JOBS['SHUTDOWN_GRACE']).")
        parser.add_argument("--no-wakeup", action="store_true", help="Do not subscribe to STOMP wake-ups; only poll.")
        parser.add_argument("--metrics-port", type=int, metavar="PORT",
                            help="Serve this worker's Prometheus metrics on http://HOST:PORT/metrics (0: any free port).")
        parser.add_argument("--metrics-host", default="127.0.0.1",
                            help="Address for --metrics-port (default 127.0.0.1).")
        parser.add_argument("--no-schedules", action="store_true",
                            help="Do not enqueue periodic tasks (jobs.schedules); other workers still do.")

    def handle(self, *args, **options):
        try:
            worker = Worker(
                queues=options["queues"],
                concurrency=options["concurrency"],
                burst=options["burst"],
                max_jobs=options["max_jobs"],
                poll_interval=options["poll_interval"],
                worker_id=options["worker_id"],
                backend=options["backend"],
                shutdown_grace=options["shutdown_grace"],
                install_signal_handlers=True,
                wakeups=not options["no_wakeup"],
                schedules=not options["no_schedules"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        server = None
        if options["metrics_port"] is not None:
            from jobs import metrics

            try:
                server = metrics.serve(options["metrics_port"], options["metrics_host"])
            except OSError as exc:
                raise CommandError(f"Cannot serve metrics on {options['metrics_host']}:{options['metrics_port']}: {exc}")
            self.stdout.write(f"Metrics on http://{options['metrics_host']}:{server.server_port}/metrics")
        try:
            stats = worker.run()
        finally:
            if server is not None:
                server.shutdown()
        self.stdout.write(
            f"Worker {worker.worker_id} ran {stats.claimed} job(s): {stats.succeeded} successful, "
            f"{stats.failed} failed, {stats.cancelled} cancelled, {stats.retried} retried, "
            f"{stats.released} released."
        )
