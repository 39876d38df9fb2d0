"""STOMP broker benchmark: one load generator, the same for every broker, one table.

Columns: the embedded broker (notifications.broker, started here in a subprocess on a free
port), RabbitMQ's STOMP plugin (already running, 127.0.0.1:61613), ActiveMQ (Debian's
`activemq`, started here on a free port with a generated config), CoilMQ (PyPI, started here)
and "loadgen ceiling": the same generator against a sink that does no STOMP routing at all (it
rewrites SEND into MESSAGE bytes and replays them), which shows the generator is not the limit.

Scenarios (every cell also counts lost messages):
  a  topic, 1 producer -> 1 subscriber, 100-byte messages back to back: msgs/s
  b  topic fan-out to 100 subscribers: deliveries/s
  c  queue, 1 producer -> 1 consumer, client-individual acks: msgs/s
  d  1,000 connections with one subscription each: connect time, broker RSS per connection,
     then fan-out deliveries/s
  e  a steady 200 msg/s, topic 1 -> 1: latency p50 and p99

Run from the repository root (a quick run takes about two minutes):
  .venv/bin/python bench/broker_bench.py
  .venv/bin/python bench/broker_bench.py --brokers embedded,activemq --scenarios a,b --scale 2

The generator is asyncio Protocols with pre-encoded frames (built once with the project codec)
written in bulk; on the hot receive path it counts NUL bytes, because bodies carry none and the
codec (about 150k frames/s in pure Python) would cap the generator near the rates it measures.
Handshakes, receipts, the latency scenario and the sink's control frames use the codec.
The sink runs on uvloop when installed; the brokers run in the order sink, embedded, ActiveMQ,
RabbitMQ, CoilMQ, so the figures compared with each other meet much the same machine load.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from notifications.codec import HEARTBEAT, Frame, FrameParser, RemoteProtocolError, encode_frame  # noqa: E402

BODY_SIZE = 100
FANOUT_SUBSCRIBERS = 100
LATENCY_RATE = 200  # msgs/s in scenario e
MANY_CONNECTIONS = 1000
CONNECT_CONCURRENCY = 50  # connections opened at once in d: below every broker's listen backlog
STALL_SECONDS = 3.0  # no new delivery for this long: what has not arrived is lost
BROKER_START_TIMEOUT = 60.0
ALL_BROKERS = ("embedded", "rabbitmq", "activemq", "coilmq", "sink")
# Measured in this order whatever the column order: the ceiling right before the embedded broker
# and ActiveMQ right after it, so the figures compared with each other meet the same load.
RUN_ORDER = ("sink", "embedded", "activemq", "rabbitmq", "coilmq")
CONNECT_PHASE_SECONDS = 20.0  # bound on opening the connections of d (CoilMQ needs minutes)
ALL_SCENARIOS = ("a", "b", "c", "d", "e")
COLUMN_TITLES = {
    "embedded": "embedded",
    "rabbitmq": "RabbitMQ",
    "activemq": "ActiveMQ",
    "coilmq": "CoilMQ",
    "sink": "loadgen ceiling (no broker)",
}


# --- the brokers -----------------------------------------------------------------------------


@dataclass
class BrokerUnderTest:
    """A running broker the generator can reach, and how to read its memory."""

    name: str
    host: str
    port: int
    login: str = ""
    passcode: str = ""
    rss: Callable[[], int | None] = lambda: None
    stop: Callable[[], None] = lambda: None
    note: str = ""
    # Connections the broker can take at most, when it says so (RabbitMQ's socket limit).
    max_connections: int | None = None
    # The CONNECT host header (STOMP 1.2 requires one; CoilMQ accepts only the machine's FQDN).
    vhost: str = "/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def wait_port(proc: subprocess.Popen | None, host: str, port: int, timeout: float, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:] if log and log.exists() else ""
            raise RuntimeError(f"exited with code {proc.returncode} before listening on {port}\n{tail}")
        time.sleep(0.1)
    raise RuntimeError(f"not listening on {host}:{port} after {timeout:.0f} s")


def process_rss(pid: int) -> Callable[[], int | None]:
    def rss() -> int | None:
        try:
            proc = psutil.Process(pid)
            return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
        except psutil.Error:
            return None

    return rss


def stopper(proc: subprocess.Popen, workdir: tempfile.TemporaryDirectory | None = None) -> Callable[[], None]:
    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if workdir is not None:
            workdir.cleanup()

    return stop


def spawn(name: str, argv: list[str], port: int, workdir: tempfile.TemporaryDirectory, **kw) -> subprocess.Popen:
    log = Path(workdir.name) / f"{name}.log"
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=kw.pop("cwd", ROOT), **kw)
    try:
        wait_port(proc, "127.0.0.1", port, BROKER_START_TIMEOUT, log)
    except BaseException:
        stopper(proc)()
        raise
    return proc


EMBEDDED_LOOP = "runner"  # set by --embedded-loop
EMBEDDED_PORT = 0  # set by --embedded-port: use a broker already running there

# The broker through its public API on a chosen event loop, for --embedded-loop asyncio|uvloop.
EMBEDDED_MAIN = """
import asyncio, logging, signal, sys
from notifications.broker import Broker, BrokerConfig

