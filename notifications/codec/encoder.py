"""Frames in, bytes out."""
from __future__ import annotations

from .errors import LocalProtocolError
from .escaping import UNESCAPED_COMMANDS, escape
from .frame import Frame

__all__ = ["encode_frame", "HEARTBEAT_BYTES", "FRAME_END"]

# What a peer sends when it has nothing else to say within its heart-beat period.
HEARTBEAT_BYTES = b"\n"
# The end of a frame as RabbitMQ and ActiveMQ write it (and encode_frame with eol=True).
FRAME_END = b"\x00\n"


def encode_frame(frame: Frame, version: str = "1.2", *, eol: bool = False) -> bytes:
    """The wire bytes of ``frame`` for a connection speaking ``version``.

    Headers are written as given, in order (no content-length is added: a body containing a
    NUL byte needs one, and a given content-length must match the body). With ``eol`` the frame
    ends with NUL and a newline (``frame = ... NULL *( EOL )``), as RabbitMQ and ActiveMQ end
    theirs: some clients (PHP's stomp extension) read one byte past the NUL, and would eat
    the next frame's first letter. Raises LocalProtocolError for what STOMP cannot carry (a
    NUL in a header, a line break where it cannot be escaped, a mismatched content-length).
    """
    command = frame.command
    if not (command.isalpha() and command.isascii()):
        raise LocalProtocolError(f"Invalid STOMP command {command!r}")
    escaped = version != "1.0" and command not in UNESCAPED_COMMANDS
    lines = [command]
    length: str | None = None
    for name, value in frame.headers:
        if not name:
            raise LocalProtocolError("A header name cannot be empty")
        if name == "content-length" and length is None:
            length = value
        if escaped:
            lines.append(f"{escape(name)}:{escape(value)}")
        else:
            if ":" in name or "\n" in name or "\r" in name or "\n" in value or "\r" in value:
                raise LocalProtocolError(
                    f"Header {name!r} cannot carry ':' in its name or line breaks in a {command} frame"
                    + (" of STOMP 1.0" if version == "1.0" else "")
                )
            lines.append(f"{name}:{value}")
    body = frame.body
    if length is not None:
        if length != str(len(body)):
            raise LocalProtocolError(f"content-length {length!r} does not match the body of {len(body)} bytes")
    elif b"\x00" in body:
        raise LocalProtocolError("A body containing NUL bytes needs a content-length header")
    lines.append("\n")
    text = "\n".join(lines)
    if "\x00" in text:
        name = next(name for name, value in frame.headers if "\x00" in name or "\x00" in value)
        raise LocalProtocolError(f"Header {name!r} cannot carry a NUL byte (a NUL ends a STOMP frame)")
    try:
        head = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"Headers cannot be encoded as UTF-8: {exc.reason}") from None
    return b"".join((head, body, FRAME_END if eol else b"\x00"))
