"""Fuzzing the running embedded broker over real sockets while a well-behaved client is watched.

Each case is one TCP connection that sends generated input: random bytes, valid sessions with
mutations (flipped, inserted, deleted, duplicated bytes), frames split into tiny pieces, inputs
at and past every codec limit, over-long commands, frames before CONNECT, protocol abuse after
it (unknown acks and transactions, duplicate subscriptions, DISCONNECT then more), bad
heart-beat and version headers, broken escapes and bytes that are not UTF-8; some connections
end with a reset instead of a close. A case is a function of (seed, index): ``case(seed, i)``
rebuilds it for a reproduction.

Meanwhile a separate process (``python -m tests.chaos.broker_fuzz watch``) sends a message to its
own queue every 20 ms and measures each round trip, before the fuzzing (baseline) and during
it. At the end the broker must still run and serve a new client, and the watcher must have
received every message it sent.

Used by tests/chaos/test_broker_fuzz.py (short) and bench/fuzz_broker.py (long).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from notifications.codec import HEARTBEAT, Frame, FrameParser, encode_frame

__all__ = ["FuzzCase", "case", "FuzzResult", "fuzz_broker", "KINDS"]

ROOT = Path(__file__).resolve().parents[2]
PING_INTERVAL = 0.02
# How long a case reads what the broker answers before closing (bounded: the broker may stay quiet).
READ_WINDOW = 0.15

KINDS = ("random", "mutated", "split", "limits", "long-command", "before-connect", "abuse", "headers")


@dataclass
class FuzzCase:
    index: int
    kind: str
    chunks: list[bytes]
    pause: float = 0.0  # between chunks
    reset: bool = False  # end with RST instead of FIN

    def describe(self) -> str:
        data = b"".join(self.chunks)
        return f"case {self.index} ({self.kind}, {len(data)} bytes in {len(self.chunks)} chunks): {data[:160]!r}"


def _connect_frame(rand: random.Random) -> bytes:
    version = rand.choice(["1.2", "1.1", "1.0", "1.0,1.1,1.2", None])
    headers = [("host", "/")]
    if version:
        headers.insert(0, ("accept-version", version))
    if rand.random() < 0.5:
        headers.append(("heart-beat", rand.choice(["0,0", "100,100", "0,1000"])))
    return encode_frame(Frame(rand.choice(["CONNECT", "STOMP"]), tuple(headers), b""))


def _valid_session(rand: random.Random) -> bytes:
    frames = [_connect_frame(rand)]
    queue = f"/queue/fuzz-{rand.randrange(50)}"
    topic = f"/topic/fuzz-{rand.randrange(50)}"
    for _ in range(rand.randrange(1, 8)):
        choice = rand.randrange(6)
        if choice == 0:
            body = rand.randbytes(rand.randrange(0, 300))
            frames.append(encode_frame(Frame("SEND", (("destination", rand.choice([queue, topic])),
                                                      ("content-length", str(len(body))),
                                                      ("receipt", f"r{rand.randrange(99)}")), body)))
        elif choice == 1:
            frames.append(encode_frame(Frame("SUBSCRIBE", (("id", str(rand.randrange(5))),
                                                           ("destination", rand.choice([queue, topic])),
                                                           ("ack", rand.choice(["auto", "client", "client-individual"]))), b"")))
        elif choice == 2:
            frames.append(encode_frame(Frame("UNSUBSCRIBE", (("id", str(rand.randrange(5))),), b"")))
        elif choice == 3:
            tx = f"t{rand.randrange(3)}"
            frames.append(encode_frame(Frame(rand.choice(["BEGIN", "COMMIT", "ABORT"]), (("transaction", tx),), b"")))
        elif choice == 4:
            frames.append(encode_frame(Frame(rand.choice(["ACK", "NACK"]), (("id", str(rand.randrange(1000))),), b"")))
        else:
            frames.append(b"\n" * rand.randrange(1, 4))  # heart-beats
    if rand.random() < 0.3:
        frames.append(encode_frame(Frame("DISCONNECT", (("receipt", "bye"),), b"")))
    return b"".join(frames)


def _mutate(rand: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rand.randrange(1, 6)):
        if not buf:
            buf += rand.randbytes(4)
        op = rand.randrange(7)
        pos = rand.randrange(len(buf))
        if op == 0:
            buf[pos] ^= 1 << rand.randrange(8)
        elif op == 1:
            buf[pos:pos] = rand.choice([b"\x00", b"\n", b":", b"\\", b"\r", b"\xff", rand.randbytes(1)])
        elif op == 2:
            del buf[pos:pos + rand.randrange(1, 20)]
        elif op == 3:
            end = min(len(buf), pos + rand.randrange(1, 200))
            buf[pos:pos] = buf[pos:end] * rand.randrange(1, 4)
        elif op == 4:
            buf[pos:pos] = rand.choice([b"content-length:99999\n", b"content-length:-1\n", b"content-length:x\n",
                                        b"receipt:", b"id:\n", b"destination:\n"])
        elif op == 5:
            buf = buf[:pos]
        else:
            buf[pos:pos] = b"a" * rand.randrange(1, 3000)
    return bytes(buf)


def _split(rand: random.Random, data: bytes, small: bool) -> list[bytes]:
    chunks, pos = [], 0
    while pos < len(data):
        n = rand.randrange(1, 4) if small else rand.randrange(1, 400)
        chunks.append(data[pos:pos + n])
        pos += n
    return chunks


def case(seed: int, index: int) -> FuzzCase:
    """The ``index``-th case of a run seeded with ``seed`` (the same arguments, the same bytes)."""
    rand = random.Random(seed * 1_000_003 + index)
    kind = KINDS[index % len(KINDS)]
    reset = rand.random() < 0.2
    if kind == "random":
        data = rand.randbytes(rand.randrange(1, 3000))
        return FuzzCase(index, kind, _split(rand, data, False), reset=reset)
    if kind == "mutated":
        return FuzzCase(index, kind, _split(rand, _mutate(rand, _valid_session(rand)), False), reset=reset)
    if kind == "split":
        data = _valid_session(rand)[:600]
        return FuzzCase(index, kind, _split(rand, data, True)[:200], pause=0.0005, reset=reset)
    if kind == "limits":
        connect = _connect_frame(rand)
        choice = rand.randrange(5)
        if choice == 0:  # a header line past MAX_HEADER_LINE (10 KiB)
            bad = b"SEND\ndestination:/queue/x\nh:" + b"v" * (11 * 1024) + b"\n\n\x00"
        elif choice == 1:  # more than MAX_HEADERS (1000)
            bad = b"SEND\ndestination:/queue/x\n" + b"".join(b"h%d:v\n" % i for i in range(1100)) + b"\n\x00"
        elif choice == 2:  # content-length past MAX_BODY_SIZE, then part of the body
            bad = b"SEND\ndestination:/queue/x\ncontent-length:99999999\n\n" + b"x" * 5000
        elif choice == 3:  # a body past MAX_FRAME_SIZE without content-length (4.25 MiB and more)
            bad = b"SEND\ndestination:/queue/x\n\n" + b"y" * (4 * 1024 * 1024 + 300 * 1024) + b"\x00"
        else:  # a command line that never ends
            bad = b"S" * (12 * 1024)
        return FuzzCase(index, kind, [connect] + _split(rand, bad, False)[:50] if choice != 3 else [connect, bad],
                        reset=reset)
    if kind == "long-command":
        command = bytes(rand.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rand.randrange(12, 40)))
        data = _connect_frame(rand) + command + b"\nx:y\n\n\x00"
        return FuzzCase(index, kind, _split(rand, data, rand.random() < 0.5), reset=reset)
    if kind == "before-connect":
        data = _valid_session(rand).split(b"\x00", 1)[-1] or b"SEND\ndestination:/queue/x\n\n\x00"
        return FuzzCase(index, kind, [data], reset=reset)
    if kind == "abuse":
        frames = [_connect_frame(rand)]
        for _ in range(rand.randrange(3, 30)):
            frames.append(rand.choice([
                b"SUBSCRIBE\nid:1\ndestination:/topic/a\n\n\x00",
                b"SUBSCRIBE\nid:1\ndestination:/queue/b\nack:client\n\n\x00",
                b"UNSUBSCRIBE\nid:404\n\n\x00",
                b"ACK\nid:nope\n\n\x00",
                b"NACK\nid:nope\ntransaction:zz\n\n\x00",
                b"BEGIN\ntransaction:t\n\n\x00",
                b"COMMIT\ntransaction:unknown\n\n\x00",
                b"SEND\ndestination:/queue/b\ntransaction:t\n\nin a transaction\x00",
                b"SEND\ndestination:/topic/a\n\nhi\x00",
                b"SEND\n\nno destination\x00",
                b"CONNECT\naccept-version:1.2\nhost:/\n\n\x00",
                b"DISCONNECT\nreceipt:1\n\n\x00",
                b"SEND\ndestination:/queue/b\ncontent-length:2\n\nabc\x00",
                b"SUBSCRIBE\nid:%d\ndestination:/topic/t%d\n\n\x00" % (rand.randrange(2000), rand.randrange(2000)),
            ]))
        return FuzzCase(index, kind, _split(rand, b"".join(frames), False), reset=reset)
    # headers: bad versions, heart-beats, escapes, encodings
    connect = rand.choice([
        b"CONNECT\naccept-version:9.9\nhost:/\n\n\x00",
        b"CONNECT\naccept-version:\nhost:/\n\n\x00",
        b"CONNECT\naccept-version:1.2\nheart-beat:x,y\n\n\x00",
        b"CONNECT\naccept-version:1.2\nheart-beat:-1,5\n\n\x00",
        b"CONNECT\naccept-version:1.2\nheart-beat:99999999999999999999,1\n\n\x00",
        b"CONNECT\naccept-version:1.2\nlogin:\xff\xfe\npasscode:\x80\n\n\x00",
        b"CONNECT\r\naccept-version:1.2\r\nhost:/\r\n\r\n\x00",
        b"CONNECT\naccept-version:1.2\nhost:/\n\n\x00",
    ])
    tail = rand.choice([
        b"SEND\ndestination:/queue/\\x\n\n\x00",
        b"SEND\ndestination:/queue/a\\\n\n\x00",
        b"SEND\ndestination:/queue/\xc3\x28\n\n\x00",
        b"SUBSCRIBE\nid:\\c\\n\\r\\\\\ndestination:/topic/e\\cs\n\n\x00",
        b"SEND\n:no-name\ndestination:/queue/a\n\n\x00",
        b"SEND\nno-colon\n\n\x00",
        b"send\ndestination:/queue/a\n\n\x00",
        b"\x00\x00\x00",
    ])
    return FuzzCase(index, kind, [connect, tail], reset=reset)


# ------------------------------------------------------------------------------- the runner


@dataclass
class FuzzResult:
    cases: int = 0
    seed: int = 0
    seconds: float = 0.0
    by_kind: dict = field(default_factory=dict)
    answered_error: int = 0  # cases the broker answered with an ERROR frame
    refused_connect: int = 0  # connections refused or reset at connect
    broker_alive: bool = True
    broker_exit: int | None = None
    serves_new_client: bool = True
    internal_errors: int = 0  # tracebacks in the broker's log
    rss_before: int = 0
    rss_after: int = 0
    watcher: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


async def _play(host: str, port: int, fuzz: FuzzCase, result: FuzzResult) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    except (OSError, TimeoutError):
        result.refused_connect += 1
        return
    answer = bytearray()

    async def read() -> None:
        with _suppress():
            while len(answer) < 65536:
                data = await reader.read(65536)
                if not data:
                    return
                answer.extend(data)

    reading = asyncio.create_task(read())
    try:
        for chunk in fuzz.chunks:
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), 5)
            if fuzz.pause:
                await asyncio.sleep(fuzz.pause)
        await asyncio.wait_for(asyncio.shield(reading), READ_WINDOW)
    except (OSError, TimeoutError, ConnectionError):
        pass
    finally:
        if b"ERROR" in answer:
            result.answered_error += 1
        reading.cancel()
        with _suppress():
            if fuzz.reset:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 2)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return exc_type is not None and issubclass(exc_type, (Exception, asyncio.CancelledError))


async def _run_cases(host: str, port: int, seed: int, count: int, concurrency: int, result: FuzzResult) -> None:
    next_index = iter(range(count))

    async def worker() -> None:
        for index in next_index:
            fuzz = case(seed, index)
            result.by_kind[fuzz.kind] = result.by_kind.get(fuzz.kind, 0) + 1
            await _play(host, port, fuzz, result)
            result.cases += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def serves_new_client(host: str, port: int, timeout: float = 10.0) -> bool:
    """CONNECT, SEND with a receipt, RECEIPT back: the broker still does its job for a newcomer."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"CONNECT\naccept-version:1.2\nhost:/\n\n\x00"
                         b"SEND\ndestination:/queue/fuzz-check\nreceipt:ok\n\nstill here\x00")
            parser, deadline = FrameParser(), time.monotonic() + timeout
            while time.monotonic() < deadline:
                data = sock.recv(65536)
                if not data:
                    return False
                parser.receive_data(data)
                for event in parser.events_received():
                    if event is not HEARTBEAT and event.command == "RECEIPT" and event.get("receipt-id") == "ok":
                        return True
    except OSError:
        return False
    return False


