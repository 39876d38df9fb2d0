"""RabbitMQ nodes of a test's own, on this machine, clustered with `rabbitmqctl join_cluster`.

Each node has its own name, ports (AMQP, Erlang distribution, STOMP, STOMP over TLS), data,
logs, configuration and Erlang cookie (its HOME), so the system RabbitMQ other tests share
(rabbit@localhost, 5672/61613) is never touched: no file of it is read, no command names it.
The nodes register with the machine's epmd, as every Erlang node does.

Used by tests/deploy/test_broker_failover.py and bench/scaleout_bench.py.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_port, port_open

__all__ = ["RABBITMQ_BIN", "missing", "RabbitNode", "start_cluster", "stop_all"]

# Debian's scripts that run as the calling user (/usr/sbin's wrappers switch to the rabbitmq
# user and its HOME, which is the system node's cookie and configuration).
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
START_TIMEOUT = 120.0  # a node boots in 10-20 s on a loaded 2-core machine
CTL_TIMEOUT = 120.0

CONFIG = """\
listeners.tcp.1 = 127.0.0.1:{amqp_port}
stomp.listeners.tcp.1 = 127.0.0.1:{stomp_port}
stomp.listeners.ssl.1 = 127.0.0.1:{stomp_tls_port}
ssl_options.cacertfile = {ca_file}
ssl_options.certfile = {cert_file}
ssl_options.keyfile = {key_file}
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
log.file.level = info
log.console = false
"""


def missing() -> str | None:
    """Why a RabbitMQ node cannot be started here, or None."""
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        return f"RabbitMQ is not installed ({RABBITMQ_BIN}/rabbitmq-server: apt-get install rabbitmq-server)"
    if not list(Path("/usr/lib/rabbitmq/lib").glob("rabbitmq_server-*/plugins/rabbitmq_stomp-*")):
        return "RabbitMQ's STOMP plugin is not installed"
    return None


@dataclass
class RabbitNode:
    """One node: ``name`` (e.g. livejobs-a-1f2e@localhost) with everything under ``base``."""

    name: str
    base: Path
    cookie: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    amqp_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    stomp_port: int = field(default_factory=free_port)
    stomp_tls_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": str(self.base),  # its .erlang.cookie, for the node and for rabbitmqctl
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "rabbitmq.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        })
        return env

    @property
    def stomp_url(self) -> str:
        return f"stomp://guest:guest@127.0.0.1:{self.stomp_port}"

    def tls_url(self, ca_file: Path | None = None) -> str:
        query = f"?ca_file={ca_file}" if ca_file is not None else ""
        return f"stomp+ssl://guest:guest@127.0.0.1:{self.stomp_tls_port}{query}"

    def write_files(self) -> None:
        (self.base / "log").mkdir(parents=True, exist_ok=True)
        cookie = self.base / ".erlang.cookie"
        if cookie.exists():
            cookie.chmod(0o600)
        cookie.write_text(self.cookie)
        cookie.chmod(0o400)  # Erlang refuses a cookie others can read
        (self.base / "rabbitmq-env.conf").write_text("# this node's settings come from its environment\n")
        (self.base / "enabled_plugins").write_text("[rabbitmq_stomp].\n")
        (self.base / "rabbitmq.conf").write_text(CONFIG.format(
            amqp_port=self.amqp_port, stomp_port=self.stomp_port, stomp_tls_port=self.stomp_tls_port,
            ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file,
        ))

    def start(self) -> RabbitNode:
        """Boot the node (returns at once; wait_started() waits)."""
        self.write_files()
        with open(self.base / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")], env=self.env, cwd=self.base, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    def wait_started(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"RabbitMQ node {self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if port_open("127.0.0.1", self.stomp_port) and port_open("127.0.0.1", self.stomp_tls_port):
                return
            time.sleep(0.2)
        raise TimeoutError(f"RabbitMQ node {self.name} did not listen within {timeout:.0f} s:\n{self.log()}")

    def ctl(self, *args: str, timeout: float = CTL_TIMEOUT) -> str:
        """rabbitmqctl against this node only (-n), with its cookie."""
        done = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.name, *args], env=self.env, cwd=self.base,
            capture_output=True, text=True, timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {self.name} {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stdout}\n{done.stderr}")
        return done.stdout

    def running_nodes(self) -> list[str]:
        status = json.loads(self.ctl("cluster_status", "--formatter", "json"))
        return sorted(status["running_nodes"])

    def stomp_connections(self) -> int:
        """STOMP clients connected to this node's STOMP listener now (the command lists the
        whole cluster's: "127.0.0.1:CLIENT -> 127.0.0.1:LISTENER")."""
        out = self.ctl("list_stomp_connections", "conn_name", "--quiet", "--no-table-headers")
        return sum(1 for line in out.splitlines() if line.strip().endswith(f"-> 127.0.0.1:{self.stomp_port}"))

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the node as an operator does (`rabbitmqctl stop`); SIGKILL if it lingers. Idempotent."""
        if not self.running:
            return
        try:
            self.ctl("stop", timeout=timeout)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=10)

    def log(self, tail: int = 3000) -> str:
        parts = []
        for path in [self.base / "server.log", *sorted((self.base / "log").glob("*.log"))]:
            if path.exists():
                parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)


def start_cluster(base: Path, size: int = 2, label: str = "livejobs") -> list[RabbitNode]:
    """``size`` nodes booted side by side, the others joined to the first; each has STOMP and
    STOMP over TLS listeners (a certificate for 127.0.0.1 signed by ``base``/tls/ca.pem)."""
    from .deployment import make_certificate

    ca_file, cert_file, key_file = make_certificate(base / "tls", "127.0.0.1", "localhost")
    cookie = secrets.token_hex(20)
    run = secrets.token_hex(3)
    nodes = [
        RabbitNode(f"{label}-{chr(ord('a') + i)}-{run}@localhost", base / f"node-{chr(ord('a') + i)}", cookie,
                   ca_file, cert_file, key_file)
        for i in range(size)
    ]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_started()
        for node in nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", nodes[0].name)
            node.ctl("start_app")
        for node in nodes:
            node.ctl("await_startup")
            node.wait_started()
        names = nodes[0].running_nodes()
        if names != sorted(n.name for n in nodes):
            raise RuntimeError(f"the cluster runs {names}, not all of {[n.name for n in nodes]}")
    except BaseException:
        stop_all(nodes)
        raise
    return nodes


def stop_all(nodes: list[RabbitNode]) -> None:
    for node in nodes:
        node.stop()
    for node in nodes:
        shutil.rmtree(node.base / "mnesia", ignore_errors=True)
