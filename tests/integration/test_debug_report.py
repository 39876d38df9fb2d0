"""The debug report: secrets masked, checks that really connect, and a real worker running it."""
from __future__ import annotations

import socket
import threading
import time

import pytest
import trustme
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from jobs.api import job_options
from jobs.models import Job
from jobs.tasks import (
    MASK,
    build_debug_report,
    check_broker,
    check_brokers,
    debug_report,
    mask_secrets,
    mask_url_passwords,
    secret_key_problems,
)
from jobs.worker import Worker
from tests.conftest import free_port

STRONG_KEY = "v9#Kq2!xP7@mL4$wR8^tZ1&nB6*cY3(dF5)gH0_jS2+eU7=aO9"


# ------------------------------------------------------------------ masking (pure)


@pytest.mark.parametrize(
    "name",
    ["SECRET_KEY", "AWS_ACCESS_KEY_ID", "API_TOKEN", "EMAIL_HOST_PASSWORD", "DB_PASS", "GCP_CREDENTIALS", "my_secret"],
)
def test_a_setting_whose_name_says_secret_is_masked(name):
    assert mask_secrets("hunter2", name) == MASK


def test_a_setting_with_an_ordinary_name_is_shown(settings):
    assert mask_secrets(["localhost", "127.0.0.1"], "ALLOWED_HOSTS") == ["localhost", "127.0.0.1"]


def test_secret_keys_inside_nested_dicts_are_masked():
    databases = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "app", "PASSWORD": "pg-pw"}}
    assert mask_secrets(databases, "DATABASES") == {
        "default": {"ENGINE": "django.db.backends.postgresql", "NAME": "app", "PASSWORD": MASK}
    }


def test_the_password_in_a_url_is_masked_and_the_rest_kept():
    assert mask_url_passwords("stomp://guest:guest@127.0.0.1:61613/vh and postgres://u:p%40ss@db/app") == (
        f"stomp://guest:{MASK}@127.0.0.1:61613/vh and postgres://u:{MASK}@db/app"
    )


def test_a_url_without_a_password_is_unchanged():
    assert mask_url_passwords("stomp://127.0.0.1:61613 redis://cache:6379/0") == "stomp://127.0.0.1:61613 redis://cache:6379/0"


def test_url_passwords_inside_setting_values_are_masked():
    assert mask_secrets({"BROKER_URL": "stomp://bob:hunter2@mq:61613"}, "NOTIFICATIONS") == {
        "BROKER_URL": f"stomp://bob:{MASK}@mq:61613"
    }


def test_a_development_secret_key_is_reported_weak():
    assert secret_key_problems("insecure-dev-only-key") == [
        "shorter than 50 characters (21)",
        "starts with 'insecure': a development key",
    ]


def test_a_long_random_secret_key_has_no_problems():
    assert secret_key_problems(STRONG_KEY) == []


# ------------------------------------------------------------------ broker check (real sockets)


def test_the_broker_check_connects_to_a_real_broker(stomp_broker_url):
    ok, description = check_broker(stomp_broker_url)
    assert ok is True
    assert "CONNECTED in" in description


def test_the_broker_check_fails_fast_when_nothing_listens():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    ok, description = check_broker(f"stomp://127.0.0.1:{port}", timeout=1.0)
    assert ok is False
    assert "ConnectionRefusedError" in description
    assert time.monotonic() - started < 1.5


