"""Helpers for the WebSocket consumer and hub tests: a STOMP client over WebsocketCommunicator.

Frames are read with the project codec, from the real ASGI application (origin check, session
middleware, router, consumer), with a session cookie made by Django's test client.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from urllib.parse import quote

from channels.testing import WebsocketCommunicator
from django.test import Client

from notifications.codec import HEARTBEAT, Frame, FrameParser, encode_frame
from notifications.conf import parse_broker_url

__all__ = ["session_cookie", "WsStomp", "make_job", "Relay", "via", "new_uuid"]


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


def make_job(owner, **fields):
    from jobs.models import Job

    fields.setdefault("name", "Test job")
    return Job.objects.create(task_path="tests.jobs_tasks.noop", owner=owner, **fields)


class WsStomp:
    """A STOMP client over a WebsocketCommunicator; every wait is bounded."""

    def __init__(
        self,
        cookie: bytes | None = None,
        *,
        subprotocols=("v12.stomp", "v11.stomp", "v10.stomp"),
        origin=b"http://localhost",
        host=b"localhost",
        headers=(),
    ):
        from project.asgi import application

        # A browser sends Host and Origin; the page's own origin is scheme://Host.
        headers = ([(b"host", host)] if host else []) + list(headers)
        if cookie:
            headers.append((b"cookie", cookie))
        if origin:
            headers.append((b"origin", origin))
        self.comm = WebsocketCommunicator(application, "/ws/stomp/", headers=headers, subprotocols=list(subprotocols))
        self.parser = FrameParser()
        self.frames: list[Frame] = []
        self.heartbeats = 0
        self.closed = False
        self.subprotocol = None

    async def open(self) -> bool:
        connected, subprotocol = await self.comm.connect(timeout=5)
        self.subprotocol = subprotocol
        return connected

    async def send_raw(self, data: bytes | str, *, binary: bool = False) -> None:
        if binary:
            await self.comm.send_to(bytes_data=data if isinstance(data, bytes) else data.encode())
        else:
            await self.comm.send_to(text_data=data if isinstance(data, str) else data.decode())

    async def send(self, command: str, headers: dict | None = None, body: bytes | str = b"") -> None:
        if isinstance(body, str):
            body = body.encode()
        frame = Frame(command, tuple((headers or {}).items()), body)
        await self.send_raw(encode_frame(frame))

    async def connect(self, **headers) -> Frame:
        await self.send("CONNECT", {"accept-version": "1.2,1.1,1.0", "host": "localhost", "heart-beat": "0,0", **headers})
        return await self.next_frame()

    async def _read(self, timeout: float) -> bool:
        output = await self.comm.receive_output(timeout)
        if output["type"] == "websocket.close":
            self.closed = True
            return False
        data = output.get("bytes") or output.get("text", "").encode()
        self.parser.receive_data(data)
        for event in self.parser.events_received():
            if event is HEARTBEAT:
                self.heartbeats += 1
            else:
                self.frames.append(event)
        return True

    async def next_frame(self, timeout: float = 5.0) -> Frame:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.frames:
            remaining = deadline - loop.time()
            if remaining <= 0 or self.closed:
                raise AssertionError(f"no frame within {timeout} s (closed={self.closed})")
            if not await self._read(remaining):
                if not self.frames:
                    raise AssertionError("the server closed the WebSocket without a frame")
        return self.frames.pop(0)

    async def next_control_frame(self, timeout: float = 5.0) -> Frame:
        """The next frame that is not a MESSAGE (RabbitMQ is shared: other tests' events may arrive)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.next_frame(max(0.01, deadline - loop.time()))
            if frame.command != "MESSAGE":
                return frame

    async def next_event(self, accept, timeout: float = 5.0) -> dict:
        """The next MESSAGE whose JSON body satisfies accept(body); others are skipped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = await self.next_message(max(0.01, deadline - loop.time()))
            if accept(event):
                return event

    async def events_for(self, seconds: float, accept) -> list[dict]:
        """Every accepted MESSAGE body arriving within ``seconds`` (without cancelling the app)."""
        found = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            if self.frames or not await self.comm.receive_nothing(0.05):
                if not self.frames:
                    await self._read(1)
                while self.frames:
                    frame = self.frames.pop(0)
                    if frame.command == "MESSAGE":
                        event = json.loads(frame.body)
                        if accept(event):
                            found.append(event)
        return found

    async def next_message(self, timeout: float = 5.0) -> dict:
        frame = await self.next_frame(timeout)
        assert frame.command == "MESSAGE", (frame.command, frame.headers, frame.body)
        return json.loads(frame.body)

    async def expect_closed(self, timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError("the WebSocket stayed open")
            await self._read(remaining)

    async def nothing_more(self, timeout: float = 0.3) -> bool:
        """True if no frame arrives within timeout."""
        # receive_output's timeout would cancel the application: poll the queue instead.
        if self.frames:
            return False
        if await self.comm.receive_nothing(timeout):
            return True
        await self._read(1)
        return not self.frames

    async def subscribe(self, destination: str, sub_id: str = "s1", receipt: str | None = None) -> None:
        headers = {"id": sub_id, "destination": destination}
        if receipt:
            headers["receipt"] = receipt
        await self.send("SUBSCRIBE", headers)

    async def close(self) -> None:
        try:
            await self.comm.disconnect(timeout=2)
        except Exception:
            pass


def new_uuid() -> str:
    return str(uuid.uuid4())


class Relay:
    """127.0.0.1:port -> broker; records client frames; cut() drops, refuse/freeze simulate outages;
    hold_replies holds back what the broker sends (its RECEIPTs among them) while the client's
    frames still reach it."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.sent_frames: list = []  # frames from the hub, in order, all connections
        self.connections = 0
        self.refuse = False
        self.frozen = False
        self.hold_replies = False
        self._pipes: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader, writer) -> None:
        if self.refuse:
            writer.close()
            return
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.update((writer, up_writer))
        parser = FrameParser()

        async def pipe(src, dst, record: bool):
            try:
                while data := await src.read(65536):
                    while self.frozen or (self.hold_replies and not record):
                        await asyncio.sleep(0.01)
                    if record:
                        parser.receive_data(data)
                        self.sent_frames.extend(e for e in parser.events_received() if e is not HEARTBEAT)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        for task in (
            asyncio.create_task(pipe(reader, up_writer, True)),
            asyncio.create_task(pipe(up_reader, writer, False)),
        ):
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    def cut(self) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        for task in list(self._pipes):
            task.cancel()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def commands(self, command: str, destination: str | None = None) -> list:
        return [
            f for f in self.sent_frames
            if f.command == command and (destination is None or f.get("destination") == destination)
        ]


def via(relay: Relay, broker_url: str) -> str:
    url = parse_broker_url(broker_url)
    auth = f"{url.login}:{url.passcode}@" if url.login else ""
    vhost = f"/{quote(url.vhost, safe='')}" if url.vhost else ""
    return f"stomp://{auth}127.0.0.1:{relay.port}{vhost}"
