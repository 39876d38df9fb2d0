"""Live job events to WebSocket clients: this project's path against Channels' group messaging.

Run by hand (never in tests), from the repository root:

    .venv/bin/python bench/ws_bench.py                 # both systems, defaults of the issue
    .venv/bin/python bench/ws_bench.py --systems ours --seconds 10

For each system, one daphne process gets IDLE idle WebSocket clients (a page open with its
notifications subscribed) and WATCH clients watching one job; the job reports RATE progress
events per second for SECONDS, pauses, then reports BURST events as fast as it can and ends.

- ours: the real path. A task in `manage.py jobworker` calls report_progress(); the worker
  writes the row and publishes over STOMP (embedded broker); daphne's hub relays to the
  STOMP-over-WebSocket consumer; clients speak STOMP 1.2 (parsed with notifications.codec).
- reference: channels_redis on the local Redis; a producer process group_sends the same
  event JSON to the job's group; bench/ws_reference.py relays group messages as text frames.

Latency is from the producer's call (report_progress / group_send; the time travels in the
event's message) to receipt by the client, over every delivery of the steady phase. Memory
per idle connection is the growth of daphne's RSS while the idle clients connect, divided by
their number. Results go to stdout as Markdown (paste into bench/RESULTS-ws.md) and JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PYTHON = sys.executable
SUBPROTOCOLS = ["v12.stomp", "v11.stomp", "v10.stomp"]
# Connections opened at once by one client process (daphne's accept backlog is finite).
CONNECT_CONCURRENCY = 50
START_TIMEOUT = 60.0


# ---------------------------------------------------------------- client side (a subprocess)


def _latency(message: str, now: float) -> tuple[str, float] | None:
    parts = (message or "").split(" ")
    if len(parts) != 2 or parts[0] not in {"s", "b"}:
        return None
    try:
        return parts[0], now - float(parts[1])
    except ValueError:
        return None


class Watcher:
    """What one watching connection saw."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.by_done: dict[int, float] = {}  # steady event (its progress "done") -> latency
        self.steady_done: set[int] = set()
        self.burst_events = 0
        self.last: dict | None = None
        self.final = asyncio.Event()

    def on_event(self, event: dict, now: float) -> None:
        if event.get("type") != "job":
            return
        if self.last is not None and event.get("seq", 0) <= self.last.get("seq", 0):
            return  # an older state after a newer one: a client drops it (never seen here so far)
        self.last = event
        seen = _latency(event.get("message", ""), now)
        if seen is not None:
            phase, latency = seen
            if phase == "s":
                self.latencies.append(latency)
                self.by_done[event["progress"]["done"]] = latency
                self.steady_done.add(event["progress"]["done"])
            else:
                self.burst_events += 1
        if event.get("final"):
            self.final.set()