def test_the_broker_check_gives_up_on_a_broker_that_never_answers():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        ok, description = check_broker(f"stomp://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
    assert ok is False
    assert "timed out" in description or "no CONNECTED" in description


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A CA made by this test module (trustme), its PEM file, and a server certificate for localhost."""
    directory = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    server = authority.issue_cert("127.0.0.1", "localhost")
    files = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server-key.pem"}
    authority.cert_pem.write_to_path(str(files["ca"]))
    for blob in server.cert_chain_pems:
        blob.write_to_path(str(files["cert"]), append=True)
    server.private_key_pem.write_to_path(str(files["key"]))
    return files


@pytest.fixture
def tls_broker(tls_files):
    from notifications.broker import BrokerConfig, BrokerThread

    running = BrokerThread(
        BrokerConfig(port=0, certfile=tls_files["cert"], keyfile=tls_files["key"], close_timeout=1.0)
    ).start()
    yield running
    running.stop()


def test_the_broker_check_reports_each_broker_of_a_list(embedded_broker):
    dead = f"stomp://127.0.0.1:{free_port()}"
    results = check_brokers(f"{embedded_broker.url},{dead}", timeout=2.0)
    assert [(r.url, r.ok) for r in results] == [(embedded_broker.url, True), (dead, False)]
    assert results[0].detail.startswith("CONNECTED in ")
    assert "(STOMP 1.2, server 'notifications-broker/1.0', host header '/')" in results[0].detail
    assert results[1].detail == "ConnectionRefusedError: [Errno 111] Connection refused"


def test_the_broker_check_of_a_list_fails_and_says_which_broker_did_not_answer(embedded_broker):
    dead = f"stomp://127.0.0.1:{free_port()}"
    ok, description = check_broker(f"failover:({dead},{embedded_broker.url})", timeout=2.0)
    assert ok is False
    first, second = description.splitlines()
    assert first == f"{dead}: ConnectionRefusedError: [Errno 111] Connection refused"
    assert second.startswith(f"{embedded_broker.url}: CONNECTED in ")


def test_the_broker_check_reads_the_setting_s_list_when_given_no_url(settings, embedded_broker):
    settings.NOTIFICATIONS = {"BROKER_URL": [embedded_broker.url, embedded_broker.url + "?heartbeat=0"]}
    assert [(r.url, r.ok) for r in check_brokers(timeout=2.0)] == [
        (embedded_broker.url, True), (embedded_broker.url + "?heartbeat=0", True)
    ]


def test_the_broker_check_connects_over_tls_verifying_the_certificate(tls_broker, tls_files):
    url = f"stomp+ssl://localhost:{tls_broker.port}?ca_file={tls_files['ca']}"
    ok, description = check_broker(url, timeout=2.0)
    assert ok is True, description
    assert description.startswith(f"stomp+ssl://localhost:{tls_broker.port}?ca_file={tls_files['ca']}: CONNECTED in ")
    assert "host header '/', TLS TLSv1." in description


def test_the_broker_check_refuses_a_certificate_it_does_not_trust(tls_broker):
    ok, description = check_broker(f"stomp+ssl://localhost:{tls_broker.port}", timeout=2.0)
    assert ok is False
    assert description.startswith(f"stomp+ssl://localhost:{tls_broker.port}: TLS certificate of localhost:{tls_broker.port} not trusted: ")
    assert description.endswith("(pass the CA that signed it with ?ca_file=/path/ca.pem)")


def test_the_broker_check_on_coilmq_falls_back_to_its_host_name_and_names_its_defect(coilmq_stomp_url):
    ok, description = check_broker(coilmq_stomp_url, timeout=5.0)
    assert ok is True, description
    assert "server 'coilmq/1.1.0'" in description
    assert "host header '" in description and "(after host '/': " in description
    assert "known defect of coilmq/1.1.0" in description


def test_the_broker_check_of_a_url_it_cannot_read_says_why_without_its_password():
    (result,) = check_brokers("stomp://bob:hunter2@mq:61613,", timeout=1.0)
    assert (result.url, result.ok) == (f"stomp://bob:{MASK}@mq:61613,", False)
    assert "hunter2" not in result.detail
    assert "has an empty entry" in result.detail


@pytest.mark.django_db
def test_the_report_says_which_broker_of_a_list_failed(settings, embedded_broker):
    dead = f"stomp://127.0.0.1:{free_port()}"
    settings.NOTIFICATIONS = {"BROKER_URL": f"{embedded_broker.url},{dead}"}
    _, sections = build_debug_report()
    broker = sections[5]
    assert broker.summary == "broker check FAILED (1 of 2 brokers did not answer)"
    assert broker.lines[0] == "Status: FAILED: 1 of 2 brokers did not answer (processes use the others meanwhile)"
    assert broker.lines[1].startswith(f"{embedded_broker.url}: CONNECTED in ")
    assert broker.lines[2] == f"{dead}: ConnectionRefusedError: [Errno 111] Connection refused"


# ------------------------------------------------------------------ the report text


@pytest.mark.django_db
def test_the_report_masks_secret_settings_and_url_passwords(settings):
    settings.SECRET_KEY = STRONG_KEY
    settings.MY_API_TOKEN = "tok-very-private"
    settings.NOTIFICATIONS = {"BROKER_URL": "stomp://guest:pw-in-url@127.0.0.1:9"}
    text, _ = build_debug_report()
    assert STRONG_KEY not in text
    assert "tok-very-private" not in text
    assert "pw-in-url" not in text
    assert f"MY_API_TOKEN = '{MASK}'" in text
    assert f"SECRET_KEY = {MASK} (strong enough)" in text


@pytest.mark.django_db
def test_the_report_has_every_section_in_order(settings):
    settings.NOTIFICATIONS = {"BROKER_URL": "stomp://127.0.0.1:9"}
    text, sections = build_debug_report()
    assert [s.title for s in sections] == [
        "Environment",
        "Installed packages",
        "Settings",
        "System checks (deployment included)",
        "Database",
        "STOMP broker",
        "Recent log lines (last 200 of this process, INFO and above)",
    ]
    assert "Django==6.1.3" in text
    assert "stomp.py==9.0.0" in text


@pytest.mark.django_db
def test_the_report_says_the_broker_check_failed_when_no_broker_listens(settings):
    settings.NOTIFICATIONS = {"BROKER_URL": "stomp://127.0.0.1:9"}
    _, sections = build_debug_report()
    broker = sections[5]
    assert broker.summary == "broker check FAILED"
    assert broker.lines[0] == "Status: FAILED"


@pytest.mark.django_db
def test_the_report_includes_recent_log_lines_of_the_process(settings):
    settings.NOTIFICATIONS = {"BROKER_URL": "stomp://127.0.0.1:9"}
    import logging

    logging.getLogger("tests.debug_report").warning("a line the report must show, pw stomp://u:hidden@h")
    _, sections = build_debug_report()
    lines = sections[6].lines
    assert any(line.endswith(f"WARNING tests.debug_report: a line the report must show, pw stomp://u:{MASK}@h") for line in lines)


# ------------------------------------------------------------------ a real worker runs it


@pytest.fixture
def report_settings(settings, tmp_path, embedded_broker):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.NOTIFICATIONS = {"BROKER_URL": embedded_broker.url}
    settings.JOBS = {"DEBUG_REPORT_STEP_DELAY": 0, "PROGRESS_INTERVAL": 0.05, "CANCEL_POLL_INTERVAL": 0.05}
    return settings


def run_worker_until_empty() -> None:
    worker = Worker(queues=["reports"], concurrency=1, burst=True, wakeups=False, poll_interval=0.05)
    worker.run()


@pytest.mark.django_db(transaction=True)
def test_a_worker_runs_the_report_to_a_downloadable_file(report_settings):
    alice = User.objects.create_user("alice", password="pw")
    with job_options(owner=alice):
        result = debug_report.enqueue()
    run_worker_until_empty()
    job = Job.objects.get(pk=result.id)
    assert job.status == "SUCCESSFUL"
    assert (job.progress_done, job.progress_total, job.message) == (8, 8, "Report ready")
    assert [entry["text"].split(":")[0] for entry in job.log] == [
        "Environment",
        "Installed packages",
        "Settings",
        "System checks (deployment included)",
        "Database",
        "STOMP broker",
        "Recent log lines (last 200 of this process, INFO and above)",
        f"Wrote {job.result['filename']} (" + str(job.result["size"]) + " bytes)",
    ]
    assert job.result["failed_checks"] == []
    assert job.result["file"] == job.result_file.name
    c = Client()
    c.force_login(alice)
    response = c.get(reverse("jobs:download", args=[job.pk]))
    body = b"".join(response.streaming_content)
    assert response.status_code == 200
    assert len(body) == job.result["size"]
    assert body.startswith(b"Debug report\nGenerated: ")
    assert f"Job: {job.pk}".encode() in body
    assert b"STOMP broker\n============\nStatus: ok\n" in body


@pytest.mark.django_db(transaction=True)
def test_a_report_cancelled_while_running_ends_cancelled(report_settings):
    report_settings.JOBS = {**report_settings.JOBS, "DEBUG_REPORT_STEP_DELAY": 0.3}
    result = debug_report.enqueue()
    worker = Worker(queues=["reports"], concurrency=1, burst=True, wakeups=False, poll_interval=0.05)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Job.objects.get(pk=result.id).status != "RUNNING":
            time.sleep(0.05)
        Job.objects.get(pk=result.id).cancel()
    finally:
        thread.join(15)
    job = Job.objects.get(pk=result.id)
    assert job.status == "CANCELLED"
    assert job.progress_done < 8
    assert not job.result_file
