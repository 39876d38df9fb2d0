"""Text messages written straight to daphne's socket (consumers._daphne_text_writer) are the same
WebSocket frames autobahn would send: checked by a strict client on a real daphne, for the long
length encodings of RFC 6455 and for messages that fill the socket (the rest goes through
Twisted's buffer, in order); the frame bytes themselves are checked literally."""
from __future__ import annotations

import asyncio
import base64
import functools
import os

import pytest

from notifications.consumers import _daphne_text_writer, _text_frame
from tests.browser.stack import environment, manage
from tests.integration.test_consumer_shutdown import daphne, template_db  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

NOTIFY = """
from django.contrib.auth import get_user_model
from notifications.api import notify
from notifications.publisher import get_publisher
alice = get_user_model().objects.get(username="alice")
for text in {texts}:
    notify(alice, title="t", text=text)
get_publisher().flush(30)
"""


def _masked(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    return (bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0xFE]) + n.to_bytes(2, "big")) + mask + body


async def _frame(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """One server frame, strictly: (first byte, length-field size, payload). Server frames are never masked."""
    head = await reader.readexactly(2)
    assert head[1] & 0x80 == 0, "a server frame must not be masked"
    n, size = head[1] & 0x7F, 0
    if n == 126:
        n, size = int.from_bytes(await reader.readexactly(2), "big"), 2
        assert n >= 126, "the shortest length encoding must be used"
    elif n == 127:
        n, size = int.from_bytes(await reader.readexactly(8), "big"), 8
        assert n >= 65536, "the shortest length encoding must be used"
    return head[0], size, await reader.readexactly(n)


async def _stomp_socket(port: int, session: str):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((
        f"GET /ws/stomp/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v12.stomp\r\n"
        f"Cookie: sessionid={session}\r\nOrigin: http://127.0.0.1:{port}\r\n\r\n"
    ).encode())
    status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert b" 101 " in status.split(b"\r\n")[0]
    writer.write(_masked("CONNECT\naccept-version:1.2\nhost:127.0.0.1\nheart-beat:0,0\n\n\x00"))
    writer.write(_masked("SUBSCRIBE\nid:n\ndestination:/user/queue/notifications\nreceipt:r\n\n\x00"))
    seen = b""
    while b"RECEIPT" not in seen:
        seen += (await asyncio.wait_for(_frame(reader), 10))[2]
    return reader, writer


async def _texts(reader: asyncio.StreamReader, count: int) -> tuple[list[str], set[tuple[int, int]]]:
    """The notification texts of the next MESSAGE frames, and the (first byte, length size) pairs seen."""
    import json

    texts, shapes = [], set()
    while len(texts) < count:
        first, size, payload = await asyncio.wait_for(_frame(reader), 30)
        if first & 0x0F >= 8:
            continue  # autobahn's pings
        shapes.add((first, size))
        for frame in payload.decode("utf-8").split("\x00"):
            if frame.lstrip("\r\n").startswith("MESSAGE"):
                texts.append(json.loads(frame.partition("\n\n")[2])["text"])
    return texts, shapes


async def test_messages_of_both_long_length_encodings_arrive_as_exact_final_text_frames(daphne, tmp_path, embedded_broker):  # noqa: F811
    _, port, session = daphne
    env = environment(tmp_path / "var", embedded_broker.url)  # the daphne fixture's
    reader, writer = await _stomp_socket(port, session)
    texts = ["a" * 5, "c" * 70_000]  # a notification's event is at least about 270 bytes
    for text in texts:  # one at a time, so each is its own WebSocket message
        await asyncio.to_thread(manage, env, "shell", "--no-imports", "-c", NOTIFY.format(texts=repr([text])))
    received, shapes = await _texts(reader, 2)
    assert received == texts
    assert shapes == {(0x81, 2), (0x81, 8)}  # FIN + text, never fragmented; 16-bit and 64-bit lengths
    writer.close()


async def test_messages_that_fill_the_socket_arrive_whole_and_in_order(daphne, tmp_path, embedded_broker):  # noqa: F811
    _, port, session = daphne
    env = environment(tmp_path / "var", embedded_broker.url)  # the daphne fixture's
    reader, writer = await _stomp_socket(port, session)
    texts = [f"{i:03d}" + "x" * 60_000 for i in range(60)]  # about 3.6 MB, not read until all were sent
    made = '[f"{i:03d}" + "x" * 60_000 for i in range(60)]'
    await asyncio.to_thread(manage, env, "shell", "--no-imports", "-c", NOTIFY.format(texts=made))
    await asyncio.sleep(1.0)
    received, _ = await _texts(reader, len(texts))
    assert received == texts
    writer.close()


def test_any_other_server_keeps_the_asgi_path():
    async def send(message):
        return None

    assert _daphne_text_writer(send) is None
    assert _daphne_text_writer(functools.partial(send)) is None
    assert _daphne_text_writer(functools.partial(lambda protocol, message: None, object())) is None


def test_a_text_frame_is_fin_text_unmasked_with_the_shortest_length():
    assert _text_frame("hi") == b"\x81\x02hi"
    assert _text_frame("é" * 63) == b"\x81\x7e\x00\x7e" + "é".encode() * 63  # the length counts UTF-8 bytes
    assert _text_frame("x" * 125) == b"\x81\x7d" + b"x" * 125
    assert _text_frame("x" * 126) == b"\x81\x7e\x00\x7e" + b"x" * 126
    assert _text_frame("x" * 65535)[:4] == b"\x81\x7e\xff\xff"
    assert _text_frame("x" * 65536)[:10] == b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"
