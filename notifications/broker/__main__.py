"""``python -m notifications.broker``: the embedded STOMP broker without Django."""
from __future__ import annotations

import argparse
import asyncio
import gc
import errno
import logging
import sys

from .config import BrokerConfig
from .config import BrokerConfig as _Defaults
from .runner import new_event_loop, parse_size, parse_user, until_signalled
from .server import Broker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m notifications.broker", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=61613, help="port to listen on (default 61613; 0 picks one)")
    parser.add_argument("--user", action="append", default=[], metavar="LOGIN:PASSCODE",
                        help="accept only these logins (repeatable); none configured accepts any login")
    parser.add_argument("--data-file", default=None, help="SQLite file keeping queued messages across restarts")
    parser.add_argument("--max-memory", default=None, metavar="SIZE",
                        help="bytes held for all clients together, e.g. 256M (default 256M)")
    parser.add_argument("--frame-timeout", type=float, default=_Defaults.frame_timeout, metavar="SECONDS",
                        help=f"seconds a frame has to arrive whole (default {_Defaults.frame_timeout:g})")
    parser.add_argument("--certfile", default=None, help="PEM certificate chain: listen with TLS (stomp+ssl://)")
    parser.add_argument("--keyfile", default=None, help="the certificate's private key (default: in --certfile)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    try:
        users = dict(parse_user(u) for u in args.user)
        max_memory = parse_size(args.max_memory) if args.max_memory else _Defaults.max_memory
    except ValueError as exc:
        parser.error(str(exc))
    if args.frame_timeout <= 0:
        parser.error(f"--frame-timeout must be a positive number of seconds, not {args.frame_timeout:g}")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    broker = Broker(BrokerConfig(
        host=args.host, port=args.port, users=users, data_file=args.data_file, max_memory=max_memory,
        frame_timeout=args.frame_timeout, certfile=args.certfile, keyfile=args.keyfile,
    ))

    async def serve() -> None:
        await broker.start()
        # What start-up allocated lives as long as the process: keep the cyclic GC off it, so
        # its collections (pauses in the latency tail) only scan what the broker creates.
        gc.freeze()
        print(f"STOMP broker listening on {broker.url}", flush=True)
        await broker.run(until_signalled)

    try:
        asyncio.run(serve(), loop_factory=new_event_loop)
    except ValueError as exc:  # a TLS certificate or key that cannot be used
        print(str(exc), file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(f"Port {args.port} on {args.host} is already in use: pass another --port.", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
