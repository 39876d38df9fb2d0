"""Fuzz the running embedded broker over sockets, by hand, with a well-behaved client's latency watched.

    .venv/bin/python bench/fuzz_broker.py --cases 50000 --seed 1 --concurrency 16

Starts ``python -m notifications.broker`` on a free port, plays the cases of
tests/chaos/broker_fuzz.py (each a function of seed and index: ``python -m
tests.chaos.broker_fuzz show --seed S --index I`` prints one), and prints Markdown and JSON:
cases by kind, ERROR answers, the broker alive and serving a new client, tracebacks in its log,
its RSS before and after, and the watcher's round-trip latency before (baseline) and during the
fuzzing, with messages lost. Figures go to bench/RESULTS-reliability.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.chaos.broker_fuzz import fuzz_broker  # noqa: E402
from tests.chaos.harness import free_port, wait_port  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--baseline", type=float, default=5.0, help="seconds of latency watched before fuzzing")
    args = parser.parse_args(argv)
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="fuzz-broker-")) / "broker.log"
    with open(log, "wb") as out:
        broker = subprocess.Popen([sys.executable, "-m", "notifications.broker", "--port", str(port),
                                   "--log-level", "WARNING"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port, 60, broker)
        result = fuzz_broker(broker, port, cases=args.cases, seed=args.seed, concurrency=args.concurrency,
                             baseline=args.baseline, log_path=log)
    finally:
        if broker.poll() is None:
            broker.terminate()
            broker.wait(15)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    w = result.watcher
    print(f"### Broker fuzz: {time.strftime('%Y-%m-%d %H:%M')} (commit {commit}, load {load})\n")
    print(f"{result.cases} cases (seed {args.seed}, concurrency {args.concurrency}) in {result.seconds} s; "
          f"by kind {result.by_kind}; answered with ERROR {result.answered_error}\n")
    print("| figure | value |\n|---|---|")
    print(f"| broker crashes | {0 if result.broker_alive else 1} (exit {result.broker_exit}) |")
    print(f"| serves a new client afterwards | {result.serves_new_client} |")
    print(f"| tracebacks in the broker's log | {result.internal_errors} |")
    print(f"| broker RSS before / after | {result.rss_before / 2**20:.1f} / {result.rss_after / 2**20:.1f} MiB |")
    print(f"| watcher messages sent / lost | {w.get('sent')} / {w.get('lost')} |")
    for phase in ("baseline", "fuzz"):
        p = w.get(phase, {})
        print(f"| watcher round trip, {phase} | p50 {p.get('p50_ms')} ms, p99 {p.get('p99_ms')} ms, "
              f"max {p.get('max_ms')} ms (n={p.get('n')}) |")
    print()
    print(json.dumps(result.as_dict()))
    log.unlink(missing_ok=True)
    return 0 if result.broker_alive and result.serves_new_client and not w.get("lost") else 1


if __name__ == "__main__":
    sys.exit(main())