async def _until_ready(reader: asyncio.Task, ready: asyncio.Future) -> None:
    await asyncio.wait({reader, ready}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        reader.cancel()
        if reader.done() and not reader.cancelled() and reader.exception() is not None:
            raise reader.exception()
        raise TimeoutError("not subscribed in time")


async def _stomp_connection(url: str, headers: dict, destination: str, watcher: Watcher | None,
                            hold: asyncio.Event, limiter: asyncio.Semaphore) -> None:
    from websockets.asyncio.client import connect

    from notifications.codec import Frame, FrameParser, encode_frame

    async with limiter:
        ws = await connect(
            url, subprotocols=SUBPROTOCOLS, additional_headers=headers, compression=None, max_size=None,
            ping_interval=None, open_timeout=START_TIMEOUT,
        )
        parser = FrameParser()
        ready = asyncio.get_running_loop().create_future()

        async def read() -> None:
            async for data in ws:
                parser.receive_data(data.encode() if isinstance(data, str) else data)
                now = time.time()
                for frame in parser.events_received():
                    if not isinstance(frame, Frame):
                        continue  # a heart-beat
                    if frame.command == "ERROR":
                        raise RuntimeError(f"ERROR frame: {frame.get('message')}")
                    if frame.command == "RECEIPT" and not ready.done():
                        ready.set_result(True)
                    elif frame.command == "MESSAGE" and watcher is not None:
                        watcher.on_event(json.loads(frame.body), now)

        await ws.send(encode_frame(Frame("CONNECT", (("accept-version", "1.2"), ("host", "127.0.0.1"), ("heart-beat", "0,0")))))
        await ws.send(encode_frame(Frame("SUBSCRIBE", (("id", "0"), ("destination", destination), ("receipt", "sub")))))
        reader = asyncio.create_task(read())
        await _until_ready(reader, ready)
    _connected.append(1)
    try:
        await hold.wait()
    finally:
        reader.cancel()
        await ws.close()


async def _ref_connection(url: str, watcher: Watcher | None, hold: asyncio.Event, limiter: asyncio.Semaphore) -> None:
    from websockets.asyncio.client import connect

    async with limiter:
        ws = await connect(url, compression=None, max_size=None, ping_interval=None, open_timeout=START_TIMEOUT)

    async def read() -> None:
        async for data in ws:
            if watcher is not None:
                watcher.on_event(json.loads(data), time.time())

    reader = asyncio.create_task(read())
    _connected.append(1)
    try:
        await hold.wait()
    finally:
        reader.cancel()
        await ws.close()


class _RawWatch(asyncio.Protocol):
    """A minimal RFC 6455 client for the watching connections (--client raw, the default).

    The clients share the machine's two cores with daphne, so their own cost per message
    delays what they measure: the `websockets` client spent about 110 µs of Python per message
    here (0.5-0.65 of a core for 5,000 messages a second), this one parses only the frame
    header, splits STOMP frames on NUL and decodes the JSON body. Browsers parse in native code.
    Server frames are unmasked and never fragmented by daphne (autobahn's autoFragmentSize is 0).
    """

    def __init__(self, watcher: Watcher, stomp: bool) -> None:
        self.watcher, self.stomp = watcher, stomp
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

    def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        n = len(payload)
        header = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
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
            elif opcode == 8:
                self.transport.close()

    def _message(self, payload: bytes, now: float) -> None:
        if not self.stomp:
            self.watcher.on_event(json.loads(payload), now)
            return
        for frame in payload.split(b"\x00"):
            frame = frame.lstrip(b"\r\n")
            if not frame:
                continue  # heart-beats, or what follows the last NUL
            command, _, rest = frame.partition(b"\n")
            if command == b"MESSAGE":
                self.watcher.on_event(json.loads(rest.partition(b"\n\n")[2]), now)
            elif command == b"RECEIPT" and not self.ready.done():
                self.ready.set_result(True)
            elif command == b"ERROR":
                raise RuntimeError(f"ERROR frame: {rest[:200]!r}")


async def _raw_watch(url: str, headers: dict, destination: str | None, watcher: Watcher, hold: asyncio.Event,
                     limiter: asyncio.Semaphore) -> None:
    """One watching connection through _RawWatch: STOMP when ``destination`` is given, else plain JSON."""
    import base64
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()
    async with limiter:
        transport, proto = await loop.create_connection(lambda: _RawWatch(watcher, destination is not None),
                                                        parts.hostname, parts.port)
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
    _connected.append(1)
    try:
        await hold.wait()
    finally:
        transport.close()


_connected: list[int] = []


class _BrokerWatcher:
    """A direct STOMP subscriber to the job's broker topic (a hub of its own): what reached the
    broker's side, to tell the web process's share of latency and loss from the producer's."""

    def __init__(self) -> None:
        self.watcher = Watcher()

    def hub_event(self, event) -> None:
        if event.data is not None:
            self.watcher.on_event(event.data, time.time())

    def hub_reconnected(self) -> None:
        pass


async def run_clients(args) -> dict:
    hold = asyncio.Event()
    broker_hub = broker_watcher = None
    # The direct broker subscriber runs in the idle clients' process, which has nothing else to
    # do while the job runs: in the watchers' busy process its own loop would add to its figure.
    if args.mode == "stomp" and args.job and not args.watch and os.environ.get("STOMP_BROKER_URL"):
        from jobs import live as destinations
        from notifications.hub import Hub

        broker_hub, broker_watcher = Hub(os.environ["STOMP_BROKER_URL"]), _BrokerWatcher()
        broker_hub.start()
        await asyncio.wait_for(broker_hub.subscribe(destinations.job(args.job), broker_watcher), START_TIMEOUT)
    watchers = [Watcher() for _ in range(args.watch)]
    limiter = asyncio.Semaphore(CONNECT_CONCURRENCY)
    errors: list[str] = []
    headers = {"Cookie": f"sessionid={args.session}", "Origin": args.origin} if args.session else {}

    async def one(i: int, watcher: Watcher | None) -> None:
        try:
            if watcher is not None and args.client == "raw":
                if args.mode == "stomp":
                    await _raw_watch(args.url, headers, f"/topic/jobs.{args.job}", watcher, hold, limiter)
                else:
                    await _raw_watch(args.url + f"?job={args.job}", {}, None, watcher, hold, limiter)
            elif args.mode == "stomp":
                dest = f"/topic/jobs.{args.job}" if watcher is not None else "/user/queue/notifications"
                await _stomp_connection(args.url, headers, dest, watcher, hold, limiter)
            else:
                query = f"?job={args.job}" if watcher is not None else f"?user={i}"
                await _ref_connection(args.url + query, watcher, hold, limiter)
        except Exception as exc:  # counted and reported: a benchmark records failures, it does not hide them
            errors.append(f"{type(exc).__name__}: {exc}")

    tasks = []
    for i in range(args.idle):
        tasks.append(asyncio.create_task(one(i, None)))
    for w in watchers:
        tasks.append(asyncio.create_task(one(0, w)))
    deadline = time.monotonic() + START_TIMEOUT * 2
    while len(_connected) + len(errors) < len(tasks) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    print(json.dumps({"ready": len(_connected), "errors": len(errors)}), flush=True)
    cpu0, wall0 = time.process_time(), time.monotonic()
    if args.watch:
        try:
            await asyncio.wait_for(asyncio.gather(*(w.final.wait() for w in watchers)), args.timeout)
        except TimeoutError:
            pass
        # The watchers' own CPU while the producer ran: near 1.0 the client, not the server,
        # adds to the latency (it shares the machine's two cores with daphne).
        client_cpu_share = round((time.process_time() - cpu0) / max(1e-6, time.monotonic() - wall0), 2)
        await asyncio.sleep(0.5)  # let anything after the final event arrive (it would be a bug)
    else:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    hold.set()
    await asyncio.wait(tasks, timeout=10)
    if broker_hub is not None:
        await broker_hub.close()
    return {
        "broker_latencies": [round(x, 6) for x in broker_watcher.watcher.latencies] if broker_watcher else [],
        "broker_by_done": broker_watcher.watcher.by_done if broker_watcher else {},
        "watch_by_done": [w.by_done for w in watchers],
        "broker_steady_received": len(broker_watcher.watcher.steady_done) if broker_watcher else None,
        "connected": len(_connected),
        "errors": errors[:5],
        "error_count": len(errors),
        "latencies": [round(x, 6) for w in watchers for x in w.latencies],
        "steady_received": [len(w.steady_done) for w in watchers],
        "burst_received": [w.burst_events for w in watchers],
        "final_seen": sum(1 for w in watchers if w.final.is_set()),
        "last_status": sorted({(w.last or {}).get("status", "none") for w in watchers}),
        "last_done": sorted({((w.last or {}).get("progress") or {}).get("done", -1) for w in watchers}),
        "client_cpu_share": client_cpu_share if args.watch else None,
    }


def clients_main(args) -> None:
    sys.path[:0] = [str(ROOT)]
    if args.mode == "stomp":
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    result = asyncio.run(run_clients(args))
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
    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, cmd: list[str], env: dict, **kw) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "wb")
        kw.setdefault("stdout", log)
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
               origin: str = "", timeout: float = 120.0, client: str = "raw") -> list[str]:
    return [PYTHON, str(BENCH / "ws_bench.py"), "clients", "--mode", mode, "--url", url, "--idle", str(idle),
            "--watch", str(watch), "--job", job, "--session", session, "--origin", origin, "--timeout", str(timeout),
            "--client", client]


def rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


def cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def measure(mode: str, url: str, web: subprocess.Popen, procs: Procs, env: dict, args, job: str, session: str,
            origin: str, start_producer) -> dict:
    """Connect idle clients (memory), then watchers; run the producer; collect what the watchers saw."""
    warm = procs.start("warmup", client_cmd(mode, url, idle=5, session=session, origin=origin), env, stdout=subprocess.PIPE, text=True)
    read_json_line(warm, "ready", START_TIMEOUT * 2)
    warm.send_signal(signal.SIGTERM)
    warm.wait(timeout=30)
    time.sleep(1.0)
    rss0 = rss(web.pid)
    idle = procs.start("idle", client_cmd(mode, url, idle=args.idle, job=job, session=session, origin=origin), env, stdout=subprocess.PIPE, text=True)
    idle_ready = read_json_line(idle, "ready", START_TIMEOUT * 4)
    time.sleep(2.0)
    rss1 = rss(web.pid)
    watch = procs.start(
        "watch", client_cmd(mode, url, watch=args.watch, job=job, session=session, origin=origin, timeout=args.seconds * 4 + 120,
                            client=args.client),
        env, stdout=subprocess.PIPE, text=True,
    )
    watch_ready = read_json_line(watch, "ready", START_TIMEOUT * 2)
    cpu0 = cpu_seconds(web.pid)
    started = time.monotonic()
    start_producer()
    result = read_json_line(watch, "result", args.seconds * 4 + 180)["result"]
    elapsed = time.monotonic() - started
    cpu1 = cpu_seconds(web.pid)
    idle.send_signal(signal.SIGTERM)
    idle_result = read_json_line(idle, "result", 60)["result"]
    lat = sorted(result["latencies"])

    def pct(p: float) -> float | None:
        if not lat:
            return None
        return round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 1)

    steady_sent = int(args.rate * args.seconds)
    return {
        "idle_connected": idle_ready["ready"], "idle_errors": idle_ready["errors"] + idle_result["error_count"],
        "watch_connected": watch_ready["ready"], "watch_errors": watch_ready["errors"],
        "rss_before_mib": round(rss0 / 2**20, 1), "rss_after_idle_mib": round(rss1 / 2**20, 1),
        "kib_per_idle_connection": round((rss1 - rss0) / 1024 / max(1, idle_ready["ready"]), 1),
        "deliveries": len(lat), "latency_ms": {"p50": pct(0.50), "p99": pct(0.99), "max": round(1000 * lat[-1], 1) if lat else None,
                                               "mean": round(1000 * statistics.fmean(lat), 1) if lat else None},
        "steady_sent_per_watcher": steady_sent,
        "steady_received_min": min(result["steady_received"], default=0),
        "steady_received_mean": round(statistics.fmean(result["steady_received"]), 1) if result["steady_received"] else 0,
        "steady_lost_total": sum(steady_sent - n for n in result["steady_received"]),
        "burst_sent": args.burst,
        "burst_received_mean": round(statistics.fmean(result["burst_received"]), 1) if result["burst_received"] else 0,
        "final_state_seen_by": f"{result['final_seen']}/{args.watch}",
        "last_status": result["last_status"], "last_done": result["last_done"][:5],
        "web_cpu_seconds": round(cpu1 - cpu0, 2), "elapsed_s": round(elapsed, 1),
        "cpu_us_per_delivery": round(1e6 * (cpu1 - cpu0) / max(1, len(lat) + sum(result["burst_received"])), 1),
        "client_errors": result["errors"],
        "watch_client_cpu_share": result.get("client_cpu_share"),
        "broker_side": _broker_side(idle_result, result),
    }


