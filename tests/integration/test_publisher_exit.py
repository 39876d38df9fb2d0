"""A short-lived process that publishes and exits at once still delivers (the at-exit flush)."""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import uuid
from pathlib import Path

import stomp

from notifications.conf import parse_broker_url

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import django, sys
django.setup()
from notifications.publisher import publish
publish(sys.argv[1], {"hello": "from a process that exits at once"})
"""


def test_a_process_that_publishes_then_exits_immediately_still_delivers_the_message(stomp_broker_url):
    url = parse_broker_url(stomp_broker_url)
    destination = f"/topic/exit-test.{uuid.uuid4().hex}"
    received: queue.Queue = queue.Queue()

    class Listener(stomp.ConnectionListener):
        def on_message(self, frame):
            received.put(frame.body)

    conn = stomp.Connection12([(url.host, url.port)], vhost=url.vhost or "/")
    conn.set_listener("", Listener())
    conn.connect(url.login, url.passcode, wait=True)
    try:
        conn.subscribe(destination, id="1", ack="auto", headers={"receipt": "sub"})
        # A RECEIPT for the SUBSCRIBE is the broker's word that the subscription exists.
        conn.send("/topic/exit-test.sync", "x", receipt="ready")
        env = dict(os.environ, DJANGO_SETTINGS_MODULE="project.settings", STOMP_BROKER_URL=stomp_broker_url)
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, destination], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        body = received.get(timeout=10)
    finally:
        conn.disconnect()
    assert json.loads(body) == {"hello": "from a process that exits at once"}
