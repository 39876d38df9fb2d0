"""Runs one interoperability scenario with a Python STOMP client from PyPI that the product does
not use itself, stompest or stomper, and prints one JSON object: what the client saw.

    python python_clients_scenario.py CLIENT SCENARIO HOST PORT VERSION DESTINATION-SUFFIX

CLIENT: stompest (its sync client: STOMP 1.0, 1.1, 1.2) or stomper (transport neutral: it
builds and parses frames, this script owns the socket; STOMP 1.0 and 1.1, no 1.2).
SCENARIO: queue (five SENDs with receipts, a client-individual subscription reads and acks
them all with receipts, then a new connection finds nothing left) or topic (a receipted
SUBSCRIBE, a SEND with a custom header, the MESSAGE). Nothing here asserts; waits are bounded.
"""
from __future__ import annotations

import json
import socket
import sys
import time

WAIT = 5.0


# --- stompest ---------------------------------------------------------------------------------


def stompest_session(host: str, port: int, version: str):
    from stompest.config import StompConfig
    from stompest.sync import Stomp

    client = Stomp(StompConfig(f"tcp://{host}:{port}", version=version))
    client.connect(host=host if version != "1.0" else None, versions=[version], connectedTimeout=WAIT)
    return client, {"version": client.session.version, "server": client.session.server}


def stompest_frames(client, count: int, wait: float = WAIT) -> list:
    frames = []
    deadline = time.monotonic() + wait
    while len(frames) < count and client.canRead(max(0.0, deadline - time.monotonic())):
        frames.append(client.receiveFrame())
    return frames


def stompest_run(scenario: str, host: str, port: int, version: str, suffix: str) -> dict:
    from stompest.protocol import StompSpec

    result: dict = {"client": "stompest"}
    client, connected = stompest_session(host, port, version)
    result["connected"] = connected
    if scenario == "queue":
        destination = f"/queue/interop.stompest.{suffix}"
        for i in range(1, 6):
            client.send(destination, f"m{i}".encode(), receipt=f"send-{i}")
        result["receipts"] = [f.headers.get(StompSpec.RECEIPT_ID_HEADER) for f in stompest_frames(client, 5)]
        client.subscribe(destination, {StompSpec.ID_HEADER: "stompest-sub", StompSpec.ACK_HEADER: "client-individual"})
        result["bodies"], result["acks"] = [], []
        while len(result["bodies"]) < 5 or len(result["acks"]) < len(result["bodies"]):
            frames = stompest_frames(client, 1)
            if not frames:
                break
            frame = frames[0]
            if frame.command == StompSpec.RECEIPT:
                result["acks"].append(frame.headers.get(StompSpec.RECEIPT_ID_HEADER))
            elif frame.command == StompSpec.MESSAGE:
                result["bodies"].append(frame.body.decode())
                result["subscription"] = frame.headers.get("subscription")
                client.ack(frame, receipt=f"ack-{frame.body.decode()}")
            else:
                result["unexpected"] = frame.info()
                break
        client.disconnect()
        again, _ = stompest_session(host, port, version)
        again.subscribe(destination, {StompSpec.ID_HEADER: "after", StompSpec.ACK_HEADER: "auto"})
        again.send(destination, b"sentinel")
        result["after_ack"] = []
        while frames := stompest_frames(again, 1, 1.0):
            result["after_ack"].append(frames[0].body.decode())
            if frames[0].body == b"sentinel":
                break
        again.disconnect()
    elif scenario == "topic":
        destination = f"/topic/interop.stompest.{suffix}"
        client.subscribe(destination, {StompSpec.ID_HEADER: "stompest-topic"}, receipt="sub-topic")
        receipt = stompest_frames(client, 1)
        result["subscribe_receipt"] = receipt[0].headers.get(StompSpec.RECEIPT_ID_HEADER) if receipt else None
        client.send(destination, b"hello from stompest", {"x-origin": "stompest"})
        message = stompest_frames(client, 1)
        result["message"] = (
            {"command": message[0].command, "headers": message[0].headers, "body": message[0].body.decode()}
            if message else None
        )
        client.disconnect()
    else:
        result["error"] = f"unknown scenario {scenario}"
    return result


# --- stomper ----------------------------------------------------------------------------------


