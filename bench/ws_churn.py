"""WebSockets opened and closed many times against one daphne: does its memory stay flat?

    .venv/bin/python bench/ws_churn.py --sockets 10000 --every 500 --concurrency 10
    .venv/bin/python bench/ws_churn.py --sockets 3000 --trace 25      # tracemalloc diff at the end
    .venv/bin/python bench/ws_churn.py --arena-max 2 --trim           # allocator or leak?

The stack of the chaos soak (tests/chaos/harness.py: the embedded broker, daphne serving
project.asgi:application, a worker streaming two jobs' progress unless --no-stream, a logged-in
user), then page sockets as the soak opens them (tests/chaos/soak.py's ``_page``: CONNECT,
SUBSCRIBE /user/queue/notifications and /topic/jobs.<id>, both snapshots received, close),
``--concurrency`` at a time, ``--sockets`` in all. Every ``--every`` sockets it samples daphne's
RSS and asks daphne itself (SIGUSR2 to a probe this script installs in the daphne it starts)
for: objects the cyclic collector tracks, counted by type; the sizes of the WebSocket endpoint's
module structures (open sockets, sessions, the timer and flush sets, the hub's subscriptions
and listeners) and of daphne's connection table; asyncio tasks and threads; glibc's heap
(mallinfo2: bytes in use and free). ``--collect`` runs gc.collect() before each count, ``--trim``
malloc_trim(0) after it (RSS before and after are both reported), ``--trace N`` starts
tracemalloc (N frames) after the warm-up and prints the top allocation sites grown since, at the end.

A leak grows linearly with the sockets and shows in the object counts or the traced memory; an
allocator's growth levels off, and shrinks with malloc_trim or a lower MALLOC_ARENA_MAX.
Prints a Markdown table and JSON, for bench/RESULTS-reliability.md.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROBE_DIR = "WS_CHURN_PROBE_DIR"  # where daphne's probe reads requests and writes answers
# Types whose reference cycles --garbage shows (ours, then daphne's and Twisted's per connection).
CYCLES = ("notifications.consumers.StompConsumer", "notifications.hub.Mailbox",
          "notifications.codec.parser.FrameParser", "daphne.ws_protocol.WebSocketProtocol",
          "twisted.internet.tcp.Server", "socket.socket", "twisted.web.http.HTTPChannel",
          "daphne.http_protocol.WebRequest", "asyncio.queues.Queue", "autobahn.websocket.types.ConnectionRequest")

# ------------------------------------------------------------------- in daphne: the probe

_state: dict = {}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _libc():
    import ctypes

    libc = ctypes.CDLL("libc.so.6")

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc.mallinfo2.restype = MallInfo2
    return libc


def _heap() -> dict:
    info = _libc().mallinfo2()
    return {"arena": info.arena, "mmap": info.hblkhd, "in_use": info.uordblks, "free": info.fordblks}


def _structures(objects: list) -> dict:
    """Sizes of what the endpoint and daphne keep per socket (all should go back to the same)."""
    from notifications import consumers, hub as hub_module

    out: dict = {
        "consumers._open": len(consumers._open),
        "consumers._by_session": sum(len(group) for group in list(consumers._by_session.values())),
        "supervisor.consumers": sum(len(s.consumers) for s in list(consumers._supervisors.values())),
        "supervisor.hub_seen": sum(len(s.hub_seen) for s in list(consumers._supervisors.values())),
        "flusher.ready": sum(len(f.ready) for f in list(consumers._flushers.values())),
    }
    hub = hub_module.current_hub()
    if hub is not None:
        out["hub._subs"] = len(hub._subs)
        out["hub._by_sub_id"] = len(hub._by_sub_id)
        out["hub.listeners"] = sum(len(s.listeners) for s in hub._subs.values())
        out["hub._awaited"] = len(hub._awaited)
    cli = _state.get("cli")
    server = getattr(cli, "server", None)
    if server is not None:
        out["daphne.connections"] = len(server.connections)
    try:
        from twisted.internet import reactor

        loop = reactor._asyncioEventloop
        out["asyncio.tasks"] = len(asyncio.all_tasks(loop))
        # Pending timers by what they will call: asyncio's, and Twisted's (callLater).
        out["timers"] = dict(Counter(
            [f"asyncio {getattr(h._callback, '__qualname__', type(h._callback).__name__)}" for h in loop._scheduled]
            + [f"twisted {getattr(c.func, '__qualname__', type(c.func).__name__)}" for c in reactor.getDelayedCalls()]
        ))
    except Exception:
        pass
    import threading

    out["threads"] = threading.active_count()
    return out


def _name(o) -> str:
    return f"{type(o).__module__}.{type(o).__qualname__}"


def _cycles(garbage: list, names) -> dict:
    """For one garbage object of each named type: the shortest way back to itself through the
    garbage (a reference cycle it is part of), as the types along it, or None (it is garbage only
    because a cycle elsewhere holds it; then: the garbage objects that refer to it)."""
    import gc
    from collections import deque

    ids = {id(o): o for o in garbage}
    out = {}
    for name in names:
        start = next((o for o in garbage if _name(o) == name), None)
        if start is None:
            continue
        parent = {id(start): None}
        queue, found = deque([start]), None
        while queue and found is None:
            current = queue.popleft()
            for ref in gc.get_referents(current):
                if ref is start:
                    found = current
                    break
                if id(ref) in ids and id(ref) not in parent:
                    parent[id(ref)] = current
                    queue.append(ref)
        if found is None:
            out[name] = {"cycle": None, "held_by": sorted({_name(r) for r in gc.get_referrers(start) if id(r) in ids})}
            continue
        path, node = [], found
        while node is not None:
            path.append(_name(node))
            node = parent[id(node)]
        out[name] = {"cycle": list(reversed(path)) + [name]}
    return out


def _answer(request: dict) -> dict:
    import gc
    import tracemalloc

    out: dict = {"rss": _rss()}
    if request.get("garbage"):
        # What a full collection finds unreachable (cyclic garbage), by type, then freed; with
        # automatic collection off, that is all the cyclic garbage made since the last sample.
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            out["garbage"] = dict(Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage))
            out["cycles"] = _cycles(gc.garbage, request.get("cycles") or ())
            gc.garbage.clear()
        finally:
            gc.set_debug(0)
        out["collected"] = gc.collect()
    elif request.get("collect"):
        out["collected"] = gc.collect()
    objects = gc.get_objects()  # not the objects gc.freeze() set aside at startup (project/asgi.py)
    out["objects"] = len(objects)
    out["types"] = dict(Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objects))
    out["structures"] = _structures(objects)
    del objects
    out["heap"] = _heap()
    if request.get("trim"):
        _libc().malloc_trim(0)
        out["rss_trimmed"] = _rss()
        out["heap_trimmed"] = _heap()
    trace = int(request.get("trace") or 0)
    if trace and not tracemalloc.is_tracing():
        tracemalloc.start(trace)
        _state["baseline"] = tracemalloc.take_snapshot()
    elif tracemalloc.is_tracing():
        out["traced"] = tracemalloc.get_traced_memory()[0]
        if request.get("top"):
            ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
            snapshot = tracemalloc.take_snapshot().filter_traces(ignore)
            diff = snapshot.compare_to(_state["baseline"].filter_traces(ignore), "traceback")
            out["top"] = [
                {"size_diff": s.size_diff, "count_diff": s.count_diff,
                 "traceback": [f"{f.filename.replace(str(ROOT) + '/', '')}:{f.lineno}" for f in s.traceback]}
                for s in diff[: int(request["top"])]
            ]
    return out


def _on_probe(signum, frame) -> None:
    directory = Path(os.environ[PROBE_DIR])
    try:
        answer = _answer(json.loads((directory / "request.json").read_text()))
    except Exception as exc:  # the run reports it; daphne keeps serving
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    tmp = directory / "answer.tmp"
    tmp.write_text(json.dumps(answer))
    tmp.rename(directory / "answer.json")


def serve_daphne(args: list[str]) -> None:
    """Run daphne's command line with the probe installed (the bench's web process)."""
    from daphne.cli import CommandLineInterface

    signal.signal(signal.SIGUSR2, _on_probe)
    cli = _state["cli"] = CommandLineInterface()
    cli.run(args)


# ------------------------------------------------------------------------- the bench


def _run_class():
    from tests.chaos.harness import PYTHON, ChaosRun, wait_port, START_TIMEOUT

    class ChurnRun(ChaosRun):
        """The chaos harness's stack, its daphne started through this script (with the probe)."""

        arena_max: int = 0

        def env(self) -> dict[str, str]:
            env = super().env()
            env[PROBE_DIR] = str(self.dir / "probe")
            if self.arena_max:
                env["MALLOC_ARENA_MAX"] = str(self.arena_max)
            return env

        def start_web(self) -> None:
            (self.dir / "probe").mkdir(exist_ok=True)
            proc = self._spawn("web", [PYTHON, __file__, "--serve-daphne", "-b", "127.0.0.1", "-p", str(self.web_port),
                                       "-v", "0", "project.asgi:application"])
            wait_port(self.web_port, START_TIMEOUT, proc)

        def probe(self, **request) -> dict:
            return probe(self.procs["web"], self.dir / "probe", **request)

    return ChurnRun