async def main(port):
    broker = Broker(BrokerConfig(host="127.0.0.1", port=port))
    await broker.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await broker.close()

logging.basicConfig(level=logging.WARNING)
if sys.argv[2] == "uvloop":
    import uvloop
    factory = uvloop.new_event_loop
else:
    factory = asyncio.new_event_loop
asyncio.run(main(int(sys.argv[1])), loop_factory=factory)
"""


def start_embedded() -> BrokerUnderTest:
    """The broker as `python -m notifications.broker` runs it (its runner picks uvloop when
    installed), or through its API on the loop --embedded-loop names."""
    workdir = tempfile.TemporaryDirectory(prefix="bench-embedded-")
    port = free_port()
    if EMBEDDED_PORT:
        # Already running (for example under a profiler): find its process by the listening port.
        pid = next((c.pid for c in psutil.net_connections("tcp")
                    if c.laddr and c.laddr.port == EMBEDDED_PORT and c.status == psutil.CONN_LISTEN), None)
        rss = process_rss(pid) if pid else (lambda: None)
        return BrokerUnderTest("embedded", "127.0.0.1", EMBEDDED_PORT, rss=rss, note=f"already running on {EMBEDDED_PORT}")
    if EMBEDDED_LOOP == "runner":
        argv = [sys.executable, "-m", "notifications.broker", "--port", str(port), "--log-level", "WARNING"]
        note = "python -m notifications.broker (uvloop if installed)"
    else:
        argv = [sys.executable, "-c", EMBEDDED_MAIN, str(port), EMBEDDED_LOOP]
        note = f"Broker API on the {EMBEDDED_LOOP} event loop"
    proc = spawn("embedded", argv, port, workdir)
    return BrokerUnderTest("embedded", "127.0.0.1", port, rss=process_rss(proc.pid), stop=stopper(proc, workdir),
                           note=note)


def start_sink() -> BrokerUnderTest:
    workdir = tempfile.TemporaryDirectory(prefix="bench-sink-")
    port = free_port()
    proc = spawn("sink", [sys.executable, str(Path(__file__).resolve()), "--serve-sink", str(port)], port, workdir)
    return BrokerUnderTest("sink", "127.0.0.1", port, rss=process_rss(proc.pid), stop=stopper(proc, workdir))


def beam_rss() -> int | None:
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "beam.smp":
            with contextlib.suppress(psutil.Error):
                return proc.memory_info().rss
    return None


def rabbitmq_socket_limit() -> tuple[int, int] | None:
    """(sockets in use, socket limit) from `rabbitmqctl status`, or None when it cannot tell."""
    try:
        out = subprocess.run(["rabbitmqctl", "status"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"Sockets: (\d+), limit: (\d+)", out)
    return (int(match[1]), int(match[2])) if match else None


def use_rabbitmq(url_host: str = "127.0.0.1", port: int = 61613) -> BrokerUnderTest:
    if not port_open(url_host, port):
        raise RuntimeError(f"RabbitMQ's STOMP plugin is not listening on {url_host}:{port}")
    note = "RSS of beam.smp (the whole RabbitMQ node)"
    sockets = rabbitmq_socket_limit()
    max_connections = None
    if sockets is not None:
        used, limit = sockets
        # Past its socket limit RabbitMQ stops accepting and stops delivering to those it has;
        # keep headroom for the producer and for other users of the node.
        max_connections = limit - used - 30
        note += f"; its socket limit is {limit} (ulimit -n of the node), so d uses at most {max_connections}"
    return BrokerUnderTest("rabbitmq", url_host, port, "guest", "guest", rss=beam_rss, note=note,
                           max_connections=max_connections)


def start_activemq() -> BrokerUnderTest:
    from tests import activemq  # the same launcher as the test suite's ActiveMQ fixture

    why = activemq.missing()
    if why is not None:
        raise RuntimeError(why)
    workdir = tempfile.TemporaryDirectory(prefix="bench-activemq-")
    port = free_port()
    # Debian's JVM options (-Xms512M -Xmx512M), non-persistent (as the others here: nothing is
    # written to disk), STOMP over NIO on our own port.
    proc = spawn("activemq", activemq.command(Path(workdir.name), port, name="bench"), port, workdir, cwd=workdir.name)
    return BrokerUnderTest("activemq", "127.0.0.1", port, rss=process_rss(proc.pid), stop=stopper(proc, workdir),
                           note="JVM -Xms512M -Xmx512M as Debian's activemq-options; RSS of the java process")


def start_coilmq() -> BrokerUnderTest:
    exe = Path(sys.executable).parent / "coilmq"
    if not exe.exists():
        raise RuntimeError("coilmq is not installed in this virtualenv (pip install coilmq)")
    workdir = tempfile.TemporaryDirectory(prefix="bench-coilmq-")
    port = free_port()
    proc = spawn("coilmq", [str(exe), "-b", "127.0.0.1", "-p", str(port)], port, workdir)
    return BrokerUnderTest("coilmq", "127.0.0.1", port, rss=process_rss(proc.pid), stop=stopper(proc, workdir),
                           vhost=socket.getfqdn(), note="CONNECT host is the machine's FQDN: CoilMQ refuses any other")


STARTERS: dict[str, Callable[[], BrokerUnderTest]] = {
    "embedded": start_embedded,
    "rabbitmq": use_rabbitmq,
    "activemq": start_activemq,
    "coilmq": start_coilmq,
    "sink": start_sink,
}


# --- the load generator ----------------------------------------------------------------------


class BenchError(Exception):
    """A broker answered with an ERROR frame, closed, or stayed silent past a bound."""


class Conn(asyncio.Protocol):
    """One STOMP connection of the generator.

    Two receive modes: "frames" parses with the project codec (handshake, receipts, latency);
    "count" only counts NUL bytes (one per frame) and, when ``ack`` is set, answers each MESSAGE
    with an ACK of its ack id (scanned with a regular expression, not parsed).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = FrameParser()
        self.version = "1.2"
        self.mode = "frames"
        self.frames: list[Frame] = []
        self.frame_waiter: asyncio.Future | None = None
        self.count = 0
        self.target = 0
        self.last_at = 0.0
        self.done: asyncio.Future | None = None
        self.on_frame: Callable[[Frame], None] | None = None
        self.ack: bool = False
        self.ack_re: re.Pattern | None = None
        self.ack_prefix = b""
        self.ack_suffix = b""
        self.tail = b""
        self.error: str | None = None
        self.closed = False
        self.paused = False
        self.resume: asyncio.Future | None = None
        # --verify: every counted frame is also parsed, and only MESSAGEs with the body sent count.
        self.verify: bytes | None = None
        self.verified = 0

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.error is None:
            self.error = f"connection closed by the broker ({exc or 'EOF'})"
        for fut in (self.frame_waiter, self.done, self.resume):
            if fut is not None and not fut.done():
                fut.set_exception(BenchError(self.error))
                fut.exception()  # marks it retrieved: the waiter, if any, still gets it

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.resume is not None and not self.resume.done():
            self.resume.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.mode == "count":
            if self.verify is not None:
                self._verify(data)
            n = data.count(0)
            if self.ack:
                self._ack(data)
            if b"ERROR\n" in data:
                self.error = "ERROR frame: " + data[data.find(b"ERROR\n"):][:300].decode(errors="replace")
            if n:
                self.count += n
                self.last_at = time.perf_counter()
                if self.count >= self.target and self.done is not None and not self.done.done():
                    self.done.set_result(self.last_at)
            return
        try:
            self.parser.receive_data(data)
        except RemoteProtocolError as exc:
            self.error = f"unparseable bytes from the broker: {exc.error_message}"
            self.transport.close()
            return
        for event in self.parser.events_received():
            if event is HEARTBEAT:
                continue
            if event.command == "ERROR":
                self.error = f"ERROR frame: {event.get('message')} {event.body[:200]!r}"
            if self.on_frame is not None and event.command == "MESSAGE":
                self.on_frame(event)
                continue
            self.frames.append(event)
        if self.frames and self.frame_waiter is not None and not self.frame_waiter.done():
            self.frame_waiter.set_result(None)

    def _verify(self, data: bytes) -> None:
        self.parser.receive_data(data)
        for event in self.parser.events_received():
            if event is not HEARTBEAT and event.command == "MESSAGE" and event.body == self.verify:
                self.verified += 1

    def _ack(self, data: bytes) -> None:
        buf = self.tail + data
        last = buf.rfind(b"\0")
        if last < 0:
            self.tail = buf
            return
        self.tail = buf[last + 1 :]
        ids = self.ack_re.findall(buf, 0, last + 1)
        if ids:
            prefix, suffix = self.ack_prefix, self.ack_suffix
            self.transport.write(b"".join([prefix + i + suffix for i in ids]))

    # helpers
    def write(self, data: bytes) -> None:
        self.transport.write(data)

    async def drained(self) -> None:
        if self.paused:
            self.resume = asyncio.get_running_loop().create_future()
            await self.resume

    async def next_frame(self, timeout: float) -> Frame:
        deadline = time.monotonic() + timeout
        while not self.frames:
            if self.closed:
                raise BenchError(self.error or "closed")
            self.frame_waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self.frame_waiter, max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise BenchError(f"no frame from the broker within {timeout} s") from None
        return self.frames.pop(0)

    async def request(self, frame: Frame, receipt: str, timeout: float = 30.0) -> None:
        """Send a frame with a receipt header and wait for its RECEIPT."""
        self.write(encode_frame(Frame(frame.command, (*frame.headers, ("receipt", receipt)), frame.body), self.version))
        while True:
            reply = await self.next_frame(timeout)
            if reply.command == "RECEIPT" and reply.get("receipt-id") == receipt:
                return
            if reply.command == "ERROR":
                raise BenchError(f"ERROR frame: {reply.get('message')} {reply.body[:300]!r}")

    def count_mode(self, target: int) -> asyncio.Future:
        """Switch to counting NULs; the future resolves when ``target`` frames have arrived."""
        if self.frames:
            raise BenchError(f"unexpected frames before counting: {[f.command for f in self.frames]}")
        self.mode = "count"
        self.count = 0
        self.target = target
        self.done = asyncio.get_running_loop().create_future()
        return self.done

    def enable_acks(self, subscription: str) -> None:
        """In count mode, ACK every MESSAGE individually, the way its negotiated version says."""
        self.ack = True
        if self.version == "1.2":
            self.ack_re = re.compile(rb"\nack:([^\n]*)\n")
            self.ack_prefix, self.ack_suffix = b"ACK\nid:", b"\n\n\0"
        else:
            self.ack_re = re.compile(rb"\nmessage-id:([^\n]*)\n")
            sub = b"subscription:" + subscription.encode() + b"\n" if self.version == "1.1" else b""
            self.ack_prefix, self.ack_suffix = b"ACK\n" + sub + b"message-id:", b"\n\n\0"


