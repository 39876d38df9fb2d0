"""A soak of the whole stack with memory sampled: the same load, cycle after cycle, RSS must stay flat.

Each cycle, while long jobs stream progress through the broker and daphne:
- ``sockets`` WebSockets open as pages do (notifications and a running job's topic), wait for
  their snapshots, and close;
- ``clients`` plain STOMP clients connect to the broker, subscribe, send with a receipt, and leave;
- ``oversize`` connections send a frame past the broker's frame-size limit (4.25 MiB) and are
  refused (issue 8's defect 5 was 4.5 MB kept per such connection);
then the RSS of the broker, daphne and the worker is sampled. Memory is judged after the first
``warmup`` cycles (allocators and caches fill once): ``growth`` is the highest later sample less
the first post-warm-up one, per process (the peak, not the end: a cyclic collection may free a
leak's garbage now and then, and what a machine must hold is the peak).

Used by tests/chaos/test_soak.py (short) and bench/chaos_soak.py (long).
"""
from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from notifications.codec import HEARTBEAT, FrameParser

from .harness import ChaosConfig, ChaosRun, rss_bytes

__all__ = ["SoakConfig", "SoakResult", "soak"]

OVERSIZE = b"SEND\ndestination:/queue/soak\n\n" + b"x" * (4 * 1024 * 1024 + 300 * 1024) + b"\x00"


@dataclass
class SoakConfig:
    cycles: int = 8
    warmup: int = 2
    sockets: int = 20
    clients: int = 20
    oversize: int = 10
    job_seconds: float = 600.0  # the streaming jobs outlast the soak (released when it stops)
    db: str = "sqlite"


@dataclass
class SoakResult:
    config: dict
    cycles: int = 0
    seconds: float = 0.0
    rss: dict = field(default_factory=dict)  # process -> [bytes per cycle]
    growth: dict = field(default_factory=dict)  # process -> bytes after the warm-up
    socket_errors: list = field(default_factory=list)
    client_errors: int = 0
    oversize_refused: int = 0
    crashes: list = field(default_factory=list)
    events_seen: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


async def _page(port: int, session: str, job: str) -> int:
    """One page's socket: subscribe, take the snapshots, close. Returns the messages it got."""
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{port}/ws/stomp/", subprotocols=["v12.stomp"],
                       additional_headers={"Cookie": f"sessionid={session}"}, origin=f"http://127.0.0.1:{port}",
                       open_timeout=30, ping_interval=None) as ws:
        await ws.send("CONNECT\naccept-version:1.2\nhost:127.0.0.1\nheart-beat:0,0\n\n\x00")
        await ws.send("SUBSCRIBE\nid:n\ndestination:/user/queue/notifications\n\n\x00")
        await ws.send(f"SUBSCRIBE\nid:j\ndestination:/topic/jobs.{job}\nreceipt:done\n\n\x00")
        parser, messages = FrameParser(), 0
        async with asyncio.timeout(30):
            async for data in ws:
                parser.receive_data(data.encode() if isinstance(data, str) else data)
                for frame in parser.events_received():
                    if frame is HEARTBEAT:
                        continue
                    if frame.command == "ERROR":
                        raise RuntimeError(f"ERROR {frame.get('message')}")
                    if frame.command == "MESSAGE":
                        messages += 1
                    if messages >= 2:  # both snapshots: the page is up to date
                        return messages
    return messages


def _client(port: int, n: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(b"CONNECT\naccept-version:1.2\nhost:/\n\n\x00"
                     + f"SUBSCRIBE\nid:0\ndestination:/topic/soak-{n % 5}\n\n\x00".encode()
                     + f"SEND\ndestination:/topic/soak-{n % 5}\nreceipt:r\n\nsoak {n}\x00".encode()
                     + b"DISCONNECT\nreceipt:bye\n\n\x00")
        parser, deadline = FrameParser(), time.monotonic() + 15
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                return False
            parser.receive_data(data)
            if any(e is not HEARTBEAT and e.get("receipt-id") == "bye" for e in parser.events_received()):
                return True
    return False


def _oversize(port: int) -> bool:
    """Send a frame past the limit; True when the broker answered ERROR (or closed) instead of taking it."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(b"CONNECT\naccept-version:1.2\nhost:/\n\n\x00")
        try:
            sock.sendall(OVERSIZE)
        except OSError:
            return True  # reset while sending: refused
        answer = b""
        with_timeout = time.monotonic() + 15
        while time.monotonic() < with_timeout:
            try:
                data = sock.recv(65536)
            except OSError:
                return True
            if not data:
                return True  # closed on us: refused, with or without an ERROR first
            answer += data
            if b"ERROR" in answer:
                return True
    return False


def soak(config: SoakConfig, workdir: Path, *, template_db: Path | None = None,
         postgres_url: str | None = None) -> SoakResult:
    chaos = ChaosRun(ChaosConfig(db=config.db, jobs=2, workers=1, steps=int(config.job_seconds / 0.02),
                                 step_delay=0.02, worker_kills=0, worker_stops=0),
                     workdir, template_db=template_db, postgres_url=postgres_url)
    result = SoakResult(config=asdict(config))
    try:
        chaos.setup()
        jobs = chaos.enqueue(2)
        chaos.start_broker()
        chaos.start_web()
        chaos.start_worker(0)
        chaos._wait_running()
        session = chaos.info["alice_session"]
        started = time.monotonic()
        for cycle in range(config.cycles):
            async def pages() -> list:
                return await asyncio.gather(*(_page(chaos.web_port, session, jobs[i % 2]) for i in range(config.sockets)),
                                            return_exceptions=True)

            for outcome in asyncio.run(pages()):
                if isinstance(outcome, BaseException):
                    result.socket_errors.append(f"{type(outcome).__name__}: {outcome}"[:200])
                else:
                    result.events_seen += outcome
            result.client_errors += sum(not _client(chaos.broker_port, n) for n in range(config.clients))
            result.oversize_refused += sum(_oversize(chaos.broker_port) for _ in range(config.oversize))
            chaos.check_crashes()
            time.sleep(0.5)
            for name in ("broker", "web", "worker0"):
                proc = chaos.procs.get(name)
                result.rss.setdefault(name, []).append(rss_bytes(proc.pid) if proc else 0)
            result.cycles += 1
        result.seconds = round(time.monotonic() - started, 1)
        for name, samples in result.rss.items():
            after = samples[config.warmup:]
            if len(after) >= 2:
                result.growth[name] = int(max(after[1:]) - after[0])
        result.crashes = [{k: v for k, v in c.items() if k != "log"} for c in chaos.crashes]
    except BaseException:
        print(chaos.logs())
        raise
    finally:
        chaos.close()
    return result
