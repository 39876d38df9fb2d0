"""The running embedded broker fuzzed over sockets: it neither crashes nor fails a well-behaved client.

Latency of the watching client is measured and printed (bench/fuzz_broker.py records it), never
asserted: the machine is shared.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from .broker_fuzz import KINDS, fuzz_broker
from .harness import ROOT, free_port, wait_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def broker_process(tmp_path):
    port = free_port()
    log = tmp_path / "broker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "notifications.broker", "--port", str(port),
                                 "--log-level", "WARNING"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port, 60, proc)
        yield proc, port, log
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def test_two_thousand_fuzzed_connections_neither_crash_the_broker_nor_lose_a_watched_message(broker_process):
    proc, port, log = broker_process
    result = fuzz_broker(proc, port, cases=2000, seed=8, concurrency=8, baseline=1.0, log_path=log)
    print(result.as_dict())
    assert result.cases == 2000
    assert sorted(result.by_kind) == sorted(KINDS)
    assert (result.broker_alive, result.serves_new_client, result.internal_errors) == (True, True, 0), (
        log.read_text(errors="replace")[-3000:])
    assert result.watcher["sent"] > 0
    assert (result.watcher["lost"], result.watcher["errors"]) == (0, [])
    # Most cases are protocol errors the broker must answer with an ERROR frame before closing.
    assert result.answered_error > 1000