def _pcts(values: list[float]) -> dict:
    values = sorted(values)
    return {"p50": round(1000 * values[len(values) // 2], 1), "p99": round(1000 * values[min(len(values) - 1, int(0.99 * len(values)))], 1),
            "max": round(1000 * values[-1], 1)}


def _broker_side(idle_result: dict, watch_result: dict) -> dict | None:
    """What the direct broker subscriber saw, and each delivery's latency after it (the web
    process, the WebSocket and the watchers' client), per event: watcher minus broker."""
    lat = idle_result.get("broker_latencies") or []
    if not lat:
        return None
    at_broker = {int(k): v for k, v in (idle_result.get("broker_by_done") or {}).items()}
    after = [latency - at_broker[int(done)] for seen in watch_result.get("watch_by_done") or []
             for done, latency in seen.items() if int(done) in at_broker]
    return {**_pcts(lat), "steady_received": idle_result.get("broker_steady_received"),
            "after_broker": _pcts(after) if after else None}


def run_ours(args, workdir: Path) -> dict:
    var = workdir / "ours"
    var.mkdir()
    procs = Procs(var)
    broker_port, web_port = free_port(), free_port()
    env = dict(os.environ)
    env.update({
        "DJANGO_SETTINGS_MODULE": "ws_bench_settings", "PYTHONPATH": f"{ROOT}{os.pathsep}{BENCH}",
        "DATABASE_URL": f"sqlite:///{var / 'db.sqlite3'}", "DJANGO_VAR_DIR": str(var),
        "STOMP_BROKER_URL": f"stomp://127.0.0.1:{broker_port}", "DJANGO_LOG_LEVEL": "WARNING", "DJANGO_DEBUG": "0",
    })
    manage = [PYTHON, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    setup = subprocess.run([*manage, "shell", "--no-imports", "-c", (
        "from django.conf import settings\n"
        "from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model\n"
        "from django.contrib.sessions.backends.db import SessionStore\n"
        "from jobs.api import enqueue_for\n"
        "from ws_bench_tasks import ticker\n"
        "u = get_user_model().objects.create_user('bench', 'bench@example.com', 'bench-pass')\n"
        "s = SessionStore(); s[SESSION_KEY] = str(u.pk); s[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]\n"
        "s[HASH_SESSION_KEY] = u.get_session_auth_hash(); s.create()\n"
        f"r = enqueue_for(u, ticker, {args.rate}, {args.seconds}, {args.burst})\n"
        "print(s.session_key, r.id)\n")], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    session, job = setup.stdout.split()[-2:]
    try:
        broker = procs.start("broker", [*manage, "stompbroker", "--host", "127.0.0.1", "--port", str(broker_port)], env)
        wait_port(broker_port, broker)
        web = procs.start("daphne", [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(web_port), "-v", "0", "project.asgi:application"], env)
        wait_port(web_port, web)
        origin = f"http://127.0.0.1:{web_port}"
        return measure(
            "stomp", f"ws://127.0.0.1:{web_port}/ws/stomp/", web, procs, env, args, job, session, origin,
            lambda: procs.start("worker", [*manage, "jobworker", "--concurrency", "1", "--queue", "default"], env),
        )
    finally:
        procs.stop_all()


def run_reference(args, workdir: Path) -> dict:
    var = workdir / "reference"
    var.mkdir()
    procs = Procs(var)
    web_port = free_port()
    job = str(uuid.uuid4())
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update({"PYTHONPATH": f"{ROOT}{os.pathsep}{BENCH}", "BENCH_REDIS_PREFIX": f"wsbench{os.getpid()}"})
    try:
        web = procs.start("daphne", [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(web_port), "-v", "0", "ws_reference:application"], env)
        wait_port(web_port, web)
        producer = [PYTHON, str(BENCH / "ws_bench.py"), "ref-produce", "--job", job, "--rate", str(args.rate),
                    "--seconds", str(args.seconds), "--burst", str(args.burst)]
        return measure(
            "ref", f"ws://127.0.0.1:{web_port}/", web, procs, env, args, job, "", "",
            lambda: procs.start("producer", producer, env),
        )
    finally:
        procs.stop_all()


def markdown(results: dict, args) -> str:
    rows = [
        ("idle connections (connected / errors)", lambda r: f"{r['idle_connected']} / {r['idle_errors']}"),
        ("watchers (connected / errors)", lambda r: f"{r['watch_connected']} / {r['watch_errors']}"),
        ("memory per idle connection", lambda r: f"{r['kib_per_idle_connection']} KiB"),
        ("steady latency p50", lambda r: f"{r['latency_ms']['p50']} ms"),
        ("steady latency p99", lambda r: f"{r['latency_ms']['p99']} ms"),
        ("steady latency max", lambda r: f"{r['latency_ms']['max']} ms"),
        ("steady events lost (all watchers)", lambda r: f"{r['steady_lost_total']} of {r['steady_sent_per_watcher'] * args.watch}"),
        ("burst events received per watcher (mean)", lambda r: f"{r['burst_received_mean']} of {r['burst_sent']}"),
        ("final state seen by", lambda r: r["final_state_seen_by"]),
        ("daphne CPU per delivery", lambda r: f"{r['cpu_us_per_delivery']} µs"),
        ("at the broker (one direct STOMP subscriber): p50 / p99 / max, steady events received",
         lambda r: "n/a" if not r.get("broker_side") else
         f"{r['broker_side']['p50']} / {r['broker_side']['p99']} / {r['broker_side']['max']} ms, {r['broker_side']['steady_received']}"),
        ("after the broker (each delivery minus the broker subscriber's latency for that event): p50 / p99 / max",
         lambda r: "n/a" if not (r.get("broker_side") or {}).get("after_broker") else
         "{p50} / {p99} / {max} ms".format(**r["broker_side"]["after_broker"])),
        ("watchers' client process CPU (share of one core, until the final state or timeout)", lambda r: f"{r['watch_client_cpu_share']}"),
        ("watchers' WebSocket client (--client)", lambda r: args.client),
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
    c.add_argument("--client", choices=["raw", "websockets"], default="raw")
    p = sub.add_parser("ref-produce", help="(internal) the reference's producer")
    p.add_argument("--job", required=True)
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--burst", type=int, default=2000)
    p.add_argument("--pause", type=float, default=1.0)
    for target in (parser,):
        target.add_argument("--systems", default="ours,reference")
        target.add_argument("--idle", type=int, default=900, help="idle connections (default 900: 1,000 with the watchers)")
        target.add_argument("--watch", type=int, default=100)
        target.add_argument("--rate", type=float, default=50.0)
        target.add_argument("--seconds", type=float, default=20.0)
        target.add_argument("--burst", type=int, default=2000)
        target.add_argument("--json", type=Path, help="also write the results here")
        target.add_argument("--client", choices=["raw", "websockets"], default="raw",
                            help="the watchers' WebSocket client: a minimal one (default) or the websockets library")
    args = parser.parse_args(argv)
    if args.command == "clients":
        clients_main(args)
        return
    if args.command == "ref-produce":
        ref_produce_main(args)
        return
    workdir = Path(tempfile.mkdtemp(prefix="ws-bench-"))
    results = {}
    try:
        for system in args.systems.split(","):
            runner = {"ours": run_ours, "reference": run_reference}[system]
            print(f"running {system}…", file=sys.stderr, flush=True)
            results[system] = runner(args, workdir)
            print(json.dumps({system: results[system]}, indent=1), file=sys.stderr, flush=True)
    finally:
        print(f"logs in {workdir}", file=sys.stderr)
    print(markdown(results, args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if not os.environ.get("WS_BENCH_KEEP_LOGS"):
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
