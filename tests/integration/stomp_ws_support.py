"""Helpers for the WebSocket consumer and hub tests: a STOMP client over WebsocketCommunicator.

Frames are read with the project codec, from the real ASGI application (origin check, session
middleware, router, consumer), with a session cookie made by Django's test client.
"""
from __future__ import annotations

import asyncio
import json
import uuid

from channels.testing import WebsocketCommunicator
from django.test import Client

from notifications.codec import HEARTBEAT, Frame, FrameParser, encode_frame

__all__ = ["session_cookie", "WsStomp", "make_job"]


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

    def __init__(self, cookie: bytes | None = None, *, subprotocols=("v12.stomp", "v11.stomp", "v10.stomp"), origin=b"http://localhost"):
        from project.asgi import application

        headers = []
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