async def connect(broker: BrokerUnderTest, timeout: float = 30.0) -> Conn:
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(loop.create_connection(Conn, broker.host, broker.port), timeout)
    headers = [("accept-version", "1.0,1.1,1.2"), ("host", broker.vhost), ("heart-beat", "0,0")]
    if broker.login:
        headers += [("login", broker.login), ("passcode", broker.passcode)]
    conn.write(encode_frame(Frame("CONNECT", tuple(headers))))
    reply = await conn.next_frame(timeout)
    if reply.command != "CONNECTED":
        raise BenchError(f"CONNECT answered with {reply.command}: {reply.get('message')}")
    conn.version = reply.get("version", "1.0")
    conn.parser.version = conn.version
    return conn


async def subscribe(conn: Conn, destination: str, sub_id: str, ack: str = "auto", extra: tuple = ()) -> None:
    headers = (("destination", destination), ("id", sub_id), ("ack", ack), *extra)
    await conn.request(Frame("SUBSCRIBE", headers), receipt=f"sub-{sub_id}")


def send_frame_bytes(destination: str, body: bytes) -> bytes:
    return encode_frame(Frame("SEND", (("destination", destination), ("content-length", str(len(body)))), body))


async def send_bulk(conn: Conn, frame: bytes, n: int, batch: int = 256) -> None:
    """Write ``n`` copies of a pre-encoded frame back to back, in bulk, honouring flow control."""
    chunk = frame * batch
    sent = 0
    while sent < n and not conn.closed:
        k = min(batch, n - sent)
        conn.write(chunk if k == batch else frame * k)
        sent += k
        await conn.drained()
        await asyncio.sleep(0)  # let the subscribers in this process read


