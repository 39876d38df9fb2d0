"""Named limits of the parser: every peer-controlled size is bounded before it is buffered."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_FRAME_SIZE", "MAX_BODY_SIZE", "MAX_HEADERS", "MAX_HEADER_LINE", "MAX_COMMAND_LENGTH", "Limits"]

# Job events and notifications are a few KiB; 4 MiB leaves room for any sane payload while a
# flooding peer costs at most this much buffer. (RabbitMQ's STOMP plugin and ActiveMQ default
# to 100 MiB bodies, meant for file transfer that this product never does over STOMP.)
MAX_BODY_SIZE = 4 * 1024 * 1024
# The body plus a generous header block.
MAX_FRAME_SIZE = MAX_BODY_SIZE + 256 * 1024
# ActiveMQ's StompWireFormat.MAX_HEADERS and RabbitMQ's stomp.max_headers are both 1000.
MAX_HEADERS = 1000
# ActiveMQ's StompWireFormat.MAX_HEADER_LENGTH is 10 KiB (RabbitMQ allows 100 KiB).
MAX_HEADER_LINE = 10 * 1024
# The longest command of STOMP 1.0-1.2 is UNSUBSCRIBE (11 letters); 15 leaves room for an
# extension's command while a first line of garbage is refused after 16 bytes, whether the
# frame arrives whole or a byte at a time (the same rule both ways).
MAX_COMMAND_LENGTH = 15


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes past which the parser raises RemoteProtocolError instead of buffering more."""

    max_frame_size: int = MAX_FRAME_SIZE
    """Whole frame: command, headers, body and the terminating NUL, in bytes."""
    max_body_size: int = MAX_BODY_SIZE
    """Body alone, in bytes (checked against content-length before reading it)."""
    max_headers: int = MAX_HEADERS
    """Header lines per frame."""
    max_header_line: int = MAX_HEADER_LINE
    """One header line (or the command line), in bytes."""