class StomperSession:
    """A socket of this script's and stomper's frame builders and StompBuffer parser."""

    def __init__(self, host: str, port: int, version: str) -> None:
        import stomper
        from stomper import stomp_10, stomp_11
        from stomper.stompbuffer import StompBuffer

        self.version = version
        self.proto = stomp_10 if version == "1.0" else stomp_11
        self.sock = socket.create_connection((host, port), timeout=WAIT)
        self.buffer = StompBuffer()
        self.stomper = stomper
        if version == "1.0":
            self.write(self.proto.connect("", ""))
        else:
            self.write(self.proto.connect("", "", host))
        self.connected = self.next_frame()

    def write(self, text: str) -> None:
        self.sock.sendall(text.encode("utf-8"))

    def frame(self, command: str, headers: dict, body: str = "") -> None:
        frame = self.proto.Frame()
        frame.cmd = command
        frame.headers = headers
        frame.body = body
        self.write(frame.pack())

    def next_frame(self, wait: float = WAIT) -> dict | None:
        deadline = time.monotonic() + wait
        while True:
            message = self.buffer.getOneMessage()
            if message is not None:
                return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not data:
                return None
            self.buffer.appendData(data.decode("utf-8"))

    def close(self) -> None:
        self.write(self.proto.disconnect() if self.version == "1.0" else self.proto.disconnect("bye"))
        self.sock.close()


def stomper_run(scenario: str, host: str, port: int, version: str, suffix: str) -> dict:
    result: dict = {"client": "stomper"}
    session = StomperSession(host, port, version)
    result["connected"] = session.connected and {"command": session.connected["cmd"], "headers": session.connected["headers"]}
    if scenario == "queue":
        destination = f"/queue/interop.stomper.{suffix}"
        for i in range(1, 6):
            session.frame("SEND", {"destination": destination, "receipt": f"send-{i}"}, f"m{i}")
        result["receipts"] = [(session.next_frame() or {}).get("headers", {}).get("receipt-id") for _ in range(5)]
        if version == "1.0":
            session.write(session.proto.subscribe(destination, ack="client"))
        else:
            session.write(session.proto.subscribe(destination, "stomper-sub", ack="client-individual"))
        result["bodies"], result["acks"] = [], []
        while len(result["bodies"]) < 5 or len(result["acks"]) < len(result["bodies"]):
            frame = session.next_frame()
            if frame is None:
                break
            if frame["cmd"] == "RECEIPT":
                result["acks"].append(frame["headers"].get("receipt-id"))
            elif frame["cmd"] == "MESSAGE":
                body = frame["body"]
                result["bodies"].append(body)
                result["subscription"] = frame["headers"].get("subscription")
                message_id = frame["headers"]["message-id"]
                ack = (
                    session.proto.ack(message_id) if version == "1.0"
                    else session.proto.ack(message_id, frame["headers"]["subscription"])
                )
                # stomper's ACK has no receipt parameter: add the header to the frame it built.
                session.write(ack.replace("ACK\n", f"ACK\nreceipt:ack-{body}\n", 1))
            else:
                result["unexpected"] = frame
                break
        session.close()
        again = StomperSession(host, port, version)
        again.write(
            again.proto.subscribe(destination) if version == "1.0" else again.proto.subscribe(destination, "after")
        )
        again.frame("SEND", {"destination": destination}, "sentinel")
        result["after_ack"] = []
        while (frame := again.next_frame(1.0)) is not None:
            result["after_ack"].append(frame["body"])
            if frame["body"] == "sentinel":
                break
        again.close()
    elif scenario == "topic":
        destination = f"/topic/interop.stomper.{suffix}"
        session.frame("SUBSCRIBE", {"destination": destination, "id": "stomper-topic", "receipt": "sub-topic"})
        receipt = session.next_frame()
        result["subscribe_receipt"] = receipt and receipt["headers"].get("receipt-id")
        session.frame("SEND", {"destination": destination, "x-origin": "stomper"}, "hello from stomper")
        message = session.next_frame()
        result["message"] = message and {"command": message["cmd"], "headers": message["headers"], "body": message["body"]}
        session.close()
    else:
        result["error"] = f"unknown scenario {scenario}"
    return result


def main(argv: list[str]) -> int:
    client, scenario, host, port, version, suffix = argv
    run = {"stompest": stompest_run, "stomper": stomper_run}[client]
    try:
        result = run(scenario, host, int(port), version, suffix)
    except Exception as exc:  # reported to the test as JSON, with the client's own words
        result = {"client": client, "error": f"{type(exc).__name__}: {exc}"}
    result["scenario"] = scenario
    sys.stdout.write(json.dumps(result) + "\n")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