async def close_all(conns: list[Conn]) -> None:
    for conn in conns:
        if conn.transport is not None and not conn.closed:
            with contextlib.suppress(Exception):
                conn.transport.write(b"DISCONNECT\n\n\0")
            conn.transport.close()
    await asyncio.sleep(0.05)


@dataclass
class Cell:
    """One measured figure with its lost-message count (None where loss does not apply)."""

    value: float | None
    unit: str
    lost: int | None = None
    note: str = ""

    def text(self) -> str:
        if self.value is None:
            return self.note or "-"
        if self.unit in {"msgs/s", "deliveries/s"}:
            figure = f"{self.value:,.0f}"
        elif self.unit == "KiB":
            figure = f"{self.value:,.1f} KiB"
        elif self.unit == "ms":
            figure = f"{self.value:.2f} ms"
        else:
            figure = f"{self.value:.2f} s"
        if self.lost is not None:
            figure += f" ({self.lost} lost)"
        if self.note:
            figure += f" [{self.note}]"
        return figure


async def wait_counts(conns: list[Conn], expected_each: int, deadline: float) -> tuple[int, float, str]:
    """Wait until every conn counted ``expected_each`` frames, or nothing moved for STALL_SECONDS,
    or the deadline. Returns (frames received in total, time of the last one, note)."""
    note = ""
    while True:
        if all(c.count >= expected_each for c in conns):
            break
        errors = [c.error for c in conns if c.error]
        if errors:
            note = errors[0][:160]
            break
        now = time.perf_counter()
        last = max((c.last_at for c in conns), default=0.0)
        if last and now - last > STALL_SECONDS:
            break
        if now > deadline:
            note = "deadline reached"
            break
        await asyncio.sleep(0.01)
    received = sum(min(c.count, expected_each) for c in conns)
    extra = sum(max(0, c.count - expected_each) for c in conns)
    if extra:
        note = (note + f" {extra} duplicates").strip()
    return received, max((c.last_at for c in conns), default=0.0), note