def probe(proc: subprocess.Popen, directory: Path, timeout: float = 60.0, **request) -> dict:
    """Ask the probe of a daphne started with ``--serve-daphne`` (its PROBE_DIR is ``directory``).

    Request keys: ``collect`` (gc.collect() first), ``garbage`` (automatic gc off from now on;
    count what a full collection finds unreachable, by type, then free it), ``cycles`` (type
    names: a reference cycle through one garbage object of each), ``trim`` (malloc_trim(0)),
    ``trace`` (start tracemalloc with this many frames), ``top`` (tracemalloc sites grown since).
    """
    answer = directory / "answer.json"
    answer.unlink(missing_ok=True)
    (directory / "request.json").write_text(json.dumps(request))
    proc.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while not answer.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise TimeoutError(f"daphne's probe did not answer within {timeout} s")
        time.sleep(0.05)
    return json.loads(answer.read_text())


async def _churn(run, args, session: str, jobs: list[str], samples: list[dict]) -> list[str]:
    from tests.chaos.soak import _page

    errors: list[str] = []
    opened = 0
    started = time.monotonic()

    def sample() -> None:
        answer = run.probe(collect=args.collect, trim=args.trim, trace=args.trace if opened >= args.warmup else 0,
                           garbage=args.garbage, cycles=CYCLES if args.garbage else ())
        answer.update(sockets=opened, seconds=round(time.monotonic() - started, 1), errors=len(errors))
        samples.append(answer)
        line = (f"{opened:>6} sockets {answer['seconds']:>6.0f} s  RSS {answer['rss'] / 2**20:6.1f} MiB"
                f"  heap in use {answer['heap']['in_use'] / 2**20:6.1f} free {answer['heap']['free'] / 2**20:5.1f}"
                f"  objects {answer['objects']:>7}")
        if "rss_trimmed" in answer:
            line += f"  trimmed {answer['rss_trimmed'] / 2**20:6.1f}"
        if "traced" in answer:
            line += f"  traced {answer['traced'] / 2**20:6.2f}"
        if "garbage" in answer:
            line += f"  cyclic garbage {sum(answer['garbage'].values()):>7} objects"
        print(line, flush=True)

    sample()
    due = min(args.warmup, args.every) or args.every
    while opened < args.sockets:
        n = min(args.concurrency, args.sockets - opened)
        outcomes = await asyncio.gather(*(_page(run.web_port, session, jobs[(opened + i) % len(jobs)]) for i in range(n)),
                                        return_exceptions=True)
        errors += [f"{type(o).__name__}: {o}"[:200] for o in outcomes if isinstance(o, BaseException)]
        opened += n
        if opened >= due or opened == args.sockets:
            await asyncio.sleep(args.settle)
            sample()
            due = (opened // args.every + 1) * args.every
    return errors


def _types_grown(first: dict, last: dict, top: int) -> list[tuple[str, int, int]]:
    grown = [(name, last["types"].get(name, 0) - first["types"].get(name, 0), last["types"].get(name, 0))
             for name in set(first["types"]) | set(last["types"])]
    return sorted((g for g in grown if g[1]), key=lambda g: -abs(g[1]))[:top]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-daphne"]:
        serve_daphne(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=10000)
    parser.add_argument("--every", type=int, default=500, help="sample after this many sockets")
    parser.add_argument("--warmup", type=int, default=500, help="sockets before the figures start (and tracemalloc)")
    parser.add_argument("--concurrency", type=int, default=10, help="sockets open at once")
    parser.add_argument("--settle", type=float, default=1.5, help="seconds after a batch before sampling "
                        "(daphne reaps closed connections every second)")
    parser.add_argument("--no-stream", dest="stream", action="store_false",
                        help="no worker: the jobs stay queued and no event flows")
    parser.add_argument("--collect", action="store_true", help="gc.collect() in daphne before each sample")
    parser.add_argument("--trim", action="store_true", help="malloc_trim(0) in daphne after each sample")
    parser.add_argument("--garbage", action="store_true",
                        help="automatic gc off in daphne; each sample counts the cyclic garbage made since the last")
    parser.add_argument("--trace", type=int, default=0, help="tracemalloc frames (0: off), started after the warm-up")
    parser.add_argument("--top", type=int, default=15, help="allocation sites and types shown at the end")
    parser.add_argument("--arena-max", type=int, default=0, help="MALLOC_ARENA_MAX for daphne (0: glibc's default)")
    parser.add_argument("--db", default="sqlite", choices=["sqlite", "postgres"])
    args = parser.parse_args(argv)

    from tests.chaos.harness import ChaosConfig

    workdir = Path(tempfile.mkdtemp(prefix="ws-churn-"))
    run = _run_class()(ChaosConfig(db=args.db, jobs=2, workers=1, steps=72000, step_delay=0.05,
                                   worker_kills=0, worker_stops=0),
                       workdir, postgres_url=os.environ.get("TEST_POSTGRES_URL"))
    run.arena_max = args.arena_max
    samples: list[dict] = []
    try:
        run.setup()
        jobs = run.enqueue(2)
        run.start_broker()
        run.start_web()
        if args.stream:
            run.start_worker(0)
            run._wait_running()
        errors = asyncio.run(_churn(run, args, run.info["alice_session"], jobs, samples))
        final = run.probe(collect=True, trim=False, top=args.top)
        final.update(sockets=samples[-1]["sockets"], seconds=samples[-1]["seconds"], errors=len(errors))
        run.check_crashes()
        crashes = [c["name"] if "name" in c else str(c)[:80] for c in run.crashes]
    except BaseException:
        print(run.logs())
        raise
    finally:
        run.close()
        shutil.rmtree(workdir, ignore_errors=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n### WebSocket churn: {time.strftime('%Y-%m-%d %H:%M')} (commit {commit}, load {load})\n")
    print(f"{final['sockets']} sockets, {args.concurrency} at a time, in {final['seconds']} s; stream "
          f"{'on' if args.stream else 'off'}, collect {args.collect}, trim {args.trim}, "
          f"MALLOC_ARENA_MAX {args.arena_max or 'default'}; socket errors {final['errors']}, crashes {crashes}\n")
    print("| sockets | RSS MiB | heap in use MiB | heap free MiB | gc objects |" + (" RSS trimmed MiB |" if args.trim else "")
          + (" traced MiB |" if args.trace else ""))
    print("|---|---|---|---|---|" + ("---|" if args.trim else "") + ("---|" if args.trace else ""))
    for s in samples:
        row = (f"| {s['sockets']} | {s['rss'] / 2**20:.1f} | {s['heap']['in_use'] / 2**20:.1f} | "
               f"{s['heap']['free'] / 2**20:.1f} | {s['objects']} |")
        if args.trim:
            row += f" {s['rss_trimmed'] / 2**20:.1f} |"
        if args.trace:
            row += f" {s['traced'] / 2**20:.2f} |" if "traced" in s else " |"
        print(row)
    base = next((s for s in samples if s["sockets"] >= args.warmup), samples[0])
    after = [s for s in samples if s["sockets"] > base["sockets"]]
    if after:
        per = (samples[-1]["rss"] - base["rss"]) / max(1, samples[-1]["sockets"] - base["sockets"])
        print(f"\nRSS from {base['sockets']} to {samples[-1]['sockets']} sockets: {base['rss'] / 2**20:.1f} -> "
              f"{samples[-1]['rss'] / 2**20:.1f} MiB (peak {max(s['rss'] for s in after) / 2**20:.1f}), "
              f"{per:+.0f} bytes per socket")
    print("\nStructures at the end (after gc.collect()): " + ", ".join(
        f"{k} {v}" for k, v in final["structures"].items() if k != "timers"))
    print("Pending timers at the end: " + ", ".join(
        f"{k} {v}" for k, v in sorted(final["structures"].get("timers", {}).items(), key=lambda kv: -kv[1])))
    print(f"\nObject types grown since {base['sockets']} sockets (gc-tracked, end after gc.collect()):")
    for name, delta, total in _types_grown(base, final, args.top):
        print(f"  {delta:+7d}  {name} ({total})")
    if args.garbage:
        since = [s for s in samples if s["sockets"] > base["sockets"]]
        total = Counter()
        for s in since:
            total.update(s["garbage"])
        n = max(1, samples[-1]["sockets"] - base["sockets"])
        print(f"\nCyclic garbage per socket ({n} sockets, automatic gc off): {sum(total.values()) / n:.1f} objects")
        for name, count in total.most_common(args.top * 2):
            print(f"  {count / n:7.2f}  {name}")
        print("\nReference cycles (one object of each type, in the last sample's garbage):")
        for name, found in samples[-1].get("cycles", {}).items():
            if found["cycle"]:
                print(f"  {name}: " + " -> ".join(found["cycle"]))
            else:
                print(f"  {name}: in no cycle of its own; held by " + ", ".join(found["held_by"]))
    if final.get("top"):
        print(f"\ntracemalloc: top {len(final['top'])} sites grown since {args.warmup} sockets "
              f"(traced now {final['traced'] / 2**20:.2f} MiB):")
        for stat in final["top"]:
            print(f"  {stat['size_diff'] / 1024:+9.1f} KiB {stat['count_diff']:+7d} blocks  " + " <- ".join(
                reversed(stat["traceback"][-4:])))
    print()
    print(json.dumps({"args": vars(args), "samples": [{k: v for k, v in s.items() if k != "types"} for s in samples],
                      "final": {k: v for k, v in final.items() if k != "types"},
                      "types_grown": _types_grown(base, final, args.top), "errors": errors[:5]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
