"""What deploy/ describes, run for real on this machine: nginx with deploy/nginx/live-jobs.conf in
front of web processes and workers started with the ExecStart lines of deploy/systemd/, all
configured by deploy/live-jobs.env. Only ports and paths differ from what a user copies (and the
environment's hosts, passwords and secret key, which are each site's own).

Used by tests/deploy/ and bench/scaleout_bench.py.
"""
from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_port
from tests.processes import stop_all

__all__ = [
    "ROOT",
    "DEPLOY",
    "SITE_CONF",
    "UNITS",
    "ENV_FILE",
    "nginx_missing",
    "render_site",
    "read_unit",
    "unit_command",
    "stop_signal",
    "read_env_file",
    "make_certificate",
    "postgres_database",
    "drop_postgres_database",
    "Nginx",
    "Deployment",
]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SITE_CONF = DEPLOY / "nginx" / "live-jobs.conf"
UNITS = DEPLOY / "systemd"
ENV_FILE = DEPLOY / "live-jobs.env"

# The paths a user changes in the copied files (the README and the files' comments name them).
APP_DIR = "/srv/live-jobs"
VENV_BIN = "/srv/live-jobs/.venv/bin"
VAR_DIR = "/var/lib/live-jobs"
CERT_FILE = "/etc/letsencrypt/live/jobs.example.com/fullchain.pem"
KEY_FILE = "/etc/letsencrypt/live/jobs.example.com/privkey.pem"
# One upstream line per web process: "server 127.0.0.1:8001 max_fails=1 fail_timeout=5s;".
UPSTREAM_LINE = re.compile(r"^([ \t]*)server 127\.0\.0\.1:\d+( [^;\n]*)?;[ \t]*$", re.M)

START_TIMEOUT = 60.0  # a loaded 2-core machine starts Django in seconds, six of them at once in tens
STOP_TIMEOUT = 20.0  # the web unit's TimeoutStopSec


def nginx_missing() -> str | None:
    """Why nginx cannot run here, or None."""
    if _nginx() is None:
        return "nginx is not installed (apt-get install nginx)"
    if not Path("/etc/nginx/mime.types").exists():
        return "/etc/nginx/mime.types is missing (Debian's nginx-common)"
    return None


def _nginx() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def _replace(text: str, old: str, new: str) -> str:
    if old not in text:
        raise ValueError(f"{old!r} is no longer in a deploy/ file: update tests/deploy/deployment.py with it")
    return text.replace(old, new)