def fuzz_broker(broker: subprocess.Popen, port: int, *, cases: int, seed: int, concurrency: int = 8,
                baseline: float = 3.0, log_path: Path | None = None) -> FuzzResult:
    """Run ``cases`` fuzz cases against the broker process listening on ``port``, watched."""
    from .harness import rss_bytes

    result = FuzzResult(seed=seed)
    watcher = subprocess.Popen([sys.executable, "-m", "tests.chaos.broker_fuzz", "watch", "--port", str(port)],
                               cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if watcher.stdout.readline().strip() != "ready":
            raise RuntimeError("the latency watcher did not start")
        time.sleep(baseline)
        result.rss_before = rss_bytes(broker.pid)
        watcher.stdin.write("fuzz\n")
        watcher.stdin.flush()
        started = time.monotonic()
        asyncio.run(_run_cases("127.0.0.1", port, seed, cases, concurrency, result))
        result.seconds = round(time.monotonic() - started, 1)
        watcher.stdin.write("end\n")
        watcher.stdin.flush()
        out, _ = watcher.communicate(timeout=60)
        result.watcher = json.loads(out.strip().splitlines()[-1])
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(5)
    result.rss_after = rss_bytes(broker.pid)
    result.broker_exit = broker.poll()
    result.broker_alive = result.broker_exit is None
    result.serves_new_client = result.broker_alive and serves_new_client("127.0.0.1", port)
    if log_path is not None and log_path.exists():
        result.internal_errors = log_path.read_text(errors="replace").count("Traceback")
    return result


# --------------------------------------------------------------------- the latency watcher


def _pcts(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)

    return {"n": len(values), "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": round(ordered[-1] * 1000, 2),
            "mean_ms": round(statistics.fmean(values) * 1000, 2)}


async def _watch(port: int) -> dict:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    queue = f"/queue/chaos-latency-{os.getpid()}"
    writer.write(b"CONNECT\naccept-version:1.2\nhost:/\nheart-beat:0,0\n\n\x00"
                 + f"SUBSCRIBE\nid:0\ndestination:{queue}\nreceipt:sub\n\n\x00".encode())
    parser = FrameParser()
    sent: dict[int, tuple[float, str]] = {}
    samples: dict[str, list[float]] = {"baseline": [], "fuzz": []}
    phase = ["baseline"]
    received: set[int] = set()
    errors: list[str] = []
    subscribed = asyncio.Event()

    async def read() -> None:
        while data := await reader.read(65536):
            now = time.perf_counter()
            parser.receive_data(data)
            for event in parser.events_received():
                if event is HEARTBEAT:
                    continue
                if event.command == "RECEIPT":
                    subscribed.set()
                elif event.command == "MESSAGE":
                    n = int(event.body)
                    received.add(n)
                    at, tag = sent.get(n, (now, "?"))
                    samples.setdefault(tag, []).append(now - at)
                elif event.command == "ERROR":
                    errors.append(event.get("message") or "")

    async def control() -> None:
        loop = asyncio.get_running_loop()
        stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        while line := (await stdin.readline()).decode().strip():
            if line == "end":
                return
            phase[0] = line

    reading = asyncio.create_task(read())
    await asyncio.wait_for(subscribed.wait(), 30)
    print("ready", flush=True)
    controlling = asyncio.create_task(control())
    n = 0
    while not controlling.done():
        n += 1
        sent[n] = (time.perf_counter(), phase[0])
        writer.write(f"SEND\ndestination:{queue}\ncontent-length:{len(str(n))}\n\n{n}\x00".encode())
        await writer.drain()
        await asyncio.sleep(PING_INTERVAL)
    deadline = time.monotonic() + 10
    while len(received) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    reading.cancel()
    writer.close()
    return {"sent": n, "lost": n - len(received), "errors": errors[:5],
            **{phase: _pcts(values) for phase, values in samples.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.broker_fuzz")
    sub = parser.add_subparsers(dest="command", required=True)
    watch = sub.add_parser("watch", help="the latency watcher (reads phase names on stdin, 'end' stops)")
    watch.add_argument("--port", type=int, required=True)
    show = sub.add_parser("show", help="print the bytes of one case")
    show.add_argument("--seed", type=int, required=True)
    show.add_argument("--index", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "watch":
        print(json.dumps(asyncio.run(_watch(args.port))), flush=True)
    else:
        fuzz = case(args.seed, args.index)
        print(fuzz.describe())
        print(repr(b"".join(fuzz.chunks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
