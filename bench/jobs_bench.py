"""Jobs per second: this project's `jobworker` against django-tasks-db's `db_worker`, side by side.

    .venv/bin/python bench/jobs_bench.py                      # SQLite and PostgreSQL, 1 and 2 workers
    .venv/bin/python bench/jobs_bench.py --dbs sqlite --jobs 500 --no-write

For each database (a fresh SQLite file; a fresh PostgreSQL database `bench_jobs_<pid>`, dropped
after the run, so concurrent runs never share or drop each other's), both
backends run on the same database with the same settings (bench/jobs_bench_settings.py:
DEBUG off, persistent connections): N no-op jobs are enqueued through django.tasks, then 1 or
2 worker processes run them until the queue is empty (ours: `jobworker --burst --concurrency 1
--no-wakeup`; theirs: `db_worker --batch --interval 0`). Throughput is N divided by the time
from the first job's start to the last job's finish (from the rows, so process start-up is
not counted; our rows' started_at is when a slot really started the task, not the claim, so
prefetching is not flattered). Our worker runs with the default JOBS PREFETCH / PREFETCH_SECONDS
and publishes every event to the broker; logging is WARNING for both. Every job must run exactly once: the no-op appends its number to a file and the
benchmark counts each number. Finally one job calls jobs.progress.report_progress() many times
and reports the average cost of one call.

Run by hand, never in tests. Figures are disturbed by whatever else runs on the machine.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SETTINGS = "bench.jobs_bench_settings"
DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"
# One database per run (and dropped after it): two people benchmarking at once must not
# drop each other's database.
BENCH_PG_DB = f"bench_jobs_{os.getpid()}"
# Targets from issue 3.
TARGET_RATIO = 2.0
TARGET_PROGRESS_US = 10.0


# ----------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="no-op jobs per cell (default 2000)")
    parser.add_argument("--dbs", default="sqlite,postgres", help="comma-separated: sqlite,postgres")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--postgres-url", default=os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES),
                        help="an admin URL of the PostgreSQL server (the bench creates its own database)")
    parser.add_argument("--broker-url", default=os.environ.get("STOMP_BROKER_URL", "stomp://guest:guest@127.0.0.1:61613"),
                        help="the STOMP broker our worker publishes events to (default RabbitMQ on 61613)")
    parser.add_argument("--progress-calls", type=int, default=200_000)
    parser.add_argument("--concurrency", default="1,4",
                        help="jobworker --concurrency values to run (default 1,4; db_worker runs one task at a time)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of every cell, interleaved; the table shows the median (default 3)")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS-jobs.md")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:
        phase(args)
        return

    results = []
    for db in [d.strip() for d in args.dbs.split(",") if d.strip()]:
        with tempfile.TemporaryDirectory(prefix="jobs-bench-") as tmp:
            if db == "sqlite":
                url = f"sqlite:///{tmp}/bench.sqlite3"
            elif db == "postgres":
                url = fresh_postgres(args.postgres_url)
            else:
                raise SystemExit(f"unknown database {db!r}: use sqlite or postgres")
            print(f"== {db}: {url}", file=sys.stderr, flush=True)
            out = subprocess.run(
                [PYTHON, __file__, "--phase", db, "--database-url", url, "--jobs", str(args.jobs),
                 "--workers", args.workers, "--broker-url", args.broker_url, "--concurrency", args.concurrency, "--repeat", str(args.repeat),
                 "--progress-calls", str(args.progress_calls)],
                cwd=ROOT, env=phase_env(url, args.broker_url, tmp), capture_output=True, text=True, timeout=3600,
            )
            sys.stderr.write(out.stderr)
            if db == "postgres":
                drop_postgres(args.postgres_url)
            if out.returncode != 0:
                raise SystemExit(f"{db} phase failed ({out.returncode})")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    table = render(results, args.jobs)
    print(table)
    if not args.no_write:
        write_results(table, args)


def phase_env(url: str, broker_url: str, tmp: str) -> dict:
    env = dict(os.environ)
    env.update({
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "DATABASE_URL": url,
        "STOMP_BROKER_URL": broker_url,
        "DJANGO_VAR_DIR": tmp,
        "PYTHONPATH": str(ROOT),
    })
    return env


def fresh_postgres(admin_url: str) -> str:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_PG_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_PG_DB}")
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{BENCH_PG_DB}"


def drop_postgres(admin_url: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_PG_DB} WITH (FORCE)")


# ----------------------------------------------------------------------------- one database


def phase(args) -> None:
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    runs = []
    # Interleaved repetitions: load from other processes drifts, and each cell sees a share of it.
    for _ in range(max(1, args.repeat)):
        for workers in [int(w) for w in args.workers.split(",")]:
            for concurrency in [int(c) for c in args.concurrency.split(",")]:
                runs.append(run_cell("jobworker", workers, args, concurrency))
            runs.append(run_cell("db_worker", workers, args))
    cells = []
    for key in dict.fromkeys((r["backend"], r["workers"], r["concurrency"]) for r in runs):
        same = [r for r in runs if (r["backend"], r["workers"], r["concurrency"]) == key]
        rates = sorted(r["jobs_per_s"] or 0.0 for r in same)
        median = same[0] | {"jobs_per_s": rates[len(rates) // 2], "all_jobs_per_s": [r["jobs_per_s"] for r in same]}
        median["exactly_once"] = all(r["exactly_once"] for r in same)
        median["errors"] = [e for r in same for e in r["errors"]]
        cells.append(median)
    probe = progress_probe(args)
    print(json.dumps({"db": args.phase, "cells": cells, "progress": probe}))


def worker_command(backend: str, concurrency: int = 1) -> list[str]:
    if backend == "jobworker":
        return [PYTHON, "manage.py", "jobworker", "--burst", "--concurrency", str(concurrency), "--queue", "default",
                "--no-wakeup", "--poll-interval", "0.05"]
    return [PYTHON, "manage.py", "db_worker", "--batch", "--backend", "tasksdb", "--queue-name", "default",
            "--interval", "0", "--no-startup-delay", "--no-reload", "-v", "0"]


def clear() -> None:
    from django_tasks_db.models import DBTaskResult

    from jobs.models import Job

    Job.objects.all().delete()
    DBTaskResult.objects.all().delete()


def run_cell(backend: str, workers: int, args, concurrency: int = 1) -> dict:
    from django.db import connection, transaction

    from bench.jobs_bench_tasks import noop, noop_tasksdb

    clear()
    runlog = Path(os.environ["DJANGO_VAR_DIR"]) / f"runlog-{backend}-{workers}-{concurrency}.txt"
    runlog.unlink(missing_ok=True)
    task = noop if backend == "jobworker" else noop_tasksdb
    started = time.perf_counter()
    with transaction.atomic():
        for i in range(args.jobs):
            task.enqueue(i)
    enqueue_s = time.perf_counter() - started
    if backend == "jobworker":
        from notifications.publisher import get_publisher

        get_publisher().flush(30)  # the enqueue events are sent before the workers start
    connection.close()

    env = dict(os.environ, BENCH_RUNLOG=str(runlog))
    wall_start = time.perf_counter()
    procs = [
        subprocess.Popen(worker_command(backend, concurrency), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(workers)
    ]
    errors = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        if p.returncode != 0:
            errors.append(err.decode(errors="replace")[-2000:])
    wall_s = time.perf_counter() - wall_start

    window, statuses, per_worker = measure(backend)
    counts = collections.Counter(int(line) for line in runlog.read_text().split()) if runlog.exists() else {}
    ran_once = sum(1 for i in range(args.jobs) if counts.get(i) == 1)
    ran_twice = sum(1 for c in counts.values() if c > 1)
    cell = {
        "backend": backend,
        "workers": workers,
        "concurrency": concurrency,
        "jobs": args.jobs,
        "enqueue_s": round(enqueue_s, 3),
        "window_s": round(window, 3),
        "wall_s": round(wall_s, 3),
        "jobs_per_s": round(args.jobs / window, 1) if window > 0 else None,
        "statuses": statuses,
        "per_worker": per_worker,
        "ran_exactly_once": ran_once,
        "ran_more_than_once": ran_twice,
        "exactly_once": ran_once == args.jobs and ran_twice == 0 and statuses.get("SUCCESSFUL") == args.jobs,
        "errors": errors,
    }
    print(f"   {backend} x{workers} (concurrency {concurrency}): {cell['jobs_per_s']} jobs/s, exactly once: {cell['exactly_once']}",
          file=sys.stderr, flush=True)
    return cell


def measure(backend: str) -> tuple[float, dict, list[int]]:
    from django.db.models import Count, Max, Min

    if backend == "jobworker":
        from jobs.models import Job as Model

        worker_field = "worker_id"
    else:
        from django_tasks_db.models import DBTaskResult as Model

        worker_field = None
    span = Model.objects.aggregate(first=Min("started_at"), last=Max("finished_at"))
    window = (span["last"] - span["first"]).total_seconds() if span["first"] and span["last"] else 0.0
    statuses = {row["status"]: row["n"] for row in Model.objects.values("status").annotate(n=Count("pk"))}
    if worker_field:
        per_worker = sorted(
            (row["n"] for row in Model.objects.values(worker_field).annotate(n=Count("pk"))), reverse=True
        )
    else:
        per_worker = sorted(
            collections.Counter(tuple(ids)[-1] if ids else "" for ids in Model.objects.values_list("worker_ids", flat=True)).values(),
            reverse=True,
        )
    return window, statuses, per_worker


def progress_probe(args) -> dict:
    from bench.jobs_bench_tasks import progress_probe as probe_task
    from django.db import connection

    from jobs.models import Job

    clear()
    result = probe_task.enqueue(args.progress_calls)
    connection.close()
    subprocess.run(worker_command("jobworker"), cwd=ROOT, env=dict(os.environ), check=True,
                   stdout=subprocess.DEVNULL, timeout=600)
    job = Job.objects.get(pk=result.id)
    if job.status != "SUCCESSFUL":
        return {"error": f"{job.status}: {job.error_message}"}
    return job.result


# ----------------------------------------------------------------------------- output


def render(results: list[dict], jobs: int) -> str:
    lines = [
        f"{jobs} no-op jobs per run; jobs/s = jobs / (last finish - first start), the median of the runs;",
        "one process per worker;",
        "'c1' is `jobworker --concurrency 1` (one task at a time, like db_worker), 'c4' is --concurrency 4.",
        "",
    ]
    concurrencies = sorted({c["concurrency"] for r in results for c in r["cells"] if c["backend"] == "jobworker"})
    head = "| database | workers | " + " | ".join(f"jobworker c{c} jobs/s" for c in concurrencies)
    head += " | db_worker jobs/s | " + " | ".join(f"ratio c{c}" for c in concurrencies) + " | exactly once (all runs) |"
    lines += [head, "|" + "---|" * (4 + 2 * len(concurrencies))]
    verdicts = []
    for result in results:
        for workers in sorted({c["workers"] for c in result["cells"]}):
            ours = {c["concurrency"]: c for c in result["cells"] if c["backend"] == "jobworker" and c["workers"] == workers}
            theirs = next((c for c in result["cells"] if c["backend"] == "db_worker" and c["workers"] == workers), None)
            ratios = []
            for conc in concurrencies:
                o = ours.get(conc)
                ok = o and theirs and o["jobs_per_s"] and theirs["jobs_per_s"]
                ratios.append(o["jobs_per_s"] / theirs["jobs_per_s"] if ok else None)
            if ratios and ratios[0] is not None:
                verdicts.append(ratios[0] >= TARGET_RATIO)
            once = all(c["exactly_once"] for c in [*ours.values(), theirs] if c)
            lines.append(
                f"| {result['db']} | {workers} | "
                + " | ".join(str(ours[c]["jobs_per_s"]) if c in ours else "-" for c in concurrencies)
                + f" | {theirs['jobs_per_s'] if theirs else '-'} | "
                + " | ".join(f"{r:.2f}x" if r is not None else "-" for r in ratios)
                + f" | {'yes' if once else 'NO'} |"
            )
    lines.append("")
    for result in results:
        p = result["progress"]
        if "ns_per_call" in p:
            us = p["ns_per_call"] / 1000
            lines.append(
                f"{result['db']}: report_progress() inside a running job: {us:.3f} µs per call "
                f"(average of {p['calls']} calls; the empty loop alone is {p['loop_ns_per_iteration'] / 1000:.3f} µs) "
                f"- target < {TARGET_PROGRESS_US:g} µs: {'met' if us < TARGET_PROGRESS_US else 'MISSED'}"
            )
        else:
            lines.append(f"{result['db']}: progress probe failed: {p.get('error')}")
    lines.append("")
    lines.append(f"Target >= {TARGET_RATIO:g}x django-tasks-db in every cell (like for like, c{concurrencies[0] if concurrencies else 1}): "
                 + ("met" if verdicts and all(verdicts) else f"MISSED in {verdicts.count(False)} of {len(verdicts)} cell(s)"))
    lines.append("")
    lines.append("Every run (jobs/s), then the first run's details (enqueue time, wall time incl. start-up, jobs per worker):")
    for result in results:
        for c in result["cells"]:
            lines.append(
                f"  {result['db']:8} {c['backend']:9} x{c['workers']} c{c['concurrency']}: runs {c['all_jobs_per_s']}; "
                f"enqueue {c['enqueue_s']} s, wall {c['wall_s']} s, per worker {c['per_worker']}, statuses {c['statuses']}"
                + (f", ERRORS: {c['errors']}" if c["errors"] else "")
            )
    return "\n".join(lines)


def write_results(table: str, args) -> None:
    import platform

    path = ROOT / "bench" / "RESULTS-jobs.md"
    load = os.getloadavg()
    header = (
        "# Jobs benchmark results\n\n"
        "Produced by `bench/jobs_bench.py` (run by hand; see its docstring for the method).\n\n"
        f"- Run at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; load average at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}.\n"
        "- The machine was shared with other people's work while this ran: treat the figures as rough.\n"
        f"- Command: `{' '.join([Path(PYTHON).name, 'bench/jobs_bench.py', *sys.argv[1:]])}`\n\n"
    )
    path.write_text(header + "```\n" + table + "\n```\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
