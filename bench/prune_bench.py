"""Claims while 100,000 finished jobs are pruned: does retention stall the workers?

    .venv/bin/python bench/prune_bench.py                  # SQLite and PostgreSQL, 100,000 jobs
    .venv/bin/python bench/prune_bench.py --dbs sqlite --old-jobs 20000

For each database (a fresh SQLite file; a fresh PostgreSQL database `bench_prune_<pid>`, dropped
after the run): 100,000 finished jobs older than the retention limit are inserted (each with a
result and a few log lines, like real rows), --ready no-op jobs are queued, and the tables are
ANALYZEd. Then two claimer
processes (real jobs.worker.Worker loops, --concurrency 1, PREFETCH 0 so every job is its own
claim, no wake-ups) run jobs, and the time of every claim transaction is recorded (the worker's
_sync(): BEGIN, write the last outcome, claim the next job, COMMIT; on SQLite it includes the wait
for the write lock, which is what a prune could make longer). Phase "no prune": the claimers
alone for --seconds, from the moment both have claimed a job (start-up is not measured; make it
about as long as the prune, e.g. --seconds 85: the longest of a short phase is not comparable). Phase "prune": the same claimers while `manage.py prunejobs --older-than 7d`
deletes the 100,000 jobs with the default batch size and pause; claims are counted from the
prune's start to its end. Reported: claims, p50, p99 and the longest claim in each phase, the
prune's duration and rows per second, and the ratio of the longest claims (issue 11's target:
at most 2).

Run by hand, never in tests. Figures are disturbed by whatever else runs on the machine: the
load average is printed with them.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PYTHON = sys.executable
SETTINGS = "bench.prune_bench_settings"
DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"
TARGET_RATIO = 2.0


def env_for(db_url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": db_url, "DJANGO_SETTINGS_MODULE": SETTINGS, "PYTHONPATH": str(ROOT),
            "DJANGO_LOG_LEVEL": "WARNING", "STOMP_BROKER_URL": "stomp://127.0.0.1:9"}


def run(db_url: str, *args: str) -> str:
    done = subprocess.run([PYTHON, *args], cwd=ROOT, env=env_for(db_url), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# ----------------------------------------------------------------------------- roles (subprocesses)


def role_seed(old_jobs: int, ready: int) -> None:
    import django

    django.setup()
    from datetime import timedelta

    from django.utils import timezone

    from jobs.models import Job, JobStatus

    finished = timezone.now() - timedelta(days=8)
    log = [{"n": n, "at": finished.isoformat(), "text": f"step {n} of 5 done"} for n in range(1, 6)]
    for start in range(0, old_jobs, 5000):
        Job.objects.bulk_create([
            Job(task_path="tests.jobs_tasks.add", args=[1, 2], status=JobStatus.SUCCESSFUL, result=3, attempts=1,
                progress_done=5, progress_total=5, message="done", log=log, log_count=5,
                enqueued_at=finished - timedelta(seconds=2), started_at=finished - timedelta(seconds=1),
                finished_at=finished, worker_ids=["seed"])
            for _ in range(min(5000, old_jobs - start))
        ])
    for start in range(0, ready, 5000):
        Job.objects.bulk_create([Job(task_path="tests.jobs_tasks.add", args=[1, 2]) for _ in range(min(5000, ready - start))])
    # Statistics as a live database has them (autovacuum, or SQLite's optimize): a freshly loaded
    # table without them gets plans no production claim query would.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def role_claimer(out: str, stop_file: str, name: str) -> None:
    import threading

    import django

    django.setup()
    from jobs.worker import Worker

    timings: list[tuple[float, float]] = []

    class TimedWorker(Worker):
        def _sync(self, limit, start_now=0):
            began = time.perf_counter()
            at = time.time()
            claimed = super()._sync(limit, start_now)
            if limit:
                timings.append((at, time.perf_counter() - began))
                if claimed and not os.path.exists(out + ".ready"):
                    Path(out + ".ready").touch()  # warmed up: the driver starts the clock
            return claimed

    worker = TimedWorker(concurrency=1, poll_interval=0.05, wakeups=False, schedules=False, worker_id=name)
    thread = threading.Thread(target=worker.run)
    thread.start()
    while not os.path.exists(stop_file):
        time.sleep(0.1)
    worker.stop(force=True)
    thread.join(60)
    Path(out).write_text(json.dumps(timings))


# ----------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["seed", "claimer"])
    parser.add_argument("--old-jobs", type=int, default=100_000)
    parser.add_argument("--ready", type=int, default=200_000, help="no-op jobs queued for the claimers")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the no-prune phase")
    parser.add_argument("--out")
    parser.add_argument("--stop-file")
    parser.add_argument("--name", default="claimer")
    parser.add_argument("--dbs", default="sqlite,postgres")
    parser.add_argument("--batch", type=int, help="JOBS['PRUNE_BATCH'] for the prune (default: the setting's default)")
    parser.add_argument("--pause", type=float, help="JOBS['PRUNE_BATCH_PAUSE'] for the prune (default: the default)")
    parser.add_argument("--postgres-url", default=os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES))
    args = parser.parse_args()
    overrides = {k: v for k, v in (("PRUNE_BATCH", args.batch), ("PRUNE_BATCH_PAUSE", args.pause)) if v is not None}
    if overrides:
        os.environ["PRUNE_BENCH_JOBS"] = json.dumps(overrides)
    if args.role == "seed":
        return role_seed(args.old_jobs, args.ready)
    if args.role == "claimer":
        return role_claimer(args.out, args.stop_file, args.name)

    from jobs.conf import DEFAULTS

    print(f"prune batch {args.batch or DEFAULTS['PRUNE_BATCH']} rows, pause "
          f"{DEFAULTS['PRUNE_BATCH_PAUSE'] if args.pause is None else args.pause} s")
    print(f"load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    rows = []
    for db in args.dbs.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            if db == "sqlite":
                url = f"sqlite:///{tmp_path / 'prune.sqlite3'}"
                rows.append((db, one_run(url, tmp_path, args)))
            else:
                import psycopg

                name = f"bench_prune_{os.getpid()}"
                admin = psycopg.connect(args.postgres_url, autocommit=True)
                admin.execute(f'CREATE DATABASE "{name}"')
                try:
                    rows.append((db, one_run(args.postgres_url.rsplit("/", 1)[0] + "/" + name, tmp_path, args)))
                finally:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    admin.close()
    print(f"load average after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    print()
    print("| database | phase | claims | p50 ms | p99 ms | longest ms |")
    print("|---|---|---:|---:|---:|---:|")
    for db, r in rows:
        for phase in ("no prune", "during the prune"):
            c = r[phase]
            print(f"| {db} | {phase} | {len(c)} | {percentile(c, 0.5):.1f} | {percentile(c, 0.99):.1f} | {max(c):.1f} |")
    print()
    for db, r in rows:
        ratio = max(r["during the prune"]) / max(r["no prune"])
        print(f"{db}: {r['prune']}; longest claim during / without the prune: {ratio:.2f} (target <= {TARGET_RATIO:g})")


def one_run(url: str, tmp: Path, args) -> dict:
    run(url, "manage.py", "migrate", "-v0")
    run(url, __file__, "--role", "seed", "--old-jobs", str(args.old_jobs), "--ready", str(args.ready))
    outs = [tmp / f"claims-{n}.json" for n in range(2)]
    stop_file = tmp / "stop"
    claimers = [subprocess.Popen([PYTHON, __file__, "--role", "claimer", "--out", str(out), "--stop-file", str(stop_file),
                                  "--name", f"claimer-{n}"], cwd=ROOT, env=env_for(url)) for n, out in enumerate(outs)]
    try:
        # Start-up (Django, the first claims) is not measured: the phase without a prune begins
        # once both claimers have claimed a job.
        deadline = time.time() + 300
        while not all(Path(f"{out}.ready").exists() for out in outs) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(args.seconds)
        prune_start = time.time()
        printed = run(url, "manage.py", "prunejobs", "--older-than", "7d")
        prune_end = time.time()
    finally:
        stop_file.touch()
        for p in claimers:
            p.wait(120)
    claims = [tuple(c) for out in outs for c in json.loads(out.read_text())]
    before = [d * 1000 for at, d in claims if prune_start - args.seconds <= at < prune_start]
    during = [d * 1000 for at, d in claims if prune_start <= at <= prune_end]
    seconds = prune_end - prune_start
    return {"no prune": before, "during the prune": during,
            "prune": f"{args.old_jobs:,} jobs pruned in {seconds:.1f} s ({args.old_jobs / seconds:,.0f}/s) [{printed.strip()}]"}


if __name__ == "__main__":
    main()
