"""A long soak of the whole stack with memory sampled, by hand.

    .venv/bin/python bench/chaos_soak.py --cycles 60 --sockets 50 --clients 50 --oversize 10

Each cycle opens and closes page-like WebSockets, STOMP clients and oversize-frame connections
while long jobs stream progress (tests/chaos/soak.py); the RSS of the broker, daphne and the
worker is sampled after each. Prints the per-cycle RSS in MiB and each process's peak growth
after the warm-up, as Markdown and JSON, for bench/RESULTS-reliability.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.chaos.soak import SoakConfig, soak  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(SoakConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = parser.parse_args(argv)
    config = SoakConfig(**{f.name: getattr(args, f.name) for f in fields(SoakConfig)})
    workdir = Path(tempfile.mkdtemp(prefix="chaos-soak-"))
    try:
        result = soak(config, workdir, postgres_url=os.environ.get("TEST_POSTGRES_URL"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"### Soak: {time.strftime('%Y-%m-%d %H:%M')} (commit {commit}, load {load})\n")
    print(f"{result.cycles} cycles in {result.seconds} s; per cycle {config.sockets} WebSockets, {config.clients} "
          f"STOMP clients, {config.oversize} oversize frames; warm-up {config.warmup} cycles\n")
    print("| process | RSS after warm-up | peak after | growth |\n|---|---|---|---|")
    for name, samples in result.rss.items():
        after = samples[config.warmup:]
        print(f"| {name} | {after[0] / 2**20:.1f} MiB | {max(after) / 2**20:.1f} MiB | "
              f"{result.growth.get(name, 0) / 2**20:+.1f} MiB |")
    print(f"\nsocket errors {len(result.socket_errors)}, client errors {result.client_errors}, oversize refused "
          f"{result.oversize_refused}, crashes {result.crashes}")
    print("RSS per cycle (MiB): " + "; ".join(
        f"{name} " + " ".join(f"{v / 2**20:.0f}" for v in samples) for name, samples in result.rss.items()))
    print()
    print(json.dumps(result.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
