"""Live job events to 2,000 WebSocket clients through nginx and 1, 2 and 4 daphne processes on RabbitMQ.

Run by hand (never in tests), from the repository root, with PostgreSQL and RabbitMQ's STOMP
plugin reachable and nginx installed:

    .venv/bin/python bench/scaleout_bench.py                          # 1, 2, 4 daphnes, 2,000 clients
    .venv/bin/python bench/scaleout_bench.py --daphnes 2 --idle 190 --watch 10 --seconds 5 --burst 200

Each column is deploy/ as tests/deploy/ runs it (tests/deploy/deployment.py): nginx with
deploy/nginx/live-jobs.conf (HTTPS, least_conn over the web processes), N web processes started
with live-jobs-web@.service's command line, one worker with live-jobs-worker@.service's, a new
PostgreSQL database next to --postgres-url's and RabbitMQ's STOMP plugin at --broker-url. Two
things differ from the files, both for measuring: daphne serves bench/ws_bench_asgi.py (the
project's application plus GET /bench/stats, its counters) and the settings are
bench/ws_bench_settings.py (progress written every 5 ms, so 50 reports/s are 50 writes/s).

The load and every figure are bench/ws_bench.py's, at its offered load: IDLE idle clients and
WATCH clients watching one job (2,000 in all by default), all through nginx over TLS; the job
reports RATE progress events per second for SECONDS (RATE x WATCH deliveries per second),
pauses, then BURST events as fast as it can, and ends. ws_bench's own client processes and
accounting are used as they are: latency from report_progress() to the client, each steady
report a watcher missed accounted for (merged by the worker, coalesced by the publisher, merged
in daphne: all by design; or lost), CPU shares and the bottleneck. "daphne" is all the web
processes together: CPU per delivery is summed over them. Added here: deliveries per second,
each process kind's share of a core, the web processes' fixed cost (their CPU with every client
connected and nothing published, for --idle-window s before the worker starts) and their CPU per
delivery less it, nginx's CPU per delivery and how nginx spread the sockets.
Results go to stdout as Markdown (for bench/RESULTS-ws.md) and optionally JSON.
"""
from __future__ import annotations

import argparse
import functools
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from tests.deploy.deployment import (  # noqa: E402
    Deployment,
    drop_postgres_database,
    nginx_missing,
    postgres_database,
    unit_command,
)
from ws_bench import Procs, Sampler, count_server_errors, free_port, markdown, measure, run_columns, setup_code  # noqa: E402

WEB_UNIT = "live-jobs-web@.service"
WORKER_UNIT = "live-jobs-worker@.service"
PROJECT_APP = "project.asgi:application"
BENCH_APP = "ws_bench_asgi:application"
# nginx holds two connections per client (the client's and daphne's), plus the warm-up's.
NGINX_CONNECTIONS = 8192


class BenchDeployment(Deployment):
    """deploy/ as tests/deploy runs it, with daphne serving bench/ws_bench_asgi.py's application
    (the project's, plus /bench/stats) in place of project.asgi's."""

    def _spawn(self, name: str, unit: str, instance: str) -> subprocess.Popen:
        cmd, cwd = unit_command(unit, instance)
        if unit == WEB_UNIT:
            if PROJECT_APP not in cmd:
                raise ValueError(f"{PROJECT_APP} is no longer in {unit}'s ExecStart: update bench/scaleout_bench.py")
            cmd = [BENCH_APP if part == PROJECT_APP else part for part in cmd]
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=self.env, stdout=open(self.logs_dir / f"{name}.log", "ab"), stderr=subprocess.STDOUT
        )
        self.procs[name] = proc
        return proc


