"""Sans-I/O STOMP 1.0/1.1/1.2 frame codec: bytes in, frames out; frames in, bytes out.

No sockets, threads, event loops or Django: the broker, the WebSocket consumer, the tests and
the benchmarks all share it.
"""
from __future__ import annotations

from .encoder import FRAME_END, HEARTBEAT_BYTES, encode_frame
from .errors import LocalProtocolError, RemoteProtocolError, StompError
from .escaping import escape, unescape
from .frame import HEARTBEAT, Frame, Heartbeat
from .limits import MAX_BODY_SIZE, MAX_COMMAND_LENGTH, MAX_FRAME_SIZE, MAX_HEADER_LINE, MAX_HEADERS, Limits
from .parser import VERSIONS, FrameParser, negotiate_heartbeat, negotiate_version, parse_heartbeat

__all__ = [
    "Frame",
    "HEARTBEAT",
    "HEARTBEAT_BYTES",
    "FRAME_END",
    "Heartbeat",
    "FrameParser",
    "encode_frame",
    "Limits",
    "MAX_BODY_SIZE",
    "MAX_COMMAND_LENGTH",
    "MAX_FRAME_SIZE",
    "MAX_HEADERS",
    "MAX_HEADER_LINE",
    "StompError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "VERSIONS",
    "negotiate_heartbeat",
    "negotiate_version",
    "parse_heartbeat",
    "escape",
    "unescape",
]