def render_site(
    *, http_port: int, https_port: int, web_ports: list[int], var_dir: Path, cert_file: Path, key_file: Path
) -> str:
    """deploy/nginx/live-jobs.conf with these ports and paths, nothing else changed (the upstream
    gets one `server` line per web port, as the file's comment tells a user to do)."""
    text = SITE_CONF.read_text()
    lines = list(UPSTREAM_LINE.finditer(text))
    if not lines:
        raise ValueError("no 'server 127.0.0.1:PORT ...;' line in deploy/nginx/live-jobs.conf's upstream")
    indent, options = lines[0].group(1), lines[0].group(2) or ""
    block = "\n".join(f"{indent}server 127.0.0.1:{port}{options};" for port in web_ports)
    text = text[: lines[0].start()] + block + text[lines[-1].end():]
    # Loopback only: a test's site is nobody else's business.
    text = _replace(text, "listen 80;", f"listen 127.0.0.1:{http_port};")
    text = _replace(text, "listen [::]:80;", f"listen [::1]:{http_port};")
    text = _replace(text, "listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
    text = _replace(text, "listen [::]:443 ssl;", f"listen [::1]:{https_port} ssl;")
    text = _replace(text, CERT_FILE, str(cert_file))
    text = _replace(text, KEY_FILE, str(key_file))
    return _replace(text, VAR_DIR, str(var_dir))


def read_unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file of deploy/systemd as {section: {key: [values, in order]}}."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            raise ValueError(f"{name}: cannot read {raw!r}")
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_command(name: str, instance: str = "") -> tuple[list[str], Path]:
    """The unit's ExecStart as an argument list (%i = ``instance``) and its WorkingDirectory,
    with the application's paths pointing at this checkout and its virtualenv."""
    service = read_unit(name)["Service"]
    line = service["ExecStart"][-1].replace("%i", instance)
    line = _replace(line, VENV_BIN, str(Path(sys.executable).parent))
    cwd = _replace(service["WorkingDirectory"][-1], APP_DIR, str(ROOT))
    return shlex.split(line), Path(cwd)


def stop_signal(name: str) -> signal.Signals:
    """The signal systemd stops the unit with (KillSignal=, SIGTERM by default)."""
    value = read_unit(name)["Service"].get("KillSignal", ["SIGTERM"])[-1]
    return signal.Signals[value if value.startswith("SIG") else f"SIG{value}"]


def read_env_file(path: Path = ENV_FILE) -> dict[str, str]:
    """KEY=value lines of an EnvironmentFile (comments and blank lines skipped)."""
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: not KEY=value: {raw!r}")
        env[key.strip()] = value.strip()
    return env


def make_certificate(directory: Path, *names: str) -> tuple[Path, Path, Path]:
    """A CA made for this run (trustme) and a certificate for ``names``: (ca, chain, key) PEM files."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert(*(names or ("127.0.0.1", "localhost")))
    ca_file, chain_file, key_file = directory / "ca.pem", directory / "chain.pem", directory / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    chain_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_file))
    return ca_file, chain_file, key_file


def postgres_database(base_url: str, label: str) -> str:
    """A new, empty database next to ``base_url``'s; returns its URL."""
    import psycopg

    name = f"{base_url.rsplit('/', 1)[-1] or 'postgres'}_{label}_{secrets.token_hex(4)}"
    with psycopg.connect(base_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return base_url.rsplit("/", 1)[0] + "/" + name


def drop_postgres_database(base_url: str, url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[-1]
    with psycopg.connect(base_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# The http{} block Debian's /etc/nginx/nginx.conf gives a site, reduced to what the site needs,
# plus the upstream each request went to in the access log (which process served what).
NGINX_MAIN = """\
{user}worker_processes 1;
pid {base}/nginx.pid;
worker_rlimit_nofile {nofile};
events {{
    worker_connections {connections};
}}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    client_body_temp_path {base}/temp/body;
    proxy_temp_path {base}/temp/proxy;
    fastcgi_temp_path {base}/temp/fastcgi;
    uwsgi_temp_path {base}/temp/uwsgi;
    scgi_temp_path {base}/temp/scgi;
    log_format upstream '$remote_addr "$request" $status $upstream_addr';
    access_log {base}/access.log upstream;
    include {base}/live-jobs.conf;
}}
"""


@dataclass
class Nginx:
    """Debian's nginx running the site's configuration in ``base`` (its own pid file, logs, temp)."""

    base: Path
    site: str
    https_port: int
    connections: int = 1024
    proc: subprocess.Popen | None = None

    @property
    def conf(self) -> Path:
        return self.base / "nginx.conf"

    def _command(self, *extra: str) -> list[str]:
        return [_nginx() or "nginx", "-p", str(self.base), "-c", str(self.conf), "-e", str(self.base / "error.log"), *extra]

    def check(self) -> subprocess.CompletedProcess:
        """Write the configuration and run `nginx -t` on it."""
        (self.base / "temp").mkdir(parents=True, exist_ok=True)
        (self.base / "live-jobs.conf").write_text(self.site)
        # As root the workers would run as nobody, who cannot read a test's private directories.
        user = "user root;\n" if os.geteuid() == 0 else ""
        self.conf.write_text(NGINX_MAIN.format(
            user=user, base=self.base, connections=self.connections, nofile=self.connections * 2 + 64
        ))
        return subprocess.run(self._command("-t"), capture_output=True, text=True, timeout=30)

    def start(self) -> Nginx:
        checked = self.check()
        if checked.returncode != 0:
            raise RuntimeError(f"nginx -t refused the configuration:\n{checked.stderr}")
        self.proc = subprocess.Popen(
            self._command("-g", "daemon off;"), stdout=subprocess.DEVNULL, stderr=open(self.base / "stderr.log", "wb")
        )
        _wait_port(self.https_port, 30, self.proc)
        return self

    def access_log(self) -> list[str]:
        path = self.base / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def error_log(self) -> str:
        path = self.base / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # fast shutdown: open WebSockets would hold a graceful one
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    from tests.conftest import port_open

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening on {port}")
        if port_open("127.0.0.1", port):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout:.0f} s")


# Users every deployment has: (username, password, is_superuser).
USERS = (("alice", "alice-pass-1", False), ("admin", "admin-pass-1", True))
_CREATE_USERS = """
from django.contrib.auth import get_user_model
User = get_user_model()
for name, password, superuser in {users!r}:
    (User.objects.create_superuser if superuser else User.objects.create_user)(name, name + "@example.com", password)
"""


@dataclass
class Deployment:
    """nginx, ``web`` daphne processes and ``workers`` job workers, as deploy/ starts them, on
    ``database_url`` and ``broker_url``; everything under ``base``."""

    base: Path
    database_url: str
    broker_url: str
    web: int = 3
    workers: int = 3
    settings: str = "tests.deploy.settings"
    log_level: str = "WARNING"
    nginx_connections: int = 1024
    extra_env: dict[str, str] = field(default_factory=dict)
    web_ports: list[int] = field(default_factory=list)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    nginx: Nginx | None = None
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(50))

    def __post_init__(self) -> None:
        self.https_port = free_port()
        self.http_port = free_port()
        if not self.web_ports:
            self.web_ports = [free_port() for _ in range(self.web)]
        self.var_dir = self.base / "var"
        self.logs_dir = self.base / "logs"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def env(self) -> dict[str, str]:
        """deploy/live-jobs.env, with this machine's database, broker, hosts, key and paths."""
        env = dict(os.environ)
        env.pop("DATABASE_URL", None)
        env.update(read_env_file())
        env.update({
            "DJANGO_SETTINGS_MODULE": self.settings,
            "DJANGO_SECRET_KEY": self.secret_key,
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DJANGO_VAR_DIR": _replace(env["DJANGO_VAR_DIR"], VAR_DIR, str(self.var_dir)),
            "DATABASE_URL": self.database_url,
            "STOMP_BROKER_URL": self.broker_url,
            "DJANGO_LOG_LEVEL": self.log_level,
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    def manage(self, *args: str, timeout: float = 180.0) -> str:
        """Run a management command to completion; its stdout (RuntimeError with its output if it fails)."""
        from tests.browser.stack import manage

        return manage(self.env, *args, timeout=timeout).stdout

    def shell(self, code: str) -> str:
        """Python in a separate `manage.py shell` process of this deployment."""
        return self.manage("shell", "--no-imports", "-c", code)

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Read the deployment's PostgreSQL database with the plain driver (not the code under test)."""
        import psycopg

        with psycopg.connect(self.database_url, connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchall()

    def prepare(self) -> Deployment:
        """What a deployment does once: migrate, collectstatic, create the users."""
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.manage("migrate", "--noinput")
        self.manage("collectstatic", "--noinput")
        self.shell(_CREATE_USERS.format(users=USERS))
        return self

    def start(self) -> Deployment:
        ca, chain, key = make_certificate(self.base / "tls")
        self.ca_file = ca
        for port in self.web_ports:
            self.start_web(port, wait=False)
        for n in range(1, self.workers + 1):
            self.start_worker(n)
        for port in self.web_ports:
            _wait_port(port, START_TIMEOUT, self.procs[f"web@{port}"])
        site = render_site(
            http_port=self.http_port, https_port=self.https_port, web_ports=self.web_ports,
            var_dir=self.var_dir, cert_file=chain, key_file=key,
        )
        self.nginx = Nginx(self.base / "nginx", site, self.https_port, connections=self.nginx_connections).start()
        self.wait_healthy()
        return self

    def _spawn(self, name: str, unit: str, instance: str) -> subprocess.Popen:
        cmd, cwd = unit_command(unit, instance)
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=self.env, stdout=open(self.logs_dir / f"{name}.log", "ab"), stderr=subprocess.STDOUT
        )
        self.procs[name] = proc
        return proc

    def start_web(self, port: int, wait: bool = True) -> subprocess.Popen:
        """Start (or restart, as systemd's Restart= would) the web process of ``port``."""
        proc = self._spawn(f"web@{port}", "live-jobs-web@.service", str(port))
        if wait:
            _wait_port(port, START_TIMEOUT, proc)
        return proc

    def start_worker(self, n: int) -> subprocess.Popen:
        return self._spawn(f"worker@{n}", "live-jobs-worker@.service", str(n))

    def web_pids(self) -> dict[int, int]:
        """{pid: port} of the running web processes."""
        return {p.pid: int(name.split("@")[1]) for name, p in self.procs.items() if name.startswith("web@")}

    def worker_pids(self) -> dict[int, str]:
        return {p.pid: name for name, p in self.procs.items() if name.startswith("worker@")}

    def health(self, port: int) -> int:
        """HTTP status of GET /ops/health/ asked of one web process directly (0: no answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ops/health/", timeout=5) as answer:
                return answer.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """Until every web process says healthy (database reached, hub connected to the broker)."""
        deadline = time.monotonic() + timeout
        waiting = list(self.web_ports)
        while waiting and time.monotonic() < deadline:
            waiting = [port for port in waiting if self.health(port) != 200]
            if waiting:
                time.sleep(0.3)
        if waiting:
            raise TimeoutError(f"web processes on {waiting} not healthy within {timeout:.0f} s:\n{self.logs()}")

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> subprocess.Popen:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=STOP_TIMEOUT)
        return proc

    def restart_dead(self) -> bool:
        """Start again whatever died (systemd's Restart=on-failure) and wait until it serves;
        True if something had to be restarted."""
        restarted = False
        for port in self.web_ports:
            if f"web@{port}" not in self.procs or self.procs[f"web@{port}"].poll() is not None:
                self.start_web(port)
                restarted = True
        for n in range(1, self.workers + 1):
            if f"worker@{n}" not in self.procs or self.procs[f"worker@{n}"].poll() is not None:
                self.start_worker(n)
                restarted = True
        self.wait_healthy()
        return restarted

    def errors(self) -> list[str]:
        """ERROR and CRITICAL lines the web processes and workers logged."""
        return [
            f"{path.stem}: {line}"
            for path in sorted(self.logs_dir.glob("*.log"))
            for line in path.read_text(errors="replace").splitlines()
            if " ERROR " in line or " CRITICAL " in line
        ]

    def logs(self, tail: int = 3000) -> str:
        out = []
        for path in sorted(self.logs_dir.glob("*.log")):
            out.append(f"--- {path.stem} ---\n{path.read_text(errors='replace')[-tail:]}")
        if self.nginx is not None:
            out.append(f"--- nginx error.log ---\n{self.nginx.error_log()[-tail:]}")
        return "\n".join(out)

    def stop(self) -> None:
        """Stop every process with its unit's KillSignal, SIGKILL after the stop timeout; then nginx."""
        signals = {"web": stop_signal("live-jobs-web@.service"), "worker": stop_signal("live-jobs-worker@.service")}
        stop_all(self.procs, STOP_TIMEOUT, lambda name: signals[name.split("@")[0]])
        self.procs.clear()
        if self.nginx is not None:
            self.nginx.stop()
