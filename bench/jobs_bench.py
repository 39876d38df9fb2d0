"""Jobs end to end: this project's `jobworker` against django-tasks-db's `db_worker`, side by side.

    .venv/bin/python bench/jobs_bench.py                      # SQLite and PostgreSQL; 0, 10, 100 ms jobs; 1 and 2 workers
    .venv/bin/python bench/jobs_bench.py --dbs sqlite --durations 0 --jobs 500 --no-write

For each database (a fresh SQLite file; a fresh PostgreSQL database `bench_jobs_<pid>`, dropped
after the run, so concurrent runs never share or drop each other's), both backends run on the
same database with the same settings (bench/jobs_bench_settings.py: DEBUG off, persistent
connections). A cell: N jobs that sleep 0, 10 or 100 ms are enqueued through django.tasks, then 1
or 2 worker processes are started and run them until the queue is empty (ours: `jobworker
--burst --concurrency C --no-wakeup`; theirs: `db_worker --batch --interval 0`).

The headline is **end to end**: N divided by the time from the first enqueue to the last finish,
so enqueueing and the workers' start-up count. Ours enqueues with jobs.api.enqueue_many() (what a
user enqueueing many jobs at once would call: one multi-row INSERT); django-tasks-db has no bulk
enqueue, so its jobs are enqueued one by one in one transaction, as a user would. A separate
probe per database gives the enqueue rate of both ways for ours and of django-tasks-db. The
processing rate (first start to last finish, from the rows) is shown beside it. N is --jobs for
no-op jobs and about --work-seconds of serial work for the others (1,000 jobs of 10 ms, 100 of
100 ms).

Our worker publishes every job event to a broker of the benchmark's own (`manage.py stompbroker`
on a free port; never a shared one). Each cell also reports the load average while it ran, the
workers' CPU (share of a core per worker process), the broker's and the benchmark's own (the
enqueueing process), and which side was the bottleneck. Every job must run exactly once: each
job appends its number to a file and the benchmark counts each number. Finally one job calls
jobs.progress.report_progress() many times and reports the average cost of one call.

Run by hand, never in tests, from a tree that does not change while it runs (a checkout or an
exported copy: its worker processes start from the files as they are at each cell). Figures are
disturbed by whatever else runs on the machine.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
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
# A worker process using this share of one core or more is CPU-bound.
SATURATED = 0.85
RESULTS = ROOT / "bench" / "RESULTS-jobs.md"
BEGIN, END = "<!-- jobs_bench: begin (written by bench/jobs_bench.py) -->", "<!-- jobs_bench: end -->"


# ----------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="no-op jobs per cell (default 2000)")
    parser.add_argument("--durations", default="0,10,100", help="job durations in ms (default 0,10,100)")
    parser.add_argument("--work-seconds", type=float, default=10.0,
                        help="jobs of D ms per cell: about this much serial work (default 10 s), at most --jobs")
    parser.add_argument("--dbs", default="sqlite,postgres", help="comma-separated: sqlite,postgres")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--postgres-url", default=os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES),
                        help="an admin URL of the PostgreSQL server (the bench creates its own database)")
    parser.add_argument("--progress-calls", type=int, default=200_000)
    parser.add_argument("--concurrency", default="1",
                        help="jobworker --concurrency values to run (default 1, like db_worker; e.g. 1,4)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of every cell, interleaved; the table shows the median (default 3)")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS-jobs.md")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--broker-url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:
        phase(args)
        return

    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="jobs-bench-") as tmp:
        broker, broker_url = start_broker(tmp)
        try:
            for db in [d.strip() for d in args.dbs.split(",") if d.strip()]:
                if db == "sqlite":
                    url = f"sqlite:///{tmp}/bench-{db}.sqlite3"
                elif db == "postgres":
                    url = fresh_postgres(args.postgres_url)
                else:
                    raise SystemExit(f"unknown database {db!r}: use sqlite or postgres")
                print(f"== {db}: {url}", file=sys.stderr, flush=True)
                try:
                    out = subprocess.run(
                        [PYTHON, __file__, "--phase", db, "--database-url", url, "--jobs", str(args.jobs),
                         "--durations", args.durations, "--work-seconds", str(args.work_seconds),
                         "--workers", args.workers, "--broker-url", broker_url, "--concurrency", args.concurrency,
                         "--repeat", str(args.repeat), "--progress-calls", str(args.progress_calls)],
                        cwd=ROOT, env=phase_env(url, broker_url, tmp) | {"BENCH_BROKER_PID": str(broker.pid)},
                        capture_output=True, text=True, timeout=7200,
                    )
                finally:
                    if db == "postgres":
                        drop_postgres(args.postgres_url)
                sys.stderr.write(out.stderr)
                if out.returncode != 0:
                    raise SystemExit(f"{db} phase failed ({out.returncode})")
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        finally:
            broker.send_signal(signal.SIGTERM)
            try:
                broker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                broker.kill()
                broker.wait()
    load_after = os.getloadavg()
    table = render(results, args)
    print(table)
    if not args.no_write:
        write_results(table, args, load_before, load_after)


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(tmp: str) -> tuple[subprocess.Popen, str]:
    """The benchmark's own embedded broker on a free port (never the shared 61613)."""
    port = free_port()
    url = f"stomp://127.0.0.1:{port}"
    env = phase_env(f"sqlite:///{tmp}/broker.sqlite3", url, tmp)
    proc = subprocess.Popen([PYTHON, "manage.py", "stompbroker", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the benchmark's broker exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the benchmark's broker did not open port {port}")


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


def jobs_for(args, duration_ms: int) -> int:
    if duration_ms <= 0:
        return args.jobs
    return max(20, min(args.jobs, round(args.work_seconds * 1000 / duration_ms)))


def phase(args) -> None:
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    enqueue = enqueue_probe(args)
    runs = []
    durations = [int(d) for d in args.durations.split(",") if d.strip()]
    # Interleaved repetitions: load from other processes drifts, and each cell sees a share of it.
    for _ in range(max(1, args.repeat)):
        for duration in durations:
            for workers in [int(w) for w in args.workers.split(",")]:
                for concurrency in [int(c) for c in args.concurrency.split(",")]:
                    runs.append(run_cell("jobworker", workers, args, duration, concurrency))
                runs.append(run_cell("db_worker", workers, args, duration))
    cells = []
    for key in dict.fromkeys((r["backend"], r["duration_ms"], r["workers"], r["concurrency"]) for r in runs):
        same = [r for r in runs if (r["backend"], r["duration_ms"], r["workers"], r["concurrency"]) == key]
        same.sort(key=lambda r: r["e2e_jobs_per_s"] or 0.0)
        median = dict(same[len(same) // 2])
        median["all_e2e_jobs_per_s"] = [r["e2e_jobs_per_s"] for r in same]
        median["all_jobs_per_s"] = [r["jobs_per_s"] for r in same]
        median["exactly_once"] = all(r["exactly_once"] for r in same)
        median["errors"] = [e for r in same for e in r["errors"]]
        cells.append(median)
    probe = progress_probe(args)
    print(json.dumps({"db": args.phase, "enqueue": enqueue, "cells": cells, "progress": probe}))


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


def enqueue(backend: str, n: int, duration_ms: int, bulk: bool) -> float:
    """Enqueue n jobs in one transaction; the seconds it took."""
    from django.db import transaction

    from bench.jobs_bench_tasks import noop, noop_tasksdb
    from jobs.api import enqueue_many

    started = time.perf_counter()
    with transaction.atomic():
        if backend == "jobworker" and bulk:
            enqueue_many(noop, [(i, duration_ms) for i in range(n)])
        else:
            task = noop if backend == "jobworker" else noop_tasksdb
            for i in range(n):
                task.enqueue(i, duration_ms)
    return time.perf_counter() - started


def enqueue_probe(args) -> dict:
    """Jobs enqueued per second: ours one by one and with enqueue_many(), django-tasks-db one by one."""
    out = {}
    for name, backend, bulk in (("ours, one by one", "jobworker", False), ("ours, enqueue_many()", "jobworker", True),
                                ("django-tasks-db, one by one", "db_worker", False)):
        rates = []
        for _ in range(max(1, args.repeat)):
            clear()
            rates.append(args.jobs / enqueue(backend, args.jobs, 0, bulk))
        out[name] = round(statistics.median(rates), 1)
    clear()
    return out


class LoadSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.loads: list[float] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.loads.append(os.getloadavg()[0])
            self.stopped.wait(0.5)

    def stop(self) -> tuple[float, float]:
        self.stopped.set()
        self.join(2)
        loads = self.loads or [os.getloadavg()[0]]
        return round(statistics.fmean(loads), 1), round(max(loads), 1)


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def _broker_cpu() -> float | None:
    try:
        import psutil

        t = psutil.Process(int(os.environ["BENCH_BROKER_PID"])).cpu_times()
        return t.user + t.system
    except Exception:
        return None


def run_cell(backend: str, workers: int, args, duration_ms: int, concurrency: int = 1) -> dict:
    from django.db import connection

    n = jobs_for(args, duration_ms)
    clear()
    runlog = Path(os.environ["DJANGO_VAR_DIR"]) / f"runlog-{backend}-{workers}-{concurrency}-{duration_ms}.txt"
    runlog.unlink(missing_ok=True)
    sampler = LoadSampler()
    sampler.start()
    children0, self0, broker0 = _cpu(resource.getrusage(resource.RUSAGE_CHILDREN)), _cpu(resource.getrusage(resource.RUSAGE_SELF)), _broker_cpu()
    first_enqueue = time.time()
    enqueue_s = enqueue(backend, n, duration_ms, bulk=True)
    if backend == "jobworker":
        from notifications.publisher import get_publisher

        get_publisher().flush(30)  # the enqueue events are sent before the workers start
    connection.close()
    self1 = _cpu(resource.getrusage(resource.RUSAGE_SELF))

    env = dict(os.environ, BENCH_RUNLOG=str(runlog))
    wall_start = time.perf_counter()
    # Each worker's stderr goes to a file: a pipe read only after the first worker ended would
    # fill up with the second one's log lines and block it.
    logs = [runlog.with_suffix(f".worker{i}.log") for i in range(workers)]
    procs = [
        subprocess.Popen(worker_command(backend, concurrency), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                         stderr=open(log, "wb"))
        for log in logs
    ]
    errors = []
    for p, log in zip(procs, logs):
        try:
            p.wait(timeout=900)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        text = log.read_text(errors="replace")
        if p.returncode != 0 or "Traceback" in text:
            errors.append(f"exit {p.returncode}: {text[-2000:]}")
    wall_s = time.perf_counter() - wall_start
    workers_cpu = _cpu(resource.getrusage(resource.RUSAGE_CHILDREN)) - children0
    broker1 = _broker_cpu()
    load = sampler.stop()

    window, statuses, per_worker, last_finish = measure(backend)
    e2e = (last_finish - first_enqueue) if last_finish else None
    counts = collections.Counter(int(line) for line in runlog.read_text().split()) if runlog.exists() else {}
    ran_once = sum(1 for i in range(n) if counts.get(i) == 1)
    ran_twice = sum(1 for c in counts.values() if c > 1)
    span = (enqueue_s + wall_s)
    worker_share = round(workers_cpu / max(1e-6, wall_s) / workers, 2)
    cell = {
        "backend": backend,
        "duration_ms": duration_ms,
        "workers": workers,
        "concurrency": concurrency,
        "jobs": n,
        "enqueue_s": round(enqueue_s, 3),
        "enqueue_jobs_per_s": round(n / enqueue_s, 1),
        "window_s": round(window, 3),
        "e2e_s": round(e2e, 3) if e2e else None,
        "e2e_jobs_per_s": round(n / e2e, 1) if e2e else None,
        "wall_s": round(wall_s, 3),
        "jobs_per_s": round(n / window, 1) if window > 0 else None,
        "load": load,
        "worker_cpu_share": worker_share,
        "enqueuer_cpu_share": round((self1 - self0) / max(1e-6, enqueue_s), 2),
        "broker_cpu_share": round((broker1 - broker0) / max(1e-6, span), 2) if broker0 is not None and broker1 is not None else None,
        "statuses": statuses,
        "per_worker": per_worker,
        "ran_exactly_once": ran_once,
        "ran_more_than_once": ran_twice,
        "exactly_once": ran_once == n and ran_twice == 0 and statuses.get("SUCCESSFUL") == n,
        "errors": errors,
    }
    cell["bottleneck"] = bottleneck(cell)
    print(f"   {backend} {duration_ms} ms x{workers} (c{concurrency}): {cell['e2e_jobs_per_s']} jobs/s end to end, "
          f"{cell['jobs_per_s']} processing, load {load}, exactly once: {cell['exactly_once']}", file=sys.stderr, flush=True)
    return cell


def bottleneck(cell: dict) -> str:
    busy = cell["worker_cpu_share"]
    slots = cell["workers"] * cell["concurrency"]
    if cell["duration_ms"] and cell["window_s"]:
        # The work itself: jobs x duration over the slots is the least the window can be.
        floor = cell["jobs"] * cell["duration_ms"] / 1000 / slots
        if floor / cell["window_s"] >= 0.8:
            return f"the jobs themselves ({round(100 * floor / cell['window_s'])}% of the window is their sleep)"
    if busy >= SATURATED:
        return f"worker CPU ({busy} of a core per worker)"
    load = cell["load"][0]
    if load > (os.cpu_count() or 1):
        return f"the machine (load {load} on {os.cpu_count()} cores; workers at {busy} of a core)"
    return f"the database or waiting (workers at {busy} of a core)"


def measure(backend: str) -> tuple[float, dict, list[int], float | None]:
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
    return window, statuses, per_worker, span["last"].timestamp() if span["last"] else None


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


def render(results: list[dict], args) -> str:
    concurrencies = sorted({c["concurrency"] for r in results for c in r["cells"] if c["backend"] == "jobworker"})
    lines = [
        "End to end = jobs / (last finish - first enqueue): enqueueing (ours: enqueue_many(); django-tasks-db: one",
        "by one in one transaction) and the workers' start-up included. Processing = jobs / (last finish - first",
        "start), from the rows. Medians of the runs; one process per worker; c1 = `jobworker --concurrency 1`",
        "(one task at a time, like db_worker).",
        "",
        "| database | job | workers | jobs | " + " | ".join(f"jobworker c{c} end to end" for c in concurrencies)
        + " | db_worker end to end | ratio | " + " | ".join(f"jobworker c{c} processing" for c in concurrencies)
        + " | db_worker processing | exactly once |",
        "|" + "---|" * (7 + 2 * len(concurrencies)),
    ]
    ratios = []
    for result in results:
        keys = sorted({(c["duration_ms"], c["workers"]) for c in result["cells"]})
        for duration, workers in keys:
            cells = [c for c in result["cells"] if c["duration_ms"] == duration and c["workers"] == workers]
            ours = {c["concurrency"]: c for c in cells if c["backend"] == "jobworker"}
            theirs = next((c for c in cells if c["backend"] == "db_worker"), None)
            o1 = ours.get(concurrencies[0]) if concurrencies else None
            ratio = (o1["e2e_jobs_per_s"] / theirs["e2e_jobs_per_s"]
                     if o1 and theirs and o1["e2e_jobs_per_s"] and theirs["e2e_jobs_per_s"] else None)
            ratios.append(ratio)
            once = all(c["exactly_once"] for c in cells)
            lines.append(
                f"| {result['db']} | {duration} ms | {workers} | {cells[0]['jobs']} | "
                + " | ".join(f"**{ours[c]['e2e_jobs_per_s']}**" if c in ours else "-" for c in concurrencies)
                + f" | {theirs['e2e_jobs_per_s'] if theirs else '-'} | {f'{ratio:.2f}x' if ratio else '-'} | "
                + " | ".join(str(ours[c]["jobs_per_s"]) if c in ours else "-" for c in concurrencies)
                + f" | {theirs['jobs_per_s'] if theirs else '-'} | {'yes' if once else 'NO'} |"
            )
    lines += ["", "Enqueue (jobs/s, one transaction of --jobs no-op jobs, median):", "",
              "| database | ours, one by one | ours, enqueue_many() | django-tasks-db, one by one |", "|---|---|---|---|"]
    for result in results:
        e = result["enqueue"]
        lines.append(f"| {result['db']} | {e['ours, one by one']} | {e['ours, enqueue_many()']} | {e['django-tasks-db, one by one']} |")
    lines += ["", "Conditions of each median run: load average (mean / max) during the cell, CPU as a share of one core "
              "(per worker process over the workers' run; the enqueueing process over its enqueue; the broker over the "
              "cell), and the bottleneck:", "",
              "| database | job | workers | backend | load | worker CPU | enqueuer CPU | broker CPU | bottleneck |",
              "|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        for c in sorted(result["cells"], key=lambda c: (c["duration_ms"], c["workers"], c["backend"], c["concurrency"])):
            name = f"jobworker c{c['concurrency']}" if c["backend"] == "jobworker" else "db_worker"
            broker = c["broker_cpu_share"] if c["backend"] == "jobworker" else "-"
            lines.append(f"| {result['db']} | {c['duration_ms']} ms | {c['workers']} | {name} | {c['load'][0]} / {c['load'][1]} | "
                         f"{c['worker_cpu_share']} | {c['enqueuer_cpu_share']} | {broker} | {c['bottleneck']} |")
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
    known = [r for r in ratios if r is not None]
    lines.append("")
    lines.append(f"End to end, c{concurrencies[0] if concurrencies else 1} against db_worker: "
                 + (f"{min(known):.2f}x to {max(known):.2f}x; issue 3's target >= {TARGET_RATIO:g}x "
                    + ("met in every cell" if all(r >= TARGET_RATIO for r in known)
                       else f"missed in {sum(r < TARGET_RATIO for r in known)} of {len(known)} cells") if known else "n/a"))
    lines.append("")
    lines.append("Every run (end to end jobs/s; processing jobs/s), then the median run's details:")
    for result in results:
        for c in result["cells"]:
            lines.append(
                f"  {result['db']:8} {c['backend']:9} {c['duration_ms']:>3} ms x{c['workers']} c{c['concurrency']}: "
                f"e2e {c['all_e2e_jobs_per_s']}; processing {c['all_jobs_per_s']}; enqueue {c['enqueue_s']} s, "
                f"e2e {c['e2e_s']} s, workers' wall {c['wall_s']} s, per worker {c['per_worker']}, statuses {c['statuses']}"
                + (f", ERRORS: {c['errors']}" if c["errors"] else "")
            )
    return "\n".join(lines)


def write_results(table: str, args, load_before: tuple, load_after: tuple) -> None:
    """Replace this script's section of RESULTS-jobs.md (between its markers); the rest of the
    file (other benchmarks' sections, earlier figures) is kept."""
    import platform

    block = (
        f"{BEGIN}\n## Latest run of bench/jobs_bench.py\n\n"
        f"- Run at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; load average before "
        f"{load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f}, after "
        f"{load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f}.\n"
        f"- Command: `{' '.join([Path(PYTHON).name, 'bench/jobs_bench.py', *sys.argv[1:]])}`\n\n"
        "```\n" + table + "\n```\n" + END
    )
    text = RESULTS.read_text() if RESULTS.exists() else "# Jobs benchmark results\n"
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + block + tail
    else:
        title, _, rest = text.partition("\n")
        text = f"{title}\n\n{block}\n{rest}"
    RESULTS.write_text(text)
    print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
