"""The long chaos runs, by hand: the product's processes under faults, counted by watchers.

Run from the repository root (figures go to bench/RESULTS-reliability.md):

    .venv/bin/python bench/chaos.py workers --db sqlite      # SIGKILL/SIGSTOP workers, kill after the final commit
    .venv/bin/python bench/chaos.py workers --db postgres    # the same on PostgreSQL (TEST_POSTGRES_URL)
    .venv/bin/python bench/chaos.py outages                  # broker kill -9 + restart, daphne restarts
    .venv/bin/python bench/chaos.py all --db sqlite --jobs 400 --worker-kills 40

Every count of faults is exact (each is injected once, spaced by --interval seconds, in an order
shuffled by --seed); the run then waits for every job to be final and the watchers to settle,
and prints the targets (0 jobs lost, 0 notifications lost, 0 watchers on a stale state, 0
duplicated final states, 0 broker crashes) with the at-least-once re-runs, as Markdown and JSON.
The machinery is tests/chaos/harness.py, shared with the short runs of tests/chaos.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.chaos.harness import ChaosConfig, ChaosRun, Outcome  # noqa: E402

PRESETS = {
    # Workers killed and frozen while jobs run; some killed right after a final commit.
    # Jobs of 2 s, so that the work outlasts the faults and most kills hit a busy worker.
    "workers": dict(jobs=300, steps=10, step_delay=0.2, workers=3, worker_kills=30, worker_stops=8, finish_kills=10,
                    interval=1.5),
    # The broker killed and restarted (with jobs and notifications created while it is down),
    # and daphne restarted, while workers keep running.
    "outages": dict(jobs=200, workers=3, worker_kills=0, worker_stops=0, broker_restarts=6, web_restarts=4,
                    outage_jobs=10, outage_notifications=25, interval=3.0),
    # Everything at once.
    "all": dict(jobs=300, workers=3, worker_kills=20, worker_stops=5, finish_kills=5, broker_restarts=4,
                web_restarts=3, outage_jobs=10, outage_notifications=25, interval=2.0),
}


def fault_counts(outcome: Outcome) -> str:
    """What was injected, by kind (from the run's notes)."""
    kinds = {
        "SIGKILL of a busy worker": lambda w: w.startswith("SIGKILL") and "busy)" in w,
        "SIGKILL of an idle worker": lambda w: w.startswith("SIGKILL") and "idle)" in w,
        "SIGKILL right after a final commit": lambda w: "was final, before its notification" in w,
        "finish-kill not injected": lambda w: "not injected" in w,
        "SIGSTOP": lambda w: w.startswith("SIGSTOP"),
        "broker kill -9": lambda w: w == "kill -9 broker",
        "daphne restart": lambda w: w == "SIGTERM daphne",
    }
    counts = {name: sum(1 for _, what in outcome.faults if test(what)) for name, test in kinds.items()}
    return ", ".join(f"{n} {name}" for name, n in counts.items() if n) or "none"


def markdown(outcome: Outcome, args, commit: str, load: str) -> str:
    cfg = outcome.config
    lines = [
        f"### {args.scenario} on {cfg['db']}: {time.strftime('%Y-%m-%d %H:%M')} (commit {commit}, load {load})",
        "",
        "Parameters: " + ", ".join(f"{k}={cfg[k]}" for k in (
            "jobs", "steps", "step_delay", "max_attempts", "workers", "concurrency", "worker_kills", "worker_stops",
            "finish_kills", "broker_restarts", "web_restarts", "outage_jobs", "outage_notifications", "interval",
            "seed")),
        "",
        "| target | figure |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in outcome.targets().items()]
    lines += [
        "",
        f"- final states: {outcome.final_states}",
        f"- executions: {outcome.executions} for {outcome.jobs} jobs; {outcome.jobs_rerun} jobs re-run "
        f"({outcome.extra_runs} extra runs, {outcome.completed_runs_extra} extra runs that reached the end)",
        f"- notification rows missing {outcome.notification_rows_missing}, duplicated "
        f"{outcome.notification_rows_duplicated}; not shown by any WebSocket {outcome.ws_notifications_missed}; "
        f"not received by the raw-topic stomp.py client {outcome.stomp_notifications_missed} "
        f"({outcome.outage_notifications} created during broker outages)",
        f"- stale per watcher: {outcome.stale}",
        f"- never shown by a list watcher: {outcome.unseen}",
        f"- final event never received: {outcome.final_missing}",
        f"- same final state delivered again (dropped by seq): {outcome.final_repeats}",
        f"- watcher reconnects: {outcome.reconnects}",
        f"- crashes: {[(c['process'], c['code']) for c in outcome.crashes]}",
        f"- faults injected in {outcome.seconds:.0f} s: {fault_counts(outcome)}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=sorted(PRESETS))
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs, database)")
    parser.add_argument("--json", type=Path, help="also write the outcome as JSON here")
    names = {f.name: f for f in fields(ChaosConfig)}
    for name, f in names.items():
        if name == "db":
            continue
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(f.default), default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("stomp").setLevel(logging.WARNING)
    values = dict(PRESETS[args.scenario], db=args.db)
    for name in names:
        value = getattr(args, name, None)
        if value is not None and name != "db":
            values[name] = value
    config = ChaosConfig(**values)
    postgres = os.environ.get("TEST_POSTGRES_URL")
    if config.db == "postgres" and not postgres:
        parser.error("--db postgres needs TEST_POSTGRES_URL (e.g. postgres://postgres@127.0.0.1:5432/postgres)")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    run = ChaosRun(config, workdir, postgres_url=postgres)
    try:
        outcome = run.execute()
    except BaseException:
        print(run.logs(), file=sys.stderr)
        raise
    finally:
        run.close()
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"run folder: {workdir}", file=sys.stderr)
    print(markdown(outcome, args, commit, load))
    print()
    print(json.dumps(outcome.as_dict(), default=str))
    if args.json:
        args.json.write_text(json.dumps(outcome.as_dict(), default=str, indent=1))
    return 0 if not any(outcome.targets().values()) else 1


if __name__ == "__main__":
    sys.exit(main())
