"""Live job events to WebSocket clients: this project's path against Channels' group messaging.

Run by hand (never in tests), from the repository root:

    .venv/bin/python bench/ws_bench.py                      # both systems, defaults of issue 13
    .venv/bin/python bench/ws_bench.py --systems ours --seconds 10
    .venv/bin/python bench/ws_bench.py --systems ours --idle 0 --watch 500   # many watchers of one job

For each system, one daphne process gets IDLE idle WebSocket clients (a page open with its
notifications subscribed) and WATCH clients watching one job, spread over client processes of
at most --watchers-per-process each (so the clients are not what limits); the job reports
RATE progress events per second for SECONDS, pauses, then reports BURST events as fast as it can
and ends.

- ours: the real path. A task in `manage.py jobworker` calls report_progress(); the worker
  writes the row and publishes over STOMP (embedded broker, its own free port); daphne's hub
  relays to the STOMP-over-WebSocket consumer; clients speak STOMP 1.2.
- reference: channels_redis on the local Redis, configured as bench/ws_reference.py says
  (socket_timeout=None); a producer process group_sends the same event JSON to the job's group;
  ws_reference.py relays group messages as text frames.

Latency is from the producer's call (the time travels in the event's message) to receipt by the
client, over every delivery of the steady phase. CPU per delivery is daphne's CPU between the
first and the last delivery any watcher received, divided by the deliveries (the same rule for
both columns), and separately over the steady phase alone. Each steady report that a watcher
did not see is accounted for: merged by the worker (two reports within PROGRESS_INTERVAL are
one write, by design), not at the broker (the publisher's coalescing, by design, or lost
upstream), merged in daphne (a socket COALESCE_AFTER messages behind gets the latest state, by
design), or lost. The table also gives the load average during each column, every process's
share of a core (the generator's own: producer and client processes) and which side was the
bottleneck. Results go to stdout as Markdown (for bench/RESULTS-ws.md) and optionally JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import math
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PYTHON = sys.executable
SUBPROTOCOLS = ["v12.stomp", "v11.stomp", "v10.stomp"]
# Connections opened at once by one client process (daphne's accept backlog is finite).
CONNECT_CONCURRENCY = 50
START_TIMEOUT = 60.0
# A watchers' process ends this long after its last delivery once the producer has had time
# to finish (the reference never delivers its final state when it drops messages).
QUIET_END = 30.0
# How often CPU, load and the servers' counters are sampled during a column.
SAMPLE_EVERY = 0.25
# A process using this share of one core or more is saturated: what it measures is a bound.
SATURATED = 0.85

# The fields a watcher needs, found in the event JSON without parsing all of it (the clients
# share the machine with daphne: their cost per message must stay small). The first match is the
# top-level field in both systems' events (contract 5's order: seq and status before progress,
# progress.done, message before display).
_SEQ = re.compile(rb'"seq": ?(\d+)')
_STATUS = re.compile(rb'"status": ?"([A-Z_]+)"')
_DONE = re.compile(rb'"done": ?(\d+)')
_MESSAGE = re.compile(rb'"message": ?"([sb]) ([0-9.]+)"')
_FINAL = re.compile(rb'"final": ?true')


# ---------------------------------------------------------------- client side (a subprocess)


class Watcher:
    """What one watching connection saw."""

    __slots__ = ("pairs", "steady_seqs", "burst", "last_seq", "status", "done", "final", "deliveries", "stale",
                 "last", "burst_first", "steady_first", "steady_last", "connected", "messages")

    def __init__(self) -> None:
        self.pairs: list = []  # flat [done, latency, done, latency, ...] of steady events
        self.steady_seqs: list[int] = []
        self.burst = 0
        self.last_seq = 0
        self.status: str | None = None
        self.done: int | None = None
        self.final = asyncio.Event()
        self.deliveries = 0
        self.stale = 0  # an older state after a newer one (a client drops it)
        self.last = self.burst_first = self.steady_first = self.steady_last = None
        self.connected = False
        self.messages = 0  # WebSocket messages that carried events (several frames may share one)

    def on_body(self, body: bytes, now: float) -> None:
        found = _SEQ.search(body)
        if found is None:
            return  # not a job event
        seq = int(found.group(1))
        if seq <= self.last_seq:
            self.stale += 1
            return
        self.last_seq = seq
        found = _DONE.search(body)
        self.done = int(found.group(1)) if found else None
        found = _STATUS.search(body)
        self.status = found.group(1).decode() if found else None
        found = _MESSAGE.search(body)
        if found is not None:
            if found.group(1) == b"s":
                self.pairs += (self.done, now - float(found.group(2)))
                self.steady_seqs.append(seq)
                if self.steady_first is None:
                    self.steady_first = now
                self.steady_last = now
            else:
                self.burst += 1
                if self.burst_first is None:
                    self.burst_first = now
        if self.steady_first is not None:
            # From the first steady event on (not the snapshot or the start): the window in
            # which daphne's CPU is divided by the deliveries.
            self.deliveries += 1
            self.last = now
        if _FINAL.search(body):
            self.final.set()

    def summary(self) -> dict:
        return {
            "done": _ranges(sorted(set(self.pairs[0::2]))), "seqs": _ranges(sorted(self.steady_seqs)),
            "burst": self.burst, "final": self.final.is_set(), "status": self.status, "last_done": self.done,
            "deliveries": self.deliveries, "stale": self.stale, "connected": self.connected,
            "messages": self.messages,
        }


def _ranges(values: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for v in values:
        if out and v == out[-1][1] + 1:
            out[-1][1] = v
        elif not out or v != out[-1][1]:
            out.append([v, v])
    return out


def _unranges(ranges: list[list[int]]) -> set[int]:
    return {v for a, b in ranges for v in range(a, b + 1)}


class _State:
    """Counts of one client process."""

    def __init__(self) -> None:
        self.connected = 0
        self.errors: list[str] = []
        self.server_closes = 0  # connections the server ended before the client did
        self.hold = asyncio.Event()  # set when the client process ends its connections itself

    def closed_by_server(self) -> None:
        if not self.hold.is_set():
            self.server_closes += 1


class _RawWatch(asyncio.Protocol):
    """A minimal RFC 6455 client for the watching connections.

    The clients share the machine's two cores with daphne, so their own cost per message
    delays what they measure: the `websockets` library spent about 110 µs of Python per message
    here, this one parses the frame header, splits STOMP frames on NUL and picks the fields it
    needs from the body. Browsers parse in native code. Server frames are unmasked and never
    fragmented by daphne (autobahn's autoFragmentSize is 0).
    """

    def __init__(self, watcher: Watcher, stomp: bool, state: _State) -> None:
        self.watcher, self.stomp, self.state = watcher, stomp, state
        self.buffer = bytearray()
        self.upgraded = asyncio.get_running_loop().create_future()
        self.ready = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        for future in (self.upgraded, self.ready):
            if not future.done():
                future.set_exception(ConnectionError(f"connection lost: {exc}"))
                future.exception()  # whoever awaits it still gets it; nobody else is told it was unread
        self.state.closed_by_server()

    def send_text(self, text: str) -> None:
        self._send(0x81, text.encode())

    def _send(self, first: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        n = len(payload)
        header = bytes([first, 0x80 | n]) if n < 126 else bytes([first, 0x80 | 126]) + n.to_bytes(2, "big")
        self.transport.write(header + mask + masked)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buffer
        buf += data
        if not self.upgraded.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:buf.find(b"\r\n")])
            del buf[:end + 4]
            if b" 101 " not in status:
                self.upgraded.set_exception(RuntimeError(f"handshake refused: {status.decode(errors='replace')}"))
                return
            self.upgraded.set_result(True)
        while len(buf) >= 2:
            opcode, length, pos = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, pos = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, pos = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < pos + length:
                return
            payload = bytes(buf[pos:pos + length])
            del buf[:pos + length]
            if opcode in (1, 2):
                self._message(payload, now)
            elif opcode == 9:  # daphne pings every 20 s and closes a socket that does not answer
                self._send(0x8A, payload)
            elif opcode == 8:
                self.transport.close()

    def _message(self, payload: bytes, now: float) -> None:
        if self.watcher.steady_first is not None:
            self.watcher.messages += 1
        if not self.stomp:
            self.watcher.on_body(payload, now)
            return
        for frame in payload.split(b"\x00"):
            frame = frame.lstrip(b"\r\n")
            if not frame:
                continue  # heart-beats, or what follows the last NUL
            command, _, rest = frame.partition(b"\n")
            if command == b"MESSAGE":
                self.watcher.on_body(rest.partition(b"\n\n")[2], now)
            elif command == b"RECEIPT" and not self.ready.done():
                self.ready.set_result(True)
            elif command == b"ERROR":
                self.state.errors.append(f"ERROR frame: {rest[:200]!r}")


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # One context for every connection, with no CA store loaded (create_default_context() per
    # connection parses the system's CAs each time: tens of ms of the clients' CPU per socket).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _client_tls(url: str) -> ssl.SSLContext | None:
    """TLS for a wss:// URL (nginx in front: bench/scaleout_bench.py), None for ws://. The
    certificate is the run's own on loopback: not verified, it is not what is measured."""
    return _tls_context() if urlsplit(url).scheme == "wss" else None


async def _raw_watch(url: str, headers: dict, destination: str | None, watcher: Watcher, state: _State,
                     limiter: asyncio.Semaphore) -> None:
    """One watching connection through _RawWatch: STOMP when ``destination`` is given, else plain JSON."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()
    async with limiter:
        transport, proto = await loop.create_connection(lambda: _RawWatch(watcher, destination is not None, state),
                                                        parts.hostname, parts.port, ssl=_client_tls(url))
        lines = [f"GET {path} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
                 "Sec-WebSocket-Version: 13"]
        if destination is not None:
            lines.append(f"Sec-WebSocket-Protocol: {', '.join(SUBPROTOCOLS)}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await asyncio.wait_for(proto.upgraded, START_TIMEOUT)
        if destination is not None:
            proto.send_text("CONNECT\naccept-version:1.2\nhost:127.0.0.1\nheart-beat:0,0\n\n\x00")
            proto.send_text(f"SUBSCRIBE\nid:0\ndestination:{destination}\nreceipt:sub\n\n\x00")
            await asyncio.wait_for(proto.ready, START_TIMEOUT)
    state.connected += 1
    watcher.connected = True
    try:
        await state.hold.wait()
    finally:
        transport.close()


async def _idle_connection(mode: str, url: str, headers: dict, state: _State, limiter: asyncio.Semaphore) -> None:
    """An idle page: the `websockets` library (what the memory figure was always measured with)."""
    from websockets.asyncio.client import connect

    async with limiter:
        tls = {"ssl": _client_tls(url)} if url.startswith("wss:") else {}
        ws = await connect(url, subprotocols=SUBPROTOCOLS if mode == "stomp" else None, additional_headers=headers,
                           compression=None, max_size=None, ping_interval=None, open_timeout=START_TIMEOUT, **tls)
        ready = asyncio.get_running_loop().create_future()
        if mode == "stomp":
            await ws.send("CONNECT\naccept-version:1.2\nhost:127.0.0.1\nheart-beat:0,0\n\n\x00")
            await ws.send("SUBSCRIBE\nid:0\ndestination:/user/queue/notifications\nreceipt:sub\n\n\x00")
        else:
            ready.set_result(True)

        async def read() -> None:
            async for data in ws:
                text = data if isinstance(data, str) else data.decode(errors="replace")
                if text.startswith("RECEIPT") and not ready.done():
                    ready.set_result(True)
                elif text.startswith("ERROR"):
                    state.errors.append(f"ERROR frame: {text[:200]!r}")

        reader = asyncio.create_task(read())
        reader.add_done_callback(lambda _: state.closed_by_server())
        done, _ = await asyncio.wait({reader, ready}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            reader.cancel()
            raise TimeoutError("not subscribed in time")
    state.connected += 1
    try:
        await state.hold.wait()
    finally:
        reader.cancel()
        await ws.close()


class _BrokerWatcher:
    """A direct STOMP subscriber to the job's broker topic (a hub of its own): what reached the
    broker's side, to tell the web process's share of latency and loss from the producer's."""

    def __init__(self) -> None:
        self.watcher = Watcher()

    def hub_event(self, event) -> None:
        self.watcher.on_body(event.body, time.time())

    def hub_reconnected(self) -> None:
        pass


async def run_clients(args) -> dict:
    state = _State()
    broker_hub = broker_watcher = None
    # The direct broker subscriber runs in the idle clients' process, which has nothing else to
    # do while the job runs: in a watchers' busy process its own loop would add to its figure.
    if args.broker_watch:
        from jobs import live as destinations
        from notifications.hub import Hub

        broker_hub, broker_watcher = Hub(os.environ["STOMP_BROKER_URL"]), _BrokerWatcher()
        broker_hub.start()
        await asyncio.wait_for(broker_hub.subscribe(destinations.job(args.job), broker_watcher), START_TIMEOUT)
    watchers = [Watcher() for _ in range(args.watch)]
    limiter = asyncio.Semaphore(CONNECT_CONCURRENCY)
    headers = {"Cookie": f"sessionid={args.session}", "Origin": args.origin} if args.session else {}

    async def one(i: int, watcher: Watcher | None) -> None:
        try:
            if watcher is None:
                url = args.url if args.mode == "stomp" else args.url + f"?user={i}"
                await _idle_connection(args.mode, url, headers, state, limiter)
            elif args.mode == "stomp":
                await _raw_watch(args.url, headers, f"/topic/jobs.{args.job}", watcher, state, limiter)
            else:
                await _raw_watch(args.url + f"?job={args.job}", {}, None, watcher, state, limiter)
        except Exception as exc:  # counted and reported: a benchmark records failures, it does not hide them
            state.errors.append(f"{type(exc).__name__}: {exc}")

    tasks = [asyncio.create_task(one(i, None)) for i in range(args.idle)]
    tasks += [asyncio.create_task(one(0, w)) for w in watchers]
    deadline = time.monotonic() + START_TIMEOUT * 2
    while state.connected + len(state.errors) < len(tasks) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    print(json.dumps({"ready": state.connected, "errors": len(state.errors)}), flush=True)
    cpu0, wall0 = time.process_time(), time.monotonic()
    if args.watch:
        # Until every watcher has the final state, or nothing came for QUIET_END seconds after the
        # producer had time to finish, or the timeout.
        end = time.monotonic() + args.timeout
        earliest_quiet_end = time.monotonic() + args.expected
        while time.monotonic() < end and not all(w.final.is_set() for w in watchers):
            await asyncio.sleep(0.2)
            last = max((w.last for w in watchers if w.last), default=None)
            if time.monotonic() > earliest_quiet_end and last is not None and time.time() - last > QUIET_END:
                break
        await asyncio.sleep(0.5)  # let anything after the final event arrive (it would be a bug)
    else:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    cpu_s, wall_s = time.process_time() - cpu0, time.monotonic() - wall0
    state.hold.set()
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    if broker_hub is not None:
        await broker_hub.close()
    steady = [w for w in watchers if w.steady_seqs]
    return {
        "connected": state.connected, "errors": state.errors[:5], "error_count": len(state.errors),
        "server_closes": state.server_closes,
        "pairs": [round(x, 6) for w in watchers for x in w.pairs],
        "watchers": [w.summary() for w in watchers],
        "last": max((w.last for w in watchers if w.last), default=None),
        "steady_first": min((w.steady_first for w in steady), default=None),
        "steady_last": max((w.steady_last for w in steady), default=None),
        "burst_first": min((w.burst_first for w in watchers if w.burst_first), default=None),
        "deliveries": sum(w.deliveries for w in watchers),
        "messages": sum(w.messages for w in watchers),
        "cpu_s": round(cpu_s, 3), "cpu_share": round(cpu_s / max(1e-6, wall_s), 3),
        "broker": _broker_summary(broker_watcher.watcher) if broker_watcher else None,
    }


def _broker_summary(w: Watcher) -> dict:
    return w.summary() | {"pairs": [round(x, 6) for x in w.pairs], "steady_last": w.steady_last,
                          "burst_first": w.burst_first}


def clients_main(args) -> None:
    import uvloop

    sys.path[:0] = [str(ROOT)]
    if args.mode == "stomp":
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    # uvloop: the same loop the product's own processes use; its per-read cost is lower, which
    # keeps the clients from being what the benchmark measures.
    result = uvloop.run(run_clients(args))
    print(json.dumps({"result": result}), flush=True)


# ---------------------------------------------------------------- reference producer (a subprocess)


def ref_event(job: str, seq: int, done: int, total: int, message: str, final: bool) -> dict:
    """The same fields as this project's job event (contract 5), so both carry the same bytes."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    return {
        "type": "job", "id": job, "seq": seq, "task": "ws_bench_tasks.ticker", "name": "Ticker",
        "status": "SUCCESSFUL" if final else "RUNNING", "final": final, "queue": "default", "owner_id": 1,
        "progress": {"done": done, "total": total, "percent": round(100.0 * done / total, 1)},
        "message": message, "log": [], "error": None, "result_url": None, "cancel_requested": False,
        "attempts": 1, "max_attempts": 1, "enqueued_at": now, "started_at": now, "finished_at": now if final else None,
    }


def ref_produce_main(args) -> None:
    sys.path[:0] = [str(BENCH)]
    import ws_reference  # noqa: F401  (configures Django and the channel layer)
    from channels.layers import get_channel_layer

    async def produce() -> None:
        layer = get_channel_layer()
        group = f"job.{args.job}"
        steady = int(args.rate * args.seconds)
        total = steady + args.burst
        seq = 0
        start = time.perf_counter()
        for i in range(steady):
            delay = start + i / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            seq += 1
            text = json.dumps(ref_event(args.job, seq, i + 1, total, f"s {time.time():.6f}", False))
            await layer.group_send(group, {"type": "job.event", "text": text})
        await asyncio.sleep(args.pause)
        for i in range(args.burst):
            seq += 1
            text = json.dumps(ref_event(args.job, seq, steady + i + 1, total, f"b {time.time():.6f}", False))
            await layer.group_send(group, {"type": "job.event", "text": text})
        seq += 1
        text = json.dumps(ref_event(args.job, seq, total, total, "done", True))
        await layer.group_send(group, {"type": "job.event", "text": text})

    asyncio.run(produce())


# ---------------------------------------------------------------- orchestration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"port {port} did not open")


class Procs:
    def __init__(self, logdir: Path, nice: int = 0) -> None:
        self.logdir = logdir
        self.nice = nice
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, cmd: list[str], env: dict, **kw) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "wb")
        kw.setdefault("stdout", log)
        if self.nice:
            kw["preexec_fn"] = functools.partial(os.nice, self.nice)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=log, **kw)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


def read_json_line(proc: subprocess.Popen, key: str, timeout: float) -> dict:
    """The first JSON line of the process's stdout that has `key` (bounded by `timeout`)."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
            break
        line = proc.stdout.readline()
        if not line:
            break
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if key in data:
            return data
    raise TimeoutError(f"no {key!r} line from {proc.args[:4]} within {timeout}s")


def client_cmd(mode: str, url: str, *, idle: int = 0, watch: int = 0, job: str = "", session: str = "",
               origin: str = "", timeout: float = 120.0, expected: float = 0.0, broker_watch: bool = False) -> list[str]:
    return [PYTHON, str(BENCH / "ws_bench.py"), "clients", "--mode", mode, "--url", url, "--idle", str(idle),
            "--watch", str(watch), "--job", job, "--session", session, "--origin", origin, "--timeout", str(timeout),
            "--expected", str(expected), *(["--broker-watch"] if broker_watch else [])]


def rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


class Sampler(threading.Thread):
    """Every SAMPLE_EVERY s: the time, the 1-minute load average, the CPU seconds of the named
    processes and what the named URLs answer (a JSON object, or Prometheus text as a dict).

    A name may stand for several processes (watch() with a list of pids: their CPU summed, the
    name is in ``groups``) and for several URLs (a list in ``urls``: their numbers summed, all
    of them answering or no sample): the web processes behind nginx in bench/scaleout_bench.py."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.pids: dict[str, object] = {}
        self.urls: dict[str, str | list[str]] = {}
        self.groups: set[str] = set()
        self.samples: list[tuple[float, float, dict, dict]] = []
        self.stopped = threading.Event()

    def watch(self, name: str, pid: int | list[int]) -> None:
        import psutil

        if isinstance(pid, list):
            self.groups.add(name)
            self.pids[name] = [psutil.Process(p) for p in pid]
        else:
            self.pids[name] = psutil.Process(pid)

    def run(self) -> None:
        while not self.stopped.is_set():
            now, load = time.time(), os.getloadavg()[0]
            cpu = {}
            for name, proc in list(self.pids.items()):
                try:
                    times = [p.cpu_times() for p in proc] if isinstance(proc, list) else [proc.cpu_times()]
                    cpu[name] = sum(t.user + t.system for t in times)
                except Exception:
                    pass
            counters = {}
            for name, url in list(self.urls.items()):
                try:
                    answers = []
                    for one in url if isinstance(url, list) else [url]:
                        with urllib.request.urlopen(one, timeout=2) as response:
                            text = response.read().decode()
                        answers.append(json.loads(text) if text.startswith("{") else _prometheus(text))
                    counters[name] = answers[0] if len(answers) == 1 else _summed(answers)
                except Exception:
                    pass
            self.samples.append((now, load, cpu, counters))
            self.stopped.wait(SAMPLE_EVERY)

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)

    def cpu_at(self, name: str, t: float) -> float | None:
        points = [(s[0], s[2][name]) for s in self.samples if name in s[2]]
        if not points:
            return None
        if t <= points[0][0]:
            return points[0][1]
        for (t0, c0), (t1, c1) in zip(points, points[1:]):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * (t - t0) / max(1e-9, t1 - t0)
        return points[-1][1]

    def cpu_between(self, name: str, t0: float, t1: float) -> float | None:
        a, b = self.cpu_at(name, t0), self.cpu_at(name, t1)
        return None if a is None or b is None else b - a

    def share(self, name: str, t0: float, t1: float) -> float | None:
        cpu = self.cpu_between(name, t0, t1)
        return None if cpu is None or t1 <= t0 else round(cpu / (t1 - t0), 2)

    def load(self, t0: float, t1: float) -> tuple[float, float] | None:
        loads = [s[1] for s in self.samples if t0 <= s[0] <= t1] or [s[1] for s in self.samples[-1:]]
        return (round(statistics.fmean(loads), 1), round(max(loads), 1)) if loads else None

    def counter_between(self, name: str, key: str, t0: float, t1: float) -> float | None:
        """``key`` of ``name``'s last sample taken between t0 and t1 (None if there was none)."""
        inside = [s[3][name].get(key) for s in self.samples if t0 <= s[0] <= t1 and name in s[3]]
        return inside[-1] if inside else None


def _summed(answers: list[dict]) -> dict:
    """The numbers of several answers added up, key by key (keys all of them have)."""
    keys = set.intersection(*(set(a) for a in answers))
    return {k: sum(a[k] for a in answers) for k in keys
            if all(isinstance(a[k], (int, float)) and not isinstance(a[k], bool) for a in answers)}


def _prometheus(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def _pct(values: list[float], p: float) -> float | None:
    return round(1000 * values[min(len(values) - 1, int(p * len(values)))], 1) if values else None


def _pcts(values: list[float]) -> dict | None:
    values = sorted(values)
    if not values:
        return None
    return {"p50": _pct(values, 0.5), "p99": _pct(values, 0.99), "max": round(1000 * values[-1], 1),
            "mean": round(1000 * statistics.fmean(values), 1)}


def count_server_errors(log: Path) -> int:
    """Errors with a traceback in a daphne process's log (an application crash, a consumer that
    failed): tracebacks, less those chained to another one ("During handling...", "direct cause")."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return -1
    chained = text.count("During handling of the above exception") + text.count("The above exception was the direct cause")
    return text.count("Traceback (most recent call last)") - chained


def measure(mode: str, url: str, web: subprocess.Popen, procs: Procs, env: dict, args, job: str, session: str,
            origin: str, start_producer, sampler: Sampler, webs: list[subprocess.Popen] | None = None) -> dict:
    """Connect idle clients (memory), then watchers; run the producer; collect what the watchers saw.

    ``webs``: several web processes behind one ``url`` (nginx; bench/scaleout_bench.py): "daphne"
    is then all of them (CPU and memory summed, the CPU per delivery too), "daphne 1"... each one,
    and the bottleneck is judged per process."""
    webs = webs or [web]
    warm = procs.start("warmup", client_cmd(mode, url, idle=5, session=session, origin=origin), env,
                       stdout=subprocess.PIPE, text=True)
    read_json_line(warm, "ready", START_TIMEOUT * 2)
    warm.send_signal(signal.SIGTERM)
    warm.wait(timeout=30)
    time.sleep(1.0)
    rss0 = sum(rss(w.pid) for w in webs)
    broker_watch = mode == "stomp"
    idle = procs.start("idle", client_cmd(mode, url, idle=args.idle, job=job, session=session, origin=origin,
                                          broker_watch=broker_watch), env, stdout=subprocess.PIPE, text=True)
    idle_ready = read_json_line(idle, "ready", START_TIMEOUT * 4)
    time.sleep(2.0)
    rss1 = sum(rss(w.pid) for w in webs)
    n_procs = max(1, math.ceil(args.watch / args.watchers_per_process))
    shares = [args.watch // n_procs + (1 if i < args.watch % n_procs else 0) for i in range(n_procs)]
    expected = args.seconds + args.pause + 30
    timeout = args.seconds * 4 + 120
    watch_procs, watch_ready = [], []
    for i, n in enumerate(shares):  # one process connecting at a time: daphne's handshake timeout is 5 s
        watch_procs.append(procs.start(f"watch{i}", client_cmd(mode, url, watch=n, job=job, session=session, origin=origin,
                                                               timeout=timeout, expected=expected),
                                       env, stdout=subprocess.PIPE, text=True))
        watch_ready.append(read_json_line(watch_procs[-1], "ready", START_TIMEOUT * 2))
    if len(webs) == 1:
        sampler.watch("daphne", web.pid)
    else:
        sampler.watch("daphne", [w.pid for w in webs])
        for i, w in enumerate(webs):
            sampler.watch(f"daphne {i + 1}", w.pid)
    sampler.watch("idle clients", idle.pid)
    for i, p in enumerate(watch_procs):
        sampler.watch(f"watchers {i}", p.pid)
    sampler.start()
    started = time.time()
    producer = start_producer()
    sampler.watch("producer", producer.pid)
    results = [read_json_line(p, "result", timeout + 60)["result"] for p in watch_procs]
    idle.send_signal(signal.SIGTERM)
    idle_result = read_json_line(idle, "result", 60)["result"]
    ended = time.time()
    sampler.stop()

    # What the watchers that connected saw (those that did not are counted as errors above).
    watchers = [w for r in results for w in r["watchers"] if w["connected"]]
    pairs = [x for r in results for x in r["pairs"]]
    latencies = pairs[1::2]
    steady_sent = int(args.rate * args.seconds)
    last = max((r["last"] for r in results if r["last"]), default=None)
    steady_first = min((r["steady_first"] for r in results if r["steady_first"]), default=None)
    steady_last = max((r["steady_last"] for r in results if r["steady_last"]), default=None)
    burst_first = min((r["burst_first"] for r in results if r["burst_first"]), default=None)
    deliveries = sum(r["deliveries"] for r in results)
    ws_messages = sum(r["messages"] for r in results)
    steady_deliveries = len(latencies)
    first = steady_first
    cpu_all = sampler.cpu_between("daphne", first, last) if first and last else None
    cpu_steady = sampler.cpu_between("daphne", steady_first, steady_last) if steady_first and steady_last else None
    window = (steady_first, steady_last) if steady_first and steady_last else (started, ended)
    names = [n for n in sampler.pids if n != "daphne"]
    shares_steady = {n: sampler.share(n, *window) for n in ["daphne", *names]}
    final_seen = sum(1 for w in watchers if w["final"])
    broker = idle_result.get("broker")
    out = {
        "idle_connected": idle_ready["ready"], "idle_errors": idle_ready["errors"] + idle_result["error_count"],
        "watch_connected": sum(r["ready"] for r in watch_ready), "watch_errors": sum(r["errors"] for r in watch_ready),
        "watch_processes": n_procs,
        "server_closes": idle_result["server_closes"] + sum(r["server_closes"] for r in results),
        "client_errors": [e for r in results for e in r["errors"]][:5] + idle_result["errors"][:2],
        "rss_before_mib": round(rss0 / 2**20, 1), "rss_after_idle_mib": round(rss1 / 2**20, 1),
        "kib_per_idle_connection": round((rss1 - rss0) / 1024 / max(1, idle_ready["ready"]), 1),
        "steady_deliveries": steady_deliveries, "deliveries": deliveries,
        "deliveries_per_ws_message": round(deliveries / max(1, ws_messages), 2),
        "latency_ms": _pcts(latencies),
        "steady_sent_per_watcher": steady_sent,
        "burst_sent": args.burst,
        "burst_received_mean": round(statistics.fmean(w["burst"] for w in watchers), 1) if watchers else 0,
        "final_state_seen_by": f"{final_seen}/{len(watchers)}",
        "last_status": sorted({str(w["status"]) for w in watchers}),
        "last_done": sorted({w["last_done"] if w["last_done"] is not None else -1 for w in watchers})[:5],
        "stale_dropped": sum(w["stale"] for w in watchers),
        "daphne_cpu_all_s": round(cpu_all, 2) if cpu_all is not None else None,
        "delivery_window_s": round(last - first, 1) if first and last else None,
        "cpu_us_per_delivery": round(1e6 * cpu_all / max(1, deliveries), 1) if cpu_all is not None else None,
        "cpu_us_per_steady_delivery": round(1e6 * cpu_steady / max(1, steady_deliveries), 1) if cpu_steady is not None else None,
        "steady_window_s": round(steady_last - steady_first, 1) if steady_first and steady_last else None,
        "shares_steady": shares_steady,
        "load_steady": sampler.load(*window),
        "load_column": sampler.load(started, ended),
        "watch_client_cpu_share_max": max(r["cpu_share"] for r in results),
    }
    out["accounting"] = account(args, watchers, broker, sampler, steady_last, burst_first)
    out["bottleneck"] = bottleneck({k: v for k, v in shares_steady.items() if k not in sampler.groups}, out["load_steady"])
    out["broker_side"] = _broker_side(broker, pairs)
    return out


def account(args, watchers: list[dict], broker: dict | None, sampler: Sampler, steady_last: float | None,
            burst_first: float | None) -> dict:
    """Where each steady report that a watcher did not see went (see the module docstring)."""
    steady_sent = int(args.rate * args.seconds)
    not_seen = sum(steady_sent - len(_unranges(w["done"])) for w in watchers)
    out: dict = {"reports": steady_sent, "watchers": len(watchers), "not_seen_by_watchers": not_seen}
    if broker is None:
        out["lost"] = not_seen  # the reference merges nothing: what a watcher missed was dropped
        return out
    at_broker = _unranges(broker["seqs"])
    if not at_broker:
        out["lost"] = not_seen
        return out
    written = max(at_broker) - min(at_broker) + 1  # every progress write takes the next seq
    out["written"] = written
    out["merged_by_worker"] = steady_sent - written
    out["not_at_broker"] = written - len(at_broker)
    after = sum(len(at_broker - _unranges(w["seqs"])) for w in watchers)
    out["at_broker_not_at_watchers"] = after
    # Sampled in the pause between the phases: the steady phase's merges only.
    lo, hi = (steady_last or 0), (burst_first or time.time())
    if broker.get("steady_last") and broker.get("burst_first"):
        plo, phi = broker["steady_last"], broker["burst_first"]
    else:
        plo, phi = lo, hi
    merged = sampler.counter_between("daphne", "coalesced", lo, hi)
    out["merged_in_daphne"] = merged
    coalesced = sampler.counter_between("worker", "notifications_publisher_coalesced_total", plo, phi)
    dropped = sampler.counter_between("worker", "notifications_publisher_dropped_total", plo, phi)
    out["publisher_coalesced_both_topics"] = coalesced
    out["publisher_dropped"] = dropped
    lost_web = None if merged is None else max(0, after - int(merged))
    # Each write goes to two topics (the job's and jobs.all) and is coalesced on both alike.
    lost_up = None if coalesced is None else max(0, out["not_at_broker"] - int(coalesced) // 2) + int(dropped or 0)
    out["lost_in_web_process"] = lost_web
    out["lost_before_broker"] = lost_up
    out["lost"] = None if lost_web is None or lost_up is None else lost_web + lost_up * len(watchers)
    return out


def bottleneck(shares: dict, load: tuple[float, float] | None) -> str:
    known = {k: v for k, v in shares.items() if v is not None}
    if not known:
        return "unknown"
    name, share = max(known.items(), key=lambda kv: kv[1])
    total = round(sum(known.values()), 2)
    if share >= SATURATED:
        return f"{name} ({share} of a core: saturated)"
    if load and load[0] > (os.cpu_count() or 1):
        return (f"none of these processes saturated (busiest: {name}, {share}); the machine: load {load[0]} "
                f"on {os.cpu_count()} cores, these processes {total} cores")
    return f"none saturated (busiest: {name}, {share}; these processes {total} of {os.cpu_count()} cores)"


def _broker_side(broker: dict | None, pairs: list) -> dict | None:
    """What the direct broker subscriber saw, and each delivery's latency after it (the web
    process, the WebSocket and the watchers' client), per event: watcher minus broker."""
    if not broker or not broker.get("pairs"):
        return None
    at_broker = dict(zip(broker["pairs"][0::2], broker["pairs"][1::2]))
    after = [lat - at_broker[done] for done, lat in zip(pairs[0::2], pairs[1::2]) if done in at_broker]
    return {**_pcts(list(at_broker.values())), "steady_received": len(_unranges(broker["seqs"])),
            "after_broker": _pcts(after)}


def setup_code(args) -> str:
    """`manage.py shell` code: the user "bench", a session of it and the ticker job enqueued for
    it; prints the session key and the job's id."""
    return (
        "from django.conf import settings\n"
        "from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model\n"
        "from django.contrib.sessions.backends.db import SessionStore\n"
        "from jobs.api import enqueue_for\n"
        "from ws_bench_tasks import ticker\n"
        "u = get_user_model().objects.create_user('bench', 'bench@example.com', 'bench-pass')\n"
        "s = SessionStore(); s[SESSION_KEY] = str(u.pk); s[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]\n"
        "s[HASH_SESSION_KEY] = u.get_session_auth_hash(); s.create()\n"
        f"r = enqueue_for(u, ticker, {args.rate}, {args.seconds}, {args.burst}, {args.pause})\n"
        "print(s.session_key, r.id)\n")


def run_ours(args, workdir: Path) -> dict:
    var = workdir / "ours"
    var.mkdir()
    procs = Procs(var, args.nice)
    broker_port, web_port, metrics_port = free_port(), free_port(), free_port()
    env = dict(os.environ)
    env.update({
        "DJANGO_SETTINGS_MODULE": "ws_bench_settings", "PYTHONPATH": f"{ROOT}{os.pathsep}{BENCH}",
        "DATABASE_URL": f"sqlite:///{var / 'db.sqlite3'}", "DJANGO_VAR_DIR": str(var),
        "STOMP_BROKER_URL": f"stomp://127.0.0.1:{broker_port}", "DJANGO_LOG_LEVEL": "WARNING", "DJANGO_DEBUG": "0",
    })
    manage = [PYTHON, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    setup = subprocess.run([*manage, "shell", "--no-imports", "-c", setup_code(args)], cwd=ROOT, env=env, check=True,
                           capture_output=True, text=True)
    session, job = setup.stdout.split()[-2:]
    sampler = Sampler()
    try:
        broker = procs.start("broker", [*manage, "stompbroker", "--host", "127.0.0.1", "--port", str(broker_port)], env)
        wait_port(broker_port, broker)
        web = procs.start("daphne", [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(web_port), "-v", "0",
                                     "ws_bench_asgi:application"], env)
        wait_port(web_port, web)
        sampler.watch("broker", broker.pid)
        sampler.urls["daphne"] = f"http://127.0.0.1:{web_port}/bench/stats"
        sampler.urls["worker"] = f"http://127.0.0.1:{metrics_port}/metrics"
        origin = f"http://127.0.0.1:{web_port}"
        result = measure(
            "stomp", f"ws://127.0.0.1:{web_port}/ws/stomp/", web, procs, env, args, job, session, origin,
            lambda: procs.start("worker", [*manage, "jobworker", "--concurrency", "1", "--queue", "default",
                                           "--metrics-port", str(metrics_port)], env),
            sampler,
        )
    finally:
        sampler.stopped.set()
        procs.stop_all()
    result["server_errors"] = count_server_errors(var / "daphne.log")
    return result


def run_reference(args, workdir: Path) -> dict:
    var = workdir / "reference"
    var.mkdir()
    procs = Procs(var, args.nice)
    web_port = free_port()
    job = str(uuid.uuid4())
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update({"PYTHONPATH": f"{ROOT}{os.pathsep}{BENCH}", "BENCH_REDIS_PREFIX": f"wsbench{os.getpid()}",
                "BENCH_REDIS_SOCKET_TIMEOUT": args.ref_socket_timeout})
    sampler = Sampler()
    try:
        web = procs.start("daphne", [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(web_port), "-v", "0",
                                     "ws_reference:application"], env)
        wait_port(web_port, web)
        redis = _redis_pid()
        if redis:
            sampler.watch("redis-server (shared)", redis)
        producer = [PYTHON, str(BENCH / "ws_bench.py"), "ref-produce", "--job", job, "--rate", str(args.rate),
                    "--seconds", str(args.seconds), "--burst", str(args.burst), "--pause", str(args.pause)]
        result = measure("ref", f"ws://127.0.0.1:{web_port}/", web, procs, env, args, job, "", "",
                         lambda: procs.start("producer", producer, env), sampler)
    finally:
        sampler.stopped.set()
        procs.stop_all()
    result["server_errors"] = count_server_errors(var / "daphne.log")
    return result


def _redis_pid() -> int | None:
    import psutil

    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "redis-server":
            return proc.pid
    return None


def markdown(results: dict, args) -> str:
    def acc(r, key, fmt="{}"):
        value = r["accounting"].get(key)
        return "n/a" if value is None else fmt.format(value)

    def lat(r, key):
        return f"{r['latency_ms'][key]} ms" if r["latency_ms"] else "n/a"

    rows = [
        ("idle connections (connected / errors)", lambda r: f"{r['idle_connected']} / {r['idle_errors']}"),
        ("watchers (connected / errors; client processes)",
         lambda r: f"{r['watch_connected']} / {r['watch_errors']}; {r['watch_processes']}"),
        ("server errors (tracebacks in daphne's log) / sockets closed by the server",
         lambda r: f"{r['server_errors']} / {r['server_closes']}"),
        ("memory per idle connection", lambda r: f"{r['kib_per_idle_connection']} KiB"),
        ("steady latency p50", lambda r: lat(r, "p50")),
        ("steady latency p99", lambda r: lat(r, "p99")),
        ("steady latency max", lambda r: lat(r, "max")),
        ("steady reports not seen, all watchers", lambda r: f"{r['accounting']['not_seen_by_watchers']} of "
                                                           f"{r['steady_sent_per_watcher'] * r['accounting']['watchers']}"),
        ("- merged by the worker (by design: 2 reports within PROGRESS_INTERVAL are 1 write), per watcher",
         lambda r: acc(r, "merged_by_worker", "{} of " + str(r["steady_sent_per_watcher"]))),
        ("- written, not at the broker subscriber (publisher coalescing, both topics / dropped)",
         lambda r: "n/a" if "not_at_broker" not in r["accounting"] else
         f"{r['accounting']['not_at_broker']} ({acc(r, 'publisher_coalesced_both_topics', '{:.0f}')} / "
         f"{acc(r, 'publisher_dropped', '{:.0f}')})"),
        ("- at the broker, not at a watcher / of which merged in daphne (by design: a socket 16 behind)",
         lambda r: "n/a" if "at_broker_not_at_watchers" not in r["accounting"] else
         f"{r['accounting']['at_broker_not_at_watchers']} / "
         f"{acc(r, 'merged_in_daphne', '{:.0f}') if r['accounting'].get('merged_in_daphne') is not None else 'n/a (no sample in the pause: a longer --pause)'}"),
        ("**steady events lost** (all watchers)", lambda r: f"**{acc(r, 'lost')}**"),
        ("burst events received per watcher (mean)", lambda r: f"{r['burst_received_mean']} of {r['burst_sent']}"),
        ("final state seen by (last state shown)",
         lambda r: f"**{r['final_state_seen_by']}** ({', '.join(r['last_status'])} {r['last_done']})"),
        ("daphne CPU per delivery, first to last delivery",
         lambda r: f"{r['cpu_us_per_delivery']} µs ({r['deliveries']} in {r['delivery_window_s']} s)"),
        ("deliveries per WebSocket message (daphne joins what waits for a socket: more when it is behind)",
         lambda r: r["deliveries_per_ws_message"]),
        ("daphne CPU per delivery, steady phase",
         lambda r: f"{r['cpu_us_per_steady_delivery']} µs ({r['steady_deliveries']} in {r['steady_window_s']} s)"),
        ("at the broker (direct subscriber): p50 / p99 / max, steady events received",
         lambda r: "n/a" if not r.get("broker_side") else
         f"{r['broker_side']['p50']} / {r['broker_side']['p99']} / {r['broker_side']['max']} ms, "
         f"{r['broker_side']['steady_received']}"),
        ("after the broker (per event, watcher minus broker subscriber): p50 / p99 / max",
         lambda r: "n/a" if not (r.get("broker_side") or {}).get("after_broker") else
         "{p50} / {p99} / {max} ms".format(**r["broker_side"]["after_broker"])),
        ("load average in the steady phase (mean / max), whole column",
         lambda r: f"{r['load_steady'][0]} / {r['load_steady'][1]}, {r['load_column'][0]} / {r['load_column'][1]}"),
        ("share of a core in the steady phase", lambda r: ", ".join(f"{k} {v}" for k, v in r["shares_steady"].items())),
        ("bottleneck", lambda r: r["bottleneck"]),
    ]
    names = list(results)
    out = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, fn in rows:
        out.append(f"| {label} | " + " | ".join(str(fn(results[n])) for n in names) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    c = sub.add_parser("clients", help="(internal) run WebSocket clients")
    c.add_argument("--mode", choices=["stomp", "ref"], required=True)
    c.add_argument("--url", required=True)
    c.add_argument("--idle", type=int, default=0)
    c.add_argument("--watch", type=int, default=0)
    c.add_argument("--job", default="")
    c.add_argument("--session", default="")
    c.add_argument("--origin", default="")
    c.add_argument("--timeout", type=float, default=120.0)
    c.add_argument("--expected", type=float, default=0.0)
    c.add_argument("--broker-watch", action="store_true")
    p = sub.add_parser("ref-produce", help="(internal) the reference's producer")
    p.add_argument("--job", required=True)
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--burst", type=int, default=2000)
    p.add_argument("--pause", type=float, default=1.0)
    parser.add_argument("--systems", default="ours,reference")
    parser.add_argument("--idle", type=int, default=900, help="idle connections (default 900: 1,000 with the watchers)")
    parser.add_argument("--watch", type=int, default=100)
    parser.add_argument("--watchers-per-process", type=int, default=100,
                        help="watchers per client process (default 100): more processes when the clients saturate")
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--pause", type=float, default=1.0)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--ref-socket-timeout", default="none",
                        help="redis-py socket_timeout for the reference (default none; redis-py's own default is 5)")
    parser.add_argument("--nice", type=int, default=0,
                        help="run every process of the benchmark at this niceness (e.g. -10: as if the machine were "
                             "quiet, on a machine shared with others; both columns alike; say so with the figures)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.command == "clients":
        clients_main(args)
        return
    if args.command == "ref-produce":
        ref_produce_main(args)
        return
    runners = {"ours": run_ours, "reference": run_reference}
    columns = {system: functools.partial(runners[system], args) for system in args.systems.split(",")}
    run_columns(columns, lambda results: markdown(results, args), args.json, prefix="ws-bench-")


def run_columns(columns: dict[str, Callable[[Path], dict]], render: Callable[[dict], str],
                json_path: Path | None, *, prefix: str) -> dict:
    """Run each column in a fresh work folder, print its JSON as it ends and the table at the end.

    The folder (every process's log) is removed afterwards unless WS_BENCH_KEEP_LOGS is set.
    Shared by bench/scaleout_bench.py."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    results = {}
    print(f"uptime before: {os.getloadavg()}", file=sys.stderr, flush=True)
    try:
        for name, run in columns.items():
            print(f"running {name}…", file=sys.stderr, flush=True)
            results[name] = run(workdir)
            print(json.dumps({name: results[name]}, indent=1), file=sys.stderr, flush=True)
    finally:
        print(f"logs in {workdir}; uptime after: {os.getloadavg()}", file=sys.stderr)
    print(render(results))
    if json_path:
        json_path.write_text(json.dumps(results, indent=1))
    if not os.environ.get("WS_BENCH_KEEP_LOGS"):
        shutil.rmtree(workdir, ignore_errors=True)
    return results

if __name__ == "__main__":
    main()