@dataclass
class Settings:
    messages_a: int = 20_000
    messages_b: int = 1_000
    messages_c: int = 10_000
    messages_d: int = 50
    latency_seconds: float = 3.0
    cell_timeout: float = 30.0
    verify: bool = False
    run_id: str = field(default_factory=lambda: f"{os.getpid()}")


async def throughput(broker: BrokerUnderTest, destination: str, subscribers: int, messages: int,
                     settings: Settings, ack: str = "auto", sub_conns: list[Conn] | None = None,
                     producer: Conn | None = None) -> tuple[Cell, list[Conn]]:
    """Producer -> ``subscribers`` connections; rate = frames received / (last arrival - first send)."""
    conns: list[Conn] = []
    try:
        if sub_conns is None:
            sub_conns = []
            for i in range(subscribers):
                conn = await connect(broker)
                extra = (("prefetch-count", "1000"), ("activemq.prefetchSize", "1000")) if ack != "auto" else ()
                await subscribe(conn, destination, f"s{i}", ack=ack, extra=extra)
                sub_conns.append(conn)
        conns = list(sub_conns)
        if producer is None:
            producer = await connect(broker)
        conns.append(producer)
        body = b"x" * BODY_SIZE
        for conn in sub_conns:
            conn.count_mode(messages)
            if settings.verify:
                conn.verify = body
            if ack != "auto":
                conn.enable_acks(conn_sub_id(sub_conns, conn))
        started = time.perf_counter()
        deadline = started + settings.cell_timeout
        await send_bulk(producer, send_frame_bytes(destination, body), messages)
        received, last_at, note = await wait_counts(sub_conns, messages, deadline)
        if producer.error:
            note = f"{note} producer: {producer.error}"[:200].strip()
        if settings.verify:
            verified = sum(c.verified for c in sub_conns)
            note = f"{note} verified {verified} MESSAGE frames".strip()
        expected = messages * len(sub_conns)
        rate = received / (last_at - started) if received and last_at > started else 0.0
        unit = "deliveries/s" if len(sub_conns) > 1 else "msgs/s"
        if note.startswith("deadline reached"):
            # Still arriving when the bound ran out: not lost, just not measured to the end.
            note = f"{expected - received} still undelivered at the {settings.cell_timeout:g} s bound" + note[16:]
            return Cell(rate, unit, lost=None, note=note), conns
        return Cell(rate, unit, lost=expected - received, note=note), conns
    except (BenchError, OSError, TimeoutError) as exc:
        return Cell(None, "", note=f"failed: {str(exc)[:120]}"), conns


def conn_sub_id(conns: list[Conn], conn: Conn) -> str:
    return f"s{conns.index(conn)}"


async def drain_queue(broker: BrokerUnderTest, destination: str) -> None:
    """Consume whatever a killed earlier run left in a queue (RabbitMQ keeps queues)."""
    conn = await connect(broker)
    try:
        await subscribe(conn, destination, "drain")
        await asyncio.sleep(0.3)
    finally:
        await close_all([conn])


async def scenario_a(broker, settings) -> dict[str, Cell]:
    cell, conns = await throughput(broker, f"/topic/bench.a.{settings.run_id}", 1, settings.messages_a, settings)
    await close_all(conns)
    return {"a: topic 1->1, msgs/s": cell}


async def scenario_b(broker, settings) -> dict[str, Cell]:
    cell, conns = await throughput(broker, f"/topic/bench.b.{settings.run_id}", FANOUT_SUBSCRIBERS,
                                   settings.messages_b, settings)
    await close_all(conns)
    return {f"b: topic fan-out to {FANOUT_SUBSCRIBERS}, deliveries/s": cell}


async def scenario_c(broker, settings) -> dict[str, Cell]:
    destination = "/queue/bench.c"
    await drain_queue(broker, destination)
    cell, conns = await throughput(broker, destination, 1, settings.messages_c, settings, ack="client-individual")
    await close_all(conns)
    return {"c: queue 1->1, client-individual acks, msgs/s": cell}


