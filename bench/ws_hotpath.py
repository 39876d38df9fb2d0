"""CPU per delivery in the WebSocket consumer's hot path, in one process, for two versions of the code.

Run by hand (never in tests), from the repository root:

    .venv/bin/python bench/ws_hotpath.py                          # this checkout
    .venv/bin/python bench/ws_hotpath.py --root /path/to/other    # another checkout of the project

What it measures: the real ASGI application (origin check, session, consumer) with SOCKETS
WebSocket clients (Channels' WebsocketCommunicator, no network) subscribed to one job's topic
through the process hub and a real embedded broker; then EVENTS job events are handed to the
hub's dispatch one at a time, each followed by the flusher draining every socket, as a hub does
for a broker read carrying one message. The figure is the process CPU time (time.process_time,
so other processes on a loaded machine count little) divided by EVENTS x SOCKETS, best of REPEAT
rounds. It includes the communicator's queue (the same in both versions), not daphne's framing:
compare two checkouts on the same machine, back to back.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--sockets", type=int, default=100)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--calls", action="store_true",
                        help="also count Python function calls per delivery in one more round (cProfile): "
                             "a figure the machine's load does not change")
    args = parser.parse_args()
    sys.path.insert(0, str(args.root))
    os.chdir(args.root)
    workdir = tempfile.mkdtemp(prefix="ws-hotpath-")
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    os.environ["DATABASE_URL"] = f"sqlite:///{workdir}/db.sqlite3"
    os.environ["DJANGO_LOG_LEVEL"] = "WARNING"

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from notifications.broker import BrokerConfig, BrokerThread

    broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=0, close_timeout=2.0)).start()
    from django.test.utils import override_settings

    try:
        with override_settings(NOTIFICATIONS={"BROKER_URL": broker.url, "SESSION_RECHECK_SECONDS": 3600}):
            figures = asyncio.run(measure(args))
    finally:
        broker.stop()
    figures, calls = figures
    per = [f * 1e6 for f in figures]
    result = {
        "root": str(args.root), "sockets": args.sockets, "events": args.events,
        "cpu_per_delivery_us": {"best": round(min(per), 2), "median": round(statistics.median(per), 2),
                                "rounds": [round(p, 2) for p in per]},
    }
    if calls is not None:
        result["python_calls_per_delivery"] = round(calls, 2)
    print(json.dumps(result))


async def measure(args) -> list[float]:
    from channels.db import database_sync_to_async
    from django.contrib.auth import get_user_model

    from notifications import consumers, hub as hub_module
    from notifications.codec import Frame
    from tests.integration.stomp_ws_support import WsStomp, make_job, session_cookie

    def setup():
        user = get_user_model().objects.create_user("bench")
        return user, make_job(user, name="bench"), session_cookie(user)

    user, job, cookie = await database_sync_to_async(setup)()
    destination = f"/topic/jobs.{job.pk}"
    clients = []
    for _ in range(args.sockets):
        client = WsStomp(cookie)
        assert await client.open()
        assert (await client.connect()).command == "CONNECTED"
        await client.subscribe(destination, receipt="r")
        await client.next_message()
        assert (await client.next_frame()).command == "RECEIPT"
        clients.append(client)
    hub = hub_module.current_hub()
    [sub_id] = [s.sub_id for s in hub._by_sub_id.values() if s.destination == destination]
    flusher = consumers._flusher()

    def frame(seq: int) -> Frame:
        body = json.dumps({
            "type": "job", "id": str(job.pk), "seq": seq, "status": "RUNNING", "final": False,
            "owner_id": user.pk, "progress": {"done": seq, "total": None, "percent": None}, "message": f"s {seq}",
        }).encode()
        return Frame("MESSAGE", (
            ("subscription", sub_id), ("destination", destination), ("message-id", str(seq)),
            ("content-type", "application/json"), ("content-length", str(len(body))),
        ), body)

    rounds = []
    calls = None
    seq = 0
    for n_round in range(args.repeat + (1 if args.calls else 0)):
        profiling = n_round == args.repeat
        frames = [frame(seq + n + 1) for n in range(args.events)]
        seq += args.events
        if profiling:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
        started = time.process_time()
        for item in frames:
            hub._dispatch(item)
            while flusher.ready or (flusher.task is not None and not flusher.task.done()):
                await asyncio.sleep(0)
        if profiling:
            profiler.disable()
            calls = pstats.Stats(profiler).total_calls / (args.events * args.sockets)
        else:
            rounds.append((time.process_time() - started) / (args.events * args.sockets))
        for client in clients:  # discard what the sockets were sent, outside the timing
            queue = client.comm.output_queue
            delivered = queue.qsize()
            while not queue.empty():
                queue.get_nowait()
            assert delivered == args.events, f"a socket got {delivered} messages of {args.events}"
    for client in clients:
        await client.close()
    await hub_module.shutdown()
    return rounds, calls


if __name__ == "__main__":
    main()
