"""The files of deploy/ as a user copies them: nginx and systemd accept them, the example
environment passes Django's deployment checks, and the commands the units run exist."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import service_missing

from .deployment import (
    ENV_FILE,
    ROOT,
    UNITS,
    Nginx,
    make_certificate,
    nginx_missing,
    read_env_file,
    read_unit,
    render_site,
    stop_signal,
    unit_command,
)

UNIT_FILES = ["live-jobs-web@.service", "live-jobs-worker@.service", "live-jobs-broker.service", "live-jobs.target"]


def production_environment(**changes: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "DATABASE_", "STOMP_"))}
    env.update(read_env_file())
    env.update(changes)
    return env


def check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-W", "ignore", "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


def test_the_example_environment_passes_check_deploy_once_it_has_its_own_secret_key():
    done = check_deploy(production_environment(DJANGO_SECRET_KEY="x7#Lq-" * 9))

    assert (done.returncode, done.stdout.strip()) == (0, "System check identified no issues (0 silenced).")


def test_check_deploy_refuses_the_example_environment_as_shipped_for_its_placeholder_secret_key():
    done = check_deploy(production_environment())

    assert done.returncode == 1
    assert "security.W009" in done.stderr and "security.W0" not in done.stderr.replace("security.W009", "")


def test_without_https_check_deploy_names_the_cookie_redirect_and_hsts_settings_it_misses():
    done = check_deploy(production_environment(DJANGO_SECRET_KEY="x7#Lq-" * 9, DJANGO_HTTPS="0"))

    warnings = sorted(set(word for word in done.stderr.replace(")", " ").split() if word.startswith("(security.")))
    assert warnings == ["(security.W004", "(security.W008", "(security.W012", "(security.W016"]


def test_nginx_accepts_the_site_configuration_with_this_machines_ports_and_paths(tmp_path):
    why = nginx_missing()
    if why is not None:
        service_missing(why)
    _, chain, key = make_certificate(tmp_path / "tls")
    site = render_site(
        http_port=8080, https_port=8443, web_ports=[8001, 8002], var_dir=tmp_path / "var", cert_file=chain,
        key_file=key,
    )

    done = Nginx(tmp_path / "nginx", site, https_port=8443).check()

    assert done.returncode == 0, done.stderr
    assert "server 127.0.0.1:8001 max_fails=1 fail_timeout=5s;\n    server 127.0.0.1:8002 max_fails=1" in site
    assert f"alias {tmp_path / 'var'}/staticfiles/;" in site


def test_systemd_accepts_every_unit_with_this_machines_paths(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        service_missing("systemd-analyze is not installed (Debian's systemd)")
    for name in UNIT_FILES:
        text = (UNITS / name).read_text()
        text = text.replace("/srv/live-jobs/.venv/bin", str(os.path.dirname(sys.executable)))
        text = text.replace("/srv/live-jobs", str(ROOT)).replace("/etc/live-jobs/env", str(ENV_FILE))
        (tmp_path / name).write_text(text)

    done = subprocess.run(
        [analyze, "verify", "live-jobs-web@8001.service", "live-jobs-worker@1.service", "live-jobs-broker.service",
         "live-jobs.target"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )

    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize(
    ("unit", "instance", "expected"),
    [
        ("live-jobs-web@.service", "8001",
         ["daphne", "--bind", "127.0.0.1", "--port", "8001", "--proxy-headers", "--verbosity", "0",
          "project.asgi:application"]),
        ("live-jobs-worker@.service", "1", ["python", "manage.py", "jobworker", "--concurrency", "4"]),
        ("live-jobs-broker.service", "", ["python", "manage.py", "stompbroker", "--host", "127.0.0.1", "--port", "61613"]),
    ],
)
def test_each_unit_runs_a_command_of_this_project_that_accepts_its_options(unit, instance, expected):
    command, cwd = unit_command(unit, instance)
    helped = subprocess.run([*command[:3], "--help"] if "manage.py" in command else [command[0], "--help"],
                            cwd=cwd, capture_output=True, text=True, timeout=120)

    assert [os.path.basename(command[0]), *command[1:]] == expected
    assert cwd == ROOT and helped.returncode == 0
    for option in (arg for arg in command[1:] if arg.startswith("--")):
        assert option in helped.stdout, f"{option} is not an option of {' '.join(command[:3])}"


def test_every_unit_stops_its_process_with_sigterm_and_gives_it_longer_than_its_own_grace():
    from jobs.conf import DEFAULTS

    worker = read_unit("live-jobs-worker@.service")["Service"]
    assert {stop_signal(name).name for name in UNIT_FILES[:3]} == {"SIGTERM"}
    assert float(worker["TimeoutStopSec"][0]) > DEFAULTS["SHUTDOWN_GRACE"]
    assert worker["KillMode"] == ["mixed"]