async def scenario_d(broker, settings) -> dict[str, Cell]:
    destination = f"/topic/bench.d.{settings.run_id}"
    wanted = MANY_CONNECTIONS
    if broker.max_connections is not None and broker.max_connections < wanted:
        wanted = broker.max_connections
    keys = (
        f"d: {MANY_CONNECTIONS} connections, connect+subscribe time",
        "d: broker memory per idle connection",
        f"d: fan-out to {MANY_CONNECTIONS}, deliveries/s",
    )
    rows: dict[str, Cell | None] = dict.fromkeys(keys)
    conns: list[Conn] = []
    subs: list[Conn] = []
    shortfall = ""
    try:
        # The producer connects first: a broker out of connections after the subscribers
        # (RabbitMQ here has 832 sockets) still gets its fan-out measured over what it holds.
        producer = await connect(broker)
        conns.append(producer)
        await asyncio.sleep(0.5)
        before = broker.rss()
        started = time.perf_counter()

        async def one(i: int) -> Conn:
            conn = await connect(broker, timeout=10.0)
            conns.append(conn)
            await subscribe(conn, destination, f"s{i}")
            return conn

        if wanted < MANY_CONNECTIONS:
            shortfall = f"{wanted} connections: the broker's own limit"
        connect_deadline = started + CONNECT_PHASE_SECONDS
        for first in range(0, wanted, CONNECT_CONCURRENCY):
            if time.perf_counter() > connect_deadline:
                shortfall = f"only {len(subs)} of {MANY_CONNECTIONS} connections in the {CONNECT_PHASE_SECONDS:g} s bound"
                break
            batch = range(first, min(wanted, first + CONNECT_CONCURRENCY))
            done = await asyncio.gather(*(asyncio.wait_for(one(i), 15.0) for i in batch), return_exceptions=True)
            subs += [c for c in done if isinstance(c, Conn)]
            failures = [c for c in done if not isinstance(c, Conn)]
            if failures:
                reason = failures[0]
                shortfall = f"only {len(subs)} of {MANY_CONNECTIONS} connections: {type(reason).__name__} {reason}"[:160]
                break
        elapsed = time.perf_counter() - started
        rows[keys[0]] = Cell(elapsed, "s", note=shortfall)
        await asyncio.sleep(1.0)
        after = broker.rss()
        if before is not None and after is not None and subs:
            rows[keys[1]] = Cell((after - before) / len(subs) / 1024, "KiB", note=f"over {len(subs)}" if shortfall else "")
        else:
            rows[keys[1]] = Cell(None, "", note="RSS not readable")
        subs = [c for c in subs if not c.closed]
        if shortfall:
            await close_all([c for c in conns if c not in subs and c is not producer])  # the half-open ones
        cell, producer_conns = await throughput(broker, destination, 0, settings.messages_d, settings,
                                                sub_conns=subs, producer=producer)
        if shortfall:
            cell.note = (cell.note + f" over {len(subs)} subscribers").strip()
        conns += [c for c in producer_conns if c not in conns]
        rows[keys[2]] = cell
    except (BenchError, OSError, TimeoutError) as exc:
        for key in keys:
            if rows[key] is None:
                rows[key] = Cell(None, "", note=f"failed after {len(subs)} connections: {type(exc).__name__} {exc}"[:160])
    finally:
        await close_all(conns)
    return rows


