"""`manage.py runall`: the embedded STOMP broker, a job worker and the web server, together."""
from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from notifications import conf
from notifications.devstack import Part, PortTaken, Stack, manage_py


class Command(BaseCommand):
    help = (
        "Run the whole product on one machine: the embedded STOMP broker (unless --external-broker), "
        "one job worker and the web server (daphne). Ctrl-C stops everything."
    )

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1", help="web server address (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8000, help="web server port (default 8000)")
        parser.add_argument(
            "--external-broker",
            action="store_true",
            help="do not start the embedded broker: use the one NOTIFICATIONS['BROKER_URL'] points at",
        )
        parser.add_argument("--concurrency", type=int, default=2, help="jobs the worker runs at once")

    def handle(self, *args, addr, port, external_broker, concurrency, **options):
        # startproject's BASE_DIR holds manage.py; every part is started through it.
        base_dir = Path(getattr(settings, "BASE_DIR", None) or Path.cwd())
        if not (base_dir / "manage.py").is_file():
            raise CommandError(
                f"No manage.py in {base_dir}: runall starts each part with it. Set BASE_DIR to the folder that "
                "holds manage.py, or run from there."
            )
        try:
            url = conf.broker_url()
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        parts = []
        if not external_broker:
            if url.host not in {"127.0.0.1", "localhost", "::1"}:
                raise CommandError(
                    f"The broker URL {url} is not on this machine, so the embedded broker cannot serve it. "
                    "Use --external-broker, or set STOMP_BROKER_URL=stomp://127.0.0.1:61614."
                )
            parts.append(
                Part("broker", manage_py(base_dir, "stompbroker", "--host", url.host, "--port", str(url.port)), port=(url.host, url.port))
            )
        parts.append(Part("worker", manage_py(base_dir, "jobworker", "--concurrency", str(concurrency))))
        parts.append(Part("web", manage_py(base_dir, "runserver", "--noreload", f"{addr}:{port}"), port=(addr, port)))
        stack = Stack(
            parts=parts,
            cwd=base_dir,
            out=self.stdout,
            ready_message=f"==> ready: open http://{addr}:{port}/ , log in and start a debug report (Ctrl-C stops everything)",
        )
        try:
            status = stack.run()
        except PortTaken as exc:
            if external_broker or "broker" not in str(exc):
                raise CommandError(f"{exc}. Stop what is using it, or pick another port with --port.") from exc
            raise CommandError(
                f"{exc}: another STOMP broker (RabbitMQ's STOMP plugin or ActiveMQ use 61613) is running.\n"
                f"  Either run the embedded broker on another port:\n"
                f"      STOMP_BROKER_URL=stomp://127.0.0.1:61614 scripts/run\n"
                f"  or use the running broker instead of the embedded one:\n"
                f"      STOMP_BROKER_URL=stomp://guest:guest@127.0.0.1:61613 scripts/run --external-broker"
            ) from exc
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc
        if status:
            raise CommandError(f"a part of the stack exited with status {status}")
