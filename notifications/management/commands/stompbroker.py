"""``manage.py stompbroker``: run the embedded STOMP broker (options default to NOTIFICATIONS["EMBEDDED_BROKER"])."""
from __future__ import annotations

import asyncio
import gc
import errno
import logging

from django.core.management.base import BaseCommand, CommandError

from notifications import conf
from notifications.broker import Broker, BrokerConfig, new_event_loop, parse_size, parse_user, until_signalled


class Command(BaseCommand):
    help = "Run the embedded STOMP 1.2 broker until interrupted (Ctrl-C or SIGTERM)."

    # Injectable for tests: an async callable whose completion stops the broker.
    shutdown_trigger = staticmethod(until_signalled)

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", help="address to listen on (default: EMBEDDED_BROKER HOST, 127.0.0.1)")
        parser.add_argument("--port", type=int, help="port to listen on (default: EMBEDDED_BROKER PORT, 61613)")
        parser.add_argument("--user", action="append", default=None, metavar="LOGIN:PASSCODE",
                            help="accept only these logins (repeatable; default: EMBEDDED_BROKER USERS, any login)")
        parser.add_argument("--data-file", help="SQLite file keeping queued messages across restarts")
        parser.add_argument("--max-memory", metavar="SIZE",
                            help="bytes held for all clients together, e.g. 256M (default: EMBEDDED_BROKER MAX_MEMORY)")
        parser.add_argument("--frame-timeout", type=float, metavar="SECONDS",
                            help="seconds a frame has to arrive whole (default: EMBEDDED_BROKER FRAME_TIMEOUT, 30)")
        parser.add_argument("--certfile", help="PEM certificate chain: listen with TLS, clients use stomp+ssl:// "
                            "(default: EMBEDDED_BROKER CERTFILE)")
        parser.add_argument("--keyfile", help="the certificate's private key (default: EMBEDDED_BROKER KEYFILE, "
                            "or in the certificate file)")
        parser.add_argument("--metrics-port", type=int, metavar="PORT",
                            help="serve Prometheus metrics on http://127.0.0.1:PORT/metrics (notifications.metrics)")
        parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                            help="log level of the broker (default INFO)")

    def handle(self, *args, **options) -> None:
        settings = conf.get("EMBEDDED_BROKER")
        host = options["host"] or settings["HOST"]
        port = options["port"] if options["port"] is not None else settings["PORT"]
        if options["user"] is not None:
            try:
                users = dict(parse_user(u) for u in options["user"])
            except ValueError as exc:
                raise CommandError(str(exc)) from None
        else:
            users = dict(settings["USERS"] or {})
        data_file = options["data_file"] or settings["DATA_FILE"]
        if options["max_memory"] is not None:
            try:
                max_memory = parse_size(options["max_memory"])
            except ValueError as exc:
                raise CommandError(f"--max-memory: {exc}") from None
        else:
            max_memory = settings["MAX_MEMORY"]
        frame_timeout = options["frame_timeout"] if options["frame_timeout"] is not None else settings["FRAME_TIMEOUT"]
        if frame_timeout <= 0:
            raise CommandError(f"--frame-timeout must be a positive number of seconds, not {frame_timeout:g}")
        certfile = options["certfile"] or settings["CERTFILE"]
        keyfile = options["keyfile"] or settings["KEYFILE"]
        logging.getLogger("notifications.broker").setLevel(options["log_level"])
        broker = Broker(BrokerConfig(
            host=host, port=port, users=users, data_file=data_file, max_memory=max_memory, frame_timeout=frame_timeout,
            certfile=certfile, keyfile=keyfile,
        ))

        async def serve() -> None:
            await broker.start()
            # Django and everything loaded at start-up live as long as the process: keep the
            # cyclic GC off them, so its pauses only scan what the broker creates.
            gc.freeze()
            who = f"{len(users)} configured user(s)" if users else "any login"
            self.stdout.write(f"STOMP broker listening on {broker.url} ({who}); Ctrl-C to stop", ending="\n")
            self.stdout.flush()
            metrics = None
            if options["metrics_port"] is not None:
                from notifications.metrics import serve_broker_metrics

                metrics = serve_broker_metrics(broker, asyncio.get_running_loop(), options["metrics_port"])
                self.stdout.write(f"Metrics on http://127.0.0.1:{metrics.server_port}/metrics", ending="\n")
                self.stdout.flush()
            try:
                await broker.run(self.shutdown_trigger)
            finally:
                if metrics is not None:
                    metrics.shutdown()

        try:
            asyncio.run(serve(), loop_factory=new_event_loop)
        except ValueError as exc:  # a TLS certificate or key that cannot be used
            raise CommandError(str(exc)) from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CommandError(
                    f"Port {port} on {host} is already in use. Port 61613 is usually taken by another "
                    "STOMP broker (RabbitMQ's STOMP plugin or ActiveMQ): either use that broker (set "
                    "STOMP_BROKER_URL to it), or run this one elsewhere, e.g. `manage.py stompbroker "
                    f"--port 61614`, and point STOMP_BROKER_URL at stomp://{host}:61614."
                ) from None
            raise CommandError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.stdout.write("STOMP broker stopped")
