"""notify() called in another process (manage.py shell) reaches the user's open WebSocket."""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.db import connection

from notifications import destinations
from notifications import hub as hub_module

from .stomp_ws_support import WsStomp, new_uuid, session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_database_url() -> str:
    """The test database as a DATABASE_URL another process can open."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


test_database_url.__test__ = False  # a helper, not a test


async def test_notify_from_another_process_arrives_on_the_users_socket(settings, stomp_broker_url):
    settings.NOTIFICATIONS = {"BROKER_URL": stomp_broker_url, "RECONNECT_MIN": 0.05, "RECONNECT_MAX": 0.5}
    alice = await database_sync_to_async(get_user_model().objects.create_user)("alice")
    client = WsStomp(await database_sync_to_async(session_cookie)(alice))
    title = f"From another process {new_uuid()}"
    try:
        assert await client.open()
        await client.connect()
        await client.subscribe(destinations.USER_NOTIFICATIONS, receipt="r")
        assert (await client.next_message())["type"] == "notifications.sync"
        assert (await client.next_control_frame()).command == "RECEIPT"

        env = {**os.environ, "DATABASE_URL": test_database_url(), "STOMP_BROKER_URL": stomp_broker_url}
        code = (
            "from django.contrib.auth import get_user_model\n"
            "from notifications.api import notify\n"
            f"notify(get_user_model().objects.get(username='alice'), title={title!r}, level='success')\n"
            # A process that exits right away must wait for its publisher (see the report: the
            # publisher's exit hook does not wait when it never got connected).
            "from notifications.publisher import get_publisher\n"
            "assert get_publisher().flush(10)\n"
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable, "manage.py", "shell", "-v0", "-c", code,
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, output.decode()

        event = await client.next_event(lambda e: e.get("title") == title, timeout=10)
        assert (event["type"], event["level"], event["unread"], event["read"]) == ("notification", "success", 1, False)
    finally:
        await client.close()
        await hub_module.shutdown()
