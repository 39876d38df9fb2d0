"""A real daphne process stopped gracefully (SIGTERM, SIGINT) closes every WebSocket with 1001.

Without it daphne drops the sockets with no close frame (browsers see 1006 and wait before
reconnecting); "going away" tells a client to reconnect at once, to another process.
"""
from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess

import pytest
import websockets

from tests.browser.stack import PYTHON, ROOT, environment, free_port, manage, prepare_database, wait_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SESSION = """
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
user = get_user_model().objects.get(username="alice")
session = SessionStore()
session[SESSION_KEY] = str(user.pk)
session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session.create()
print(session.session_key)
"""


@pytest.fixture(scope="module")
def template_db(tmp_path_factory):
    return prepare_database(tmp_path_factory.mktemp("template-db"))


@contextlib.contextmanager
def running_daphne(tmp_path, template_db, broker_url: str, command: list[str], *, debug: bool = True,
                   extra_env: dict[str, str] | None = None):
    """`command -b 127.0.0.1 -p <free port> project.asgi:application` on a copy of the template
    database, with alice's session; yields (process, port, session), killed afterwards."""
    var = tmp_path / "var"
    var.mkdir()
    shutil.copyfile(template_db, var / "db.sqlite3")
    env = environment(var, broker_url, debug=debug) | (extra_env or {})
    session = manage(env, "shell", "--no-imports", "-c", SESSION).stdout.split()[-1]
    port = free_port()
    log = open(var / "daphne.log", "wb")
    proc = subprocess.Popen(
        [*command, "-b", "127.0.0.1", "-p", str(port), "project.asgi:application"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port, 30, proc)
        yield proc, port, session
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        log.close()
        print((var / "daphne.log").read_text(errors="replace")[-3000:])


@pytest.fixture
def daphne(tmp_path, template_db, embedded_broker):
    """`daphne project.asgi:application` on a free port, with alice's session; yields (process, port, session)."""
    with running_daphne(tmp_path, template_db, embedded_broker.url, [PYTHON, "-m", "daphne"]) as running:
        yield running


async def _subscribed_socket(port: int, session: str):
    ws = await websockets.connect(
        f"ws://127.0.0.1:{port}/ws/stomp/", subprotocols=["v12.stomp"],
        additional_headers={"Cookie": f"sessionid={session}", "Origin": f"http://127.0.0.1:{port}"},
    )
    await ws.send("CONNECT\naccept-version:1.2\nhost:127.0.0.1\nheart-beat:0,0\n\n\x00")
    assert (await asyncio.wait_for(ws.recv(), 10)).startswith("CONNECTED")
    await ws.send("SUBSCRIBE\nid:n\ndestination:/user/queue/notifications\nreceipt:r\n\n\x00")
    received = ""
    while "RECEIPT" not in received:
        received += await asyncio.wait_for(ws.recv(), 10)
    return ws


async def _close_code(ws) -> int | None:
    try:
        async with asyncio.timeout(15):
            async for _ in ws:
                pass
    except websockets.ConnectionClosed:
        pass
    return ws.close_code


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_every_websocket_gets_a_going_away_close_when_daphne_stops(daphne, stop):
    proc, port, session = daphne
    sockets = [await _subscribed_socket(port, session) for _ in range(3)]
    proc.send_signal(stop)
    codes = [await _close_code(ws) for ws in sockets]
    assert codes == [1001, 1001, 1001]
    assert await asyncio.to_thread(proc.wait, 15) == 0