async def scenario_e(broker, settings) -> dict[str, Cell]:
    destination = f"/topic/bench.e.{settings.run_id}"
    count = int(settings.latency_seconds * LATENCY_RATE)
    latencies: list[int] = []
    conns: list[Conn] = []
    keys = ("e: steady 200 msg/s, latency p50", "e: steady 200 msg/s, latency p99")
    try:
        sub = await connect(broker)
        conns.append(sub)
        await subscribe(sub, destination, "lat")
        producer = await connect(broker)
        conns.append(producer)

        def on_frame(frame: Frame) -> None:
            latencies.append(time.perf_counter_ns() - int(frame.body[:20]))

        sub.on_frame = on_frame
        # The frame's head, checked by the codec once; each body (a fresh timestamp) goes after it.
        template = send_frame_bytes(destination, b"x" * BODY_SIZE)
        prefix = template[: len(template) - BODY_SIZE - 1]
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i / LATENCY_RATE - loop.time()))
            body = str(time.perf_counter_ns()).zfill(20).encode().ljust(BODY_SIZE, b"x")
            producer.write(prefix + body + b"\0")
        deadline = time.perf_counter() + STALL_SECONDS
        while len(latencies) < count and time.perf_counter() < deadline and not sub.error:
            await asyncio.sleep(0.01)
        lost = count - len(latencies)
        if not latencies:
            raise BenchError(sub.error or "no message arrived")
        ordered = sorted(latencies)
        p50 = ordered[len(ordered) // 2] / 1e6
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e6
        note = (sub.error or "")[:120]
        return {keys[0]: Cell(p50, "ms", lost=lost, note=note), keys[1]: Cell(p99, "ms", lost=lost, note=note)}
    except (BenchError, OSError, TimeoutError) as exc:
        return {k: Cell(None, "", note=f"failed: {str(exc)[:120]}") for k in keys}
    finally:
        await close_all(conns)


SCENARIOS = {"a": scenario_a, "b": scenario_b, "c": scenario_c, "d": scenario_d, "e": scenario_e}


async def warm_up(broker: BrokerUnderTest, settings: Settings) -> None:
    """A short unmeasured run, so a JIT (ActiveMQ) or a lazy allocation does not cost the first cell;
    small, so the heap it leaves behind does not mask the memory measured in d."""
    warm = Settings(messages_a=2000, cell_timeout=settings.cell_timeout)
    cell, conns = await throughput(broker, f"/topic/bench.warmup.{settings.run_id}", 1, warm.messages_a, warm)
    await close_all(conns)


async def bench_broker(broker: BrokerUnderTest, scenarios: list[str], settings: Settings) -> dict[str, Cell]:
    results: dict[str, Cell] = {}
    # The generator's own pauses would show in every figure, latency first: no cyclic GC while
    # measuring (reference counting still frees everything these loops allocate).
    gc.collect()
    gc.disable()
    try:
        await warm_up(broker, settings)
        # d first: memory per connection is read on a broker that has not yet grown (and kept)
        # heap for the bulk traffic of a, b and c, which would hide what connections cost.
        for name in sorted(scenarios, key=lambda n: n != "d"):
            t = time.perf_counter()
            try:
                results.update(await SCENARIOS[name](broker, settings))
            except (BenchError, OSError, TimeoutError) as exc:
                results[f"{name}: failed"] = Cell(None, "", note=f"failed: {type(exc).__name__} {str(exc)[:120]}")
            print(f"    {broker.name} {name}: {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    finally:
        gc.enable()
    return results


# --- the sink: no broker, the generator's ceiling --------------------------------------------

SINK_MESSAGE_PREFIX = b"MESSAGE\nsubscription:s0\nmessage-id:1\nack:1\n"


class SinkConn(asyncio.Protocol):
    """The ceiling sink: SEND bytes are rewritten into MESSAGE bytes and replayed, no routing.

    Control frames (CONNECT, SUBSCRIBE, DISCONNECT, anything with a receipt) are parsed with the
    project codec and answered; a chunk of nothing but SENDs takes the fast path: one bytes
    replace and one write per subscriber (all of them for a topic, one for a queue).
    """

    subscribers: dict[str, list[SinkConn]] = {}
    rr = 0

    def __init__(self) -> None:
        self.transport = None
        self.buf = b""
        self.subs: dict[str, str] = {}

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        for destination in self.subs.values():
            with contextlib.suppress(ValueError):
                SinkConn.subscribers.get(destination, []).remove(self)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        last = buf.rfind(b"\0")
        if last < 0:
            self.buf = buf
            return
        self.buf = buf[last + 1 :]
        chunk = buf[: last + 1]
        sends = chunk.count(b"SEND\n")
        if sends and sends == chunk.count(b"\0") and b"\nreceipt:" not in chunk:
            self.replay(chunk, self.destination_of(chunk))
            return
        parser = FrameParser()
        parser.receive_data(chunk)
        for frame in parser.events_received():
            if frame is not HEARTBEAT:
                self.control(frame)

    @staticmethod
    def destination_of(chunk: bytes) -> str:
        start = chunk.find(b"\ndestination:") + 13
        return chunk[start : chunk.find(b"\n", start)].decode()

    def replay(self, sends: bytes, destination: str) -> None:
        targets = SinkConn.subscribers.get(destination) or []
        if not targets:
            return
        out = sends.replace(b"SEND\n", SINK_MESSAGE_PREFIX)
        if destination.startswith("/queue/"):
            SinkConn.rr += 1
            targets = [targets[SinkConn.rr % len(targets)]]
        for target in targets:
            target.transport.write(out)

    def control(self, frame: Frame) -> None:
        write = self.transport.write
        if frame.command in {"CONNECT", "STOMP"}:
            write(encode_frame(Frame("CONNECTED", (("version", "1.2"), ("heart-beat", "0,0"), ("server", "sink/0")))))
            return
        if frame.command == "SUBSCRIBE":
            destination = frame.get("destination")
            self.subs[frame.get("id")] = destination
            SinkConn.subscribers.setdefault(destination, []).append(self)
        elif frame.command == "UNSUBSCRIBE":
            destination = self.subs.pop(frame.get("id"), None)
            with contextlib.suppress(ValueError):
                SinkConn.subscribers.get(destination, []).remove(self)
        elif frame.command == "SEND":
            body = frame.body
            self.replay(send_frame_bytes(frame.get("destination"), body), frame.get("destination"))
        receipt = frame.get("receipt")
        if receipt is not None:
            write(encode_frame(Frame("RECEIPT", (("receipt-id", receipt),))))
        if frame.command == "DISCONNECT":
            self.transport.close()


def serve_sink(port: int) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(SinkConn, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # The fastest loop at hand: the sink stands for "infinitely fast broker", so it must not be
    # slower than the brokers it is compared with (the embedded one runs on uvloop when installed).
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        asyncio.run(main(), loop_factory=factory)


# --- the table -------------------------------------------------------------------------------


def render_table(columns: list[str], results: dict[str, dict[str, Cell]], notes: dict[str, str]) -> str:
    rows: list[str] = []
    for col in columns:
        for key in results.get(col, {}):
            if key not in rows:
                rows.append(key)
    rows.sort(key=lambda key: key[0])  # scenario letter; stable, so d keeps its row order
    header = ["scenario"] + [COLUMN_TITLES[c] for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [results.get(col, {}).get(row) for col in columns]
        lines.append("| " + " | ".join([row] + [c.text() if c else "-" for c in cells]) + " |")
    for col in columns:
        if notes.get(col):
            lines.append(f"\n{COLUMN_TITLES[col]}: {notes[col]}")
    return "\n".join(lines)


def target_report(results: dict[str, dict[str, Cell]]) -> str:
    """The issue's targets for the embedded broker, each met or missed, with the figures."""
    ours = results.get("embedded")
    if not ours:
        return "targets: the embedded broker was not measured"
    theirs = results.get("activemq", {})
    lines = ["targets for the embedded broker:"]
    for key, cell in sorted(ours.items(), key=lambda item: item[0][0]):
        if cell.unit in {"msgs/s", "deliveries/s"}:
            ref = theirs.get(key)
            if ref is None or ref.value is None:
                lines.append(f"  {key}: {cell.text()} (no ActiveMQ figure to compare)")
            elif cell.value is not None:
                verdict = "met" if cell.value >= ref.value else "MISSED"
                lines.append(f"  {key}: {cell.value:,.0f} vs ActiveMQ {ref.value:,.0f}: {verdict}")
        if cell.unit == "KiB" and cell.value is not None:
            lines.append(f"  {key}: {cell.value:.1f} KiB (< 10 KiB): {'met' if cell.value < 10 else 'MISSED'}")
        if key.endswith("p99") and cell.value is not None:
            lines.append(f"  {key}: {cell.value:.2f} ms (<= 1.3 ms): {'met' if cell.value <= 1.3 else 'MISSED'}")
    lost = sum(c.lost or 0 for c in ours.values())
    failed = [k for k, c in ours.items() if c.value is None]
    unfinished = [k for k, c in ours.items() if "undelivered" in c.note]
    verdict = "MISSED" if lost or failed else ("not shown: cells cut by the bound" if unfinished else "met")
    lines.append(f"  lost messages: {lost} ({verdict})"
                 + (f"; failed cells: {', '.join(failed)}" if failed else "")
                 + (f"; cut by the bound: {', '.join(unfinished)}" if unfinished else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    global MANY_CONNECTIONS, EMBEDDED_LOOP, EMBEDDED_PORT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brokers", default=",".join(ALL_BROKERS),
                        help=f"comma-separated columns, from {','.join(ALL_BROKERS)}")
    parser.add_argument("--scenarios", default=",".join(ALL_SCENARIOS), help="comma-separated, from a,b,c,d,e")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every message count (default 1)")
    parser.add_argument("--latency-seconds", type=float, default=3.0, help="length of scenario e (default 3 s)")
    parser.add_argument("--connections", type=int, default=MANY_CONNECTIONS,
                        help=f"connections in scenario d (default {MANY_CONNECTIONS})")
    parser.add_argument("--embedded-loop", choices=["runner", "asyncio", "uvloop"], default="runner",
                        help="how the embedded broker runs: its own runner (default), or its API on a given loop")
    parser.add_argument("--verify", action="store_true",
                        help="also parse every delivery with the codec and count MESSAGE frames with the body sent"
                             " (slower: a check that counting NUL bytes counts messages)")
    parser.add_argument("--embedded-port", type=int, default=0,
                        help="use an embedded broker already listening on this port (e.g. under py-spy)")
    parser.add_argument("--cell-timeout", type=float, default=30.0, help="bound on one cell, seconds")
    parser.add_argument("--serve-sink", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_sink:
        serve_sink(args.serve_sink)
        return 0
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [b for b in brokers if b not in ALL_BROKERS] + [s for s in scenarios if s not in ALL_SCENARIOS]
    if unknown:
        parser.error(f"unknown broker or scenario: {', '.join(unknown)}")
    s = args.scale
    MANY_CONNECTIONS = args.connections
    EMBEDDED_LOOP = args.embedded_loop
    EMBEDDED_PORT = args.embedded_port
    settings = Settings(
        messages_a=max(100, int(20_000 * s)), messages_b=max(10, int(1_000 * s)),
        messages_c=max(100, int(10_000 * s)), messages_d=max(5, int(50 * s)),
        latency_seconds=args.latency_seconds, cell_timeout=args.cell_timeout, verify=args.verify,
    )
    print(f"messages: a={settings.messages_a} b={settings.messages_b}x{FANOUT_SUBSCRIBERS} "
          f"c={settings.messages_c} d={settings.messages_d}x{MANY_CONNECTIONS} e={settings.latency_seconds:g}s"
          f"x{LATENCY_RATE}/s; body {BODY_SIZE} bytes; {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
          file=sys.stderr)
    results: dict[str, dict[str, Cell]] = {}
    notes: dict[str, str] = {}
    for name in sorted(brokers, key=RUN_ORDER.index):
        print(f"==> {name}", file=sys.stderr, flush=True)
        try:
            broker = STARTERS[name]()
        except Exception as exc:  # any reason a column cannot run is reported, not fatal
            notes[name] = f"skipped: {exc}"
            print(f"    skipped: {exc}", file=sys.stderr)
            continue
        try:
            results[name] = asyncio.run(bench_broker(broker, scenarios, settings))
            if broker.note:
                notes[name] = broker.note
        finally:
            broker.stop()
    columns = [b for b in brokers if b in results or b in notes]
    print(render_table(columns, results, notes))
    print()
    print(target_report(results))
    print(f"\nload average after the run: {os.getloadavg()[0]:.2f} (2 cores shared with other work)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