def raise_nofile() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit, inherited by every process started from here
    (daphne with 2,000 sockets, the idle clients' process with 1,900)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def listening_pid(port: int) -> int | None:
    """The process listening on 127.0.0.1:``port`` (RabbitMQ's STOMP listener: its node)."""
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                return conn.pid
    except psutil.AccessDenied:
        pass
    return None


def nginx_worker_pid(deployment: Deployment) -> int:
    import psutil

    children = psutil.Process(deployment.nginx.proc.pid).children()
    return children[0].pid if len(children) == 1 else deployment.nginx.proc.pid


def sockets_per_daphne(deployment: Deployment) -> list[int]:
    """WebSockets nginx sent to each web process, from its access log ($upstream_addr of each
    101 line; a WebSocket is logged when it closes)."""
    counts: Counter = Counter()
    for line in deployment.nginx.access_log():
        if '"GET /ws/stomp/' in line and '" 101 ' in line:
            counts[line.rsplit(" ", 1)[-1].strip()] += 1
    return [counts.get(f"127.0.0.1:{port}", 0) for port in deployment.web_ports]


def run_column(args, daphnes: int, workdir: Path) -> dict:
    from notifications.conf import parse_broker_url

    base = workdir / f"daphnes-{daphnes}"
    base.mkdir()
    database = postgres_database(args.postgres_url, f"scale{daphnes}")
    env_extra = {"PYTHONPATH": f"{ROOT}{os.pathsep}{BENCH}", "DJANGO_LOG_LEVEL": "WARNING"}
    deployment = BenchDeployment(base, database, args.broker_url, web=daphnes, workers=0, settings="ws_bench_settings",
                                 nginx_connections=NGINX_CONNECTIONS, extra_env=env_extra)
    procs = Procs(base)
    sampler = Sampler()
    metrics_port = free_port()
    try:
        deployment.prepare().start()
        env = deployment.env
        session, job = deployment.shell(setup_code(args)).split()[-2:]
        webs = [deployment.procs[f"web@{port}"] for port in deployment.web_ports]
        broker_pid = listening_pid(parse_broker_url(args.broker_url.split(",")[0]).port)
        if broker_pid:
            sampler.watch("rabbitmq (shared)", broker_pid)
        sampler.watch("nginx", nginx_worker_pid(deployment))
        sampler.urls["daphne"] = [f"http://127.0.0.1:{port}/bench/stats" for port in deployment.web_ports]
        sampler.urls["worker"] = f"http://127.0.0.1:{metrics_port}/metrics"
        worker_cmd, _ = unit_command(WORKER_UNIT, "1")
        url = f"wss://127.0.0.1:{deployment.https_port}/ws/stomp/"
        idle_window: list[float] = []

        def start_worker() -> subprocess.Popen:
            # measure() starts the sampler, then this: IDLE_WINDOW s of every client connected
            # and nothing published, sampled, before the worker starts.
            idle_window.append(time.time())
            time.sleep(args.idle_window)
            idle_window.append(time.time())
            return procs.start("worker", [*worker_cmd, "--metrics-port", str(metrics_port)], env)

        result = measure("stomp", url, webs[0], procs, env, args, job, session, deployment.url, start_worker,
                         sampler, webs=webs)
        idle_cpu = sampler.cpu_between("daphne", *idle_window) if len(idle_window) == 2 else None
        result["daphnes_idle_share"] = (None if idle_cpu is None else
                                        round(idle_cpu / (idle_window[1] - idle_window[0]), 3))
        time.sleep(1.0)  # nginx logs a WebSocket once it has closed
        result["sockets_per_daphne"] = sockets_per_daphne(deployment)
        result["nginx_errors"] = sum(1 for line in deployment.nginx.error_log().splitlines() if "[error]" in line
                                     or "[crit]" in line or "[alert]" in line)
    finally:
        sampler.stopped.set()
        procs.stop_all()
        deployment.stop()
        if os.environ.get("WS_BENCH_KEEP_LOGS"):
            print(deployment.logs(), file=sys.stderr)
        drop_postgres_database(args.postgres_url, database)
    result["server_errors"] = sum(count_server_errors(deployment.logs_dir / f"web@{port}.log")
                                  for port in deployment.web_ports)
    result["daphnes"] = daphnes
    return result


def kinds(r: dict) -> dict[str, float | None]:
    """Share of a core in the steady phase per kind of process."""
    shares = r["shares_steady"]

    def total(prefixes: tuple[str, ...]) -> float | None:
        values = [v for k, v in shares.items() if k.startswith(prefixes) and v is not None]
        return round(sum(values), 2) if values else None

    return {
        "daphnes": shares.get("daphne"),
        "nginx": shares.get("nginx"),
        "broker": next((v for k, v in shares.items() if k.startswith("rabbitmq")), None),
        "worker": shares.get("producer"),
        "load generators": total(("idle clients", "watchers")),
    }


def derived(r: dict) -> dict:
    """Deliveries per second (steady phase; burst: its first delivery to the last) and nginx's
    CPU per steady delivery."""
    steady_rate = (round(r["steady_deliveries"] / r["steady_window_s"]) if r["steady_window_s"] else None)
    watchers = int(r["final_state_seen_by"].split("/")[1] or 0)
    burst_deliveries = r["burst_received_mean"] * watchers
    burst_window = r["delivery_window_s"] - (r["steady_window_s"] or 0) if r["delivery_window_s"] else None
    idle = r["daphnes_idle_share"]
    marginal = (round(r["cpu_us_per_steady_delivery"] - 1e6 * idle * r["steady_window_s"] / r["steady_deliveries"], 1)
                if idle is not None and r["cpu_us_per_steady_delivery"] is not None and r["steady_deliveries"] else None)
    nginx = r["shares_steady"].get("nginx")
    nginx_us = (round(1e6 * nginx * r["steady_window_s"] / r["steady_deliveries"], 1)
                if nginx is not None and r["steady_window_s"] and r["steady_deliveries"] else None)
    return {"steady_per_s": steady_rate, "burst_deliveries": round(burst_deliveries),
            "after_steady_window_s": round(burst_window, 1) if burst_window is not None else None,
            "nginx_us_per_steady_delivery": nginx_us, "daphne_us_per_steady_delivery_less_idle": marginal}


def table(results: dict, args) -> str:
    for r in results.values():
        r["derived"] = derived(r)
        r["kinds"] = kinds(r)

    def kind(name):
        return lambda r: "n/a" if r["kinds"][name] is None else r["kinds"][name]

    rows = [
        ("load: clients (idle + watching one job) / offered",
         lambda r: f"{args.idle + args.watch:,} ({args.idle:,} + {args.watch}) / {args.rate:g} reports/s x "
                   f"{args.watch} = {args.rate * args.watch:,.0f} deliveries/s for {args.seconds:g} s, then {args.burst:,} at once"),
        ("WebSockets per daphne (nginx's least_conn, from its access log)", lambda r: " / ".join(map(str, r["sockets_per_daphne"]))),
        ("**deliveries per second, steady phase** (steady deliveries / first to last steady delivery)",
         lambda r: f"**{r['derived']['steady_per_s']}**"),
        ("deliveries after the steady phase (pause, burst, final) / seconds",
         lambda r: f"{r['deliveries'] - r['steady_deliveries']} / {r['derived']['after_steady_window_s']} s"),
        ("share of a core, steady phase: **daphnes (sum)**", kind("daphnes")),
        ("- daphnes (sum), every client connected and nothing published (their fixed cost; --idle-window s before the job)",
         lambda r: "n/a" if r["daphnes_idle_share"] is None else r["daphnes_idle_share"]),
        ("- nginx (its one worker)", kind("nginx")),
        ("- RabbitMQ node (shared with other work on the machine)", kind("broker")),
        ("- job worker", kind("worker")),
        ("- load generators (idle clients + watcher processes)", kind("load generators")),
        ("**daphne CPU per steady delivery, summed over the daphnes, less their fixed cost** (the table's steady figure "
         "below minus the row above over the steady window)",
         lambda r: f"**{r['derived']['daphne_us_per_steady_delivery_less_idle']} µs**"),
        ("nginx CPU per steady delivery", lambda r: f"{r['derived']['nginx_us_per_steady_delivery']} µs"),
        ("nginx errors ([error], [crit], [alert] lines)", lambda r: r["nginx_errors"]),
    ]
    extra = []
    for label, fn in rows:
        extra.append(f"| {label} | " + " | ".join(str(fn(results[n])) for n in results) + " |")
    base = markdown(results, args).splitlines()
    # Load and rates first, then ws_bench's rows (latency, accounting, cost per delivery, bottleneck).
    return "\n".join(base[:2] + extra + base[2:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--daphnes", default="1,2,4", help="web processes behind nginx, one column each (default 1,2,4)")
    parser.add_argument("--idle", type=int, default=1900, help="idle connections (default 1,900: 2,000 with the watchers)")
    parser.add_argument("--watch", type=int, default=100)
    parser.add_argument("--watchers-per-process", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--pause", type=float, default=1.0)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--idle-window", type=float, default=5.0,
                        help="seconds with every client connected and nothing published, before the worker starts: "
                             "the web processes' fixed cost (default 5)")
    parser.add_argument("--broker-url", default=os.environ.get("STOMP_RABBITMQ_URL", "stomp://guest:guest@127.0.0.1:61613"),
                        help="RabbitMQ's STOMP plugin (default: $STOMP_RABBITMQ_URL)")
    parser.add_argument("--postgres-url", default=os.environ.get("TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
                        help="a database next to which each column creates (and drops) its own (default: $TEST_POSTGRES_URL)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    why = nginx_missing()
    if why:
        sys.exit(why)
    raise_nofile()
    columns = {}
    for n in [int(x) for x in args.daphnes.split(",")]:
        columns[f"{n} daphne" + ("s" if n > 1 else "")] = functools.partial(run_column, args, n)
    run_columns(columns, lambda results: table(results, args), args.json, prefix="scaleout-bench-")

if __name__ == "__main__":
    main()
