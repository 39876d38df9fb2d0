"""Incremental STOMP frame parser: feed it bytes as they arrive, collect frames and heart-beats.

Calling contract (sans-I/O, like h11 and websockets)::

    parser = FrameParser()
    parser.receive_data(chunk)          # may raise RemoteProtocolError
    for event in parser.events_received():
        ...                             # Frame or HEARTBEAT

Every frame complete in a chunk is parsed in that one call. When a chunk holds good frames and
then bad bytes, ``receive_data`` raises and ``events_received()`` still returns the good frames
that came before the bad one; after the error the parser refuses further input.

Speed matters (the broker parses every frame of a 256 KiB read in one call): frame and header
ends are found with ``bytes.find``, never byte by byte; only the bytes of an incomplete frame
are carried over between reads; a repeated SEND header block is parsed once.
"""
from __future__ import annotations

from .errors import LocalProtocolError, RemoteProtocolError
from .escaping import UNESCAPED_COMMANDS, unescape
from .frame import HEARTBEAT, Frame, Heartbeat
from .limits import MAX_COMMAND_LENGTH, Limits

__all__ = ["FrameParser", "VERSIONS", "negotiate_version"]

VERSIONS = ("1.0", "1.1", "1.2")
# How much of a bad command line an error quotes: enough to show it is over MAX_COMMAND_LENGTH.
_COMMAND_PREVIEW = MAX_COMMAND_LENGTH + 1

_DEFAULT_LIMITS = Limits()
# SEND header blocks worth remembering (bytes), and how many per parser: a few, since every
# connection has its own cache and idle ones must stay small.
_CACHEABLE_HEADERS = 512
_CACHE_ENTRIES = 16

# The parser builds every Frame through its slot descriptors: the frozen dataclass's generated
# __init__ goes through object.__setattr__ per field, about twice the cost, once per frame.
_new_object = object.__new__
_set_command = Frame.command.__set__  # type: ignore[attr-defined]
_set_headers = Frame.headers.__set__  # type: ignore[attr-defined]
_set_body = Frame.body.__set__  # type: ignore[attr-defined]


def _frame(command: str, headers: tuple[tuple[str, str], ...], body: bytes) -> Frame:
    frame = _new_object(Frame)
    _set_command(frame, command)
    _set_headers(frame, headers)
    _set_body(frame, body)
    return frame


# Commands of the specification: valid without checking their characters one by one.
_COMMANDS = frozenset(
    {"CONNECT", "STOMP", "CONNECTED", "SEND", "SUBSCRIBE", "UNSUBSCRIBE", "ACK", "NACK", "BEGIN", "COMMIT",
     "ABORT", "DISCONNECT", "MESSAGE", "RECEIPT", "ERROR"}
)
_COMMAND_BYTES = frozenset(command.encode() for command in _COMMANDS)


def _check_command(line: bytes) -> None:
    """The one rule for a command line (without its EOL), whether the frame is whole or not:
    ASCII letters only, at most MAX_COMMAND_LENGTH of them. Garbage is refused as soon as it
    shows, so a partial line is checked with the same rule (it is valid only while it could
    still become a command)."""
    if line in _COMMAND_BYTES:
        return
    if len(line) > MAX_COMMAND_LENGTH or not (line.isalpha() and line.isascii()):
        raise RemoteProtocolError(f"Invalid frame: expected a command, got {_short(line[:_COMMAND_PREVIEW])}")


def _check_line(buf: bytes | bytearray, start: int, stop: int, max_line: int) -> None:
    """The one rule for a header line ``buf[start:stop]`` (without its LF), finished or not.

    A NUL is refused where it shows (the spec: a NUL ends a frame, so a header cannot carry
    one; a receiver trusting it would cut the frame there), unless the line was over the limit
    before it; the length is counted less a last CR (a CRLF's, or what may start one).
    """
    nul = buf.find(b"\x00", start, min(stop, start + max_line + 1))
    if nul >= 0:
        raise RemoteProtocolError(f"Header line with a NUL byte (a NUL ends a frame): {_short(bytes(buf[start:nul]))}")
    length = stop - start
    if length > max_line and (length > max_line + 1 or buf[stop - 1] != 13):
        raise RemoteProtocolError(f"Header line is over the limit of {max_line} bytes")


def negotiate_version(accept_version: str | None, supported: tuple[str, ...] = VERSIONS) -> str | None:
    """The highest version both sides speak; a CONNECT without accept-version is a 1.0 client.

    Returns None when there is no common version.
    """
    if accept_version is None:
        return "1.0" if "1.0" in supported else None
    offered = {v.strip() for v in accept_version.split(",")}
    common = [v for v in supported if v in offered]
    return max(common, key=lambda v: tuple(int(p) for p in v.split("."))) if common else None


def parse_heartbeat(value: str) -> tuple[int, int]:
    """The two numbers of a heart-beat header ("cx,cy", milliseconds); ValueError otherwise."""
    parts = value.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"Invalid heart-beat header {value!r}: expected two numbers like 10000,10000")
    return int(parts[0]), int(parts[1])


def negotiate_heartbeat(ours: tuple[int, int], theirs: tuple[int, int]) -> tuple[int, int]:
    """(send_ms, expect_ms) for one side of a connection, by the specification's rule.

    `ours` and `theirs` are each side's (can send every, wants to receive every) in ms: we send
    every max(our cx, their cy) unless either is 0, and expect their beats every
    max(our cy, their cx) unless either is 0. 0 means none.
    """
    (cx, cy), (tx, ty) = ours, theirs
    return (max(cx, ty) if cx and ty else 0, max(cy, tx) if cy and tx else 0)


def _short(text: str | bytes, width: int = 40) -> str:
    text = repr(text)
    return text if len(text) <= width else text[: width - 3] + "..."


class FrameParser:
    """Bytes in, frames out, for STOMP 1.0, 1.1 and 1.2.

    ``version`` decides header unescaping (none for "1.0"; never for CONNECT, CONNECTED and
    STOMP frames). It follows the handshake by itself: a CONNECT or STOMP frame sets it to what
    a broker speaking all three versions would choose, a CONNECTED frame to its ``version``
    header; a caller that negotiates otherwise may set it after reading those frames.
    """

    __slots__ = (
        "limits", "version", "_buf", "_events", "_error", "_hscan", "_lscan", "_pending", "_crlf", "_cache", "_cache_version",
    )

    def __init__(self, limits: Limits = _DEFAULT_LIMITS, version: str = "1.2") -> None:
        if version not in VERSIONS:
            raise LocalProtocolError(f"Unknown STOMP version {version!r}; expected one of {VERSIONS}")
        self.limits = limits
        self.version = version
        self._buf = bytearray()  # bytes of an incomplete frame, carried to the next read
        self._events: list[Frame | Heartbeat] = []
        # The message of the error that stopped the parser. Never the exception itself: its
        # traceback holds this parser and the offending buffer (MiBs at a size limit) in a
        # reference cycle that only the cyclic GC would ever free.
        self._error: str | None = None
        self._hscan = 0  # where to resume looking for the end of headers, relative to the frame
        self._lscan = 0  # where the unfinished block's first line not yet checked starts, likewise
        # (command, headers, body offset, content-length or None, NUL scan offset) of a frame
        # whose headers are parsed but whose body has not fully arrived yet.
        self._pending: tuple[str, tuple[tuple[str, str], ...], int, int | None, int] | None = None
        self._crlf = False  # the peer's last frame used CRLF: look for that first
        # Parsed SEND header blocks by their raw bytes: a producer repeats the same few blocks
        # (same destination, same headers, same body size), and a hit skips all header work.
        self._cache: dict[bytes, tuple[str, tuple[tuple[str, str], ...], int | None]] = {}
        self._cache_version = version

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete (bounded by ``limits.max_frame_size``)."""
        return len(self._buf)

    def events_received(self) -> list[Frame | Heartbeat]:
        """Frames and heart-beats parsed so far, oldest first; each is returned once."""
        events = self._events
        self._events = []
        return events

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the peer; then call :meth:`events_received`.

        Raises RemoteProtocolError on bad input (frames before it stay available).
        """
        if self._error is not None:
            raise LocalProtocolError(f"The parser failed earlier ({self._error}); no more input")
        if not data:
            return
        buf = self._buf
        if buf:
            buf += data
            view = buf
        else:
            view = data if isinstance(data, (bytes, bytearray)) else bytes(data)
        try:
            pos = self._parse(view)
        except RemoteProtocolError as exc:
            self._error = exc.error_message
            self._buf = bytearray()
            self._pending = None
            raise
        if view is buf:
            del buf[:pos]
        elif pos < len(view):
            self._buf = bytearray(view[pos:] if pos else view)

    def _parse(self, buf: bytes | bytearray) -> int:
        """Parse every complete frame in ``buf``; return the offset of the first unused byte."""
        events = self._events
        limits = self.limits
        max_frame = limits.max_frame_size
        n = len(buf)
        pos = 0
        while pos < n:
            if self._pending is not None:
                command, headers, body_rel, length, scan = self._pending
                self._pending = None
                body_start = pos + body_rel
                if length is None:
                    scan = pos + scan
            else:
                c = buf[pos]
                if c == 10:  # a bare EOL between frames is a heart-beat
                    events.append(HEARTBEAT)
                    pos += 1
                    continue
                if c == 13:
                    if pos + 1 >= n:
                        break
                    if buf[pos + 1] != 10:
                        raise RemoteProtocolError("Expected a line feed after a carriage return between frames")
                    events.append(HEARTBEAT)
                    pos += 2
                    continue
                # Where the headers end: search the line-end style the peer used last first,
                # then the other one only up to it, so a 64 KiB read of small frames is never
                # scanned end to end once per frame.
                start = pos + self._hscan
                limit = pos + max_frame
                if limit > n:
                    limit = n
                if self._crlf:
                    b = buf.find(b"\n\r\n", start, limit)
                    a = buf.find(b"\n\n", start, b + 2 if b >= 0 else limit)
                else:
                    a = buf.find(b"\n\n", start, limit)
                    b = buf.find(b"\n\r\n", start, a + 1 if a >= 0 else limit) if a != start else -1
                if a >= 0 and (b < 0 or a < b):
                    self._crlf = False
                    header_end = a
                    body_start = a + 2
                elif b >= 0:
                    self._crlf = True
                    header_end = b
                    body_start = b + 3
                else:
                    self._check_incomplete_headers(buf, pos, n)
                    self._hscan = max(0, n - pos - 2)
                    break
                self._hscan = self._lscan = 0
                raw = buf[pos:header_end]
                if raw.__class__ is not bytes:
                    raw = bytes(raw)
                cache = self._cache
                if self._cache_version != self.version:
                    cache.clear()
                    self._cache_version = self.version
                parsed = cache.get(raw)
                if parsed is None:
                    parsed = self._uncached_headers(raw, cache)
                command, headers, length = parsed
                scan = body_start
            if length is not None:
                end = body_start + length
                if end + 1 - pos > max_frame:
                    raise RemoteProtocolError(
                        f"Frame of {end + 1 - pos} bytes is over the limit of {max_frame} bytes"
                    )
                if end >= n:
                    self._pending = (command, headers, body_start - pos, length, 0)
                    break
                if buf[end] != 0:
                    raise RemoteProtocolError(
                        f"Frame body is not followed by a NUL byte after content-length {length}"
                    )
            else:
                limit = min(n, body_start + limits.max_body_size + 1, pos + max_frame)
                end = buf.find(b"\x00", scan, limit)
                if end < 0:
                    if limit < n or n - body_start > limits.max_body_size or n - pos > max_frame:
                        raise RemoteProtocolError(
                            f"Frame body is over the limit of {limits.max_body_size} bytes"
                            " (or its NUL terminator is missing)"
                        )
                    self._pending = (command, headers, body_start - pos, None, n - pos)
                    break
            body = bytes(buf[body_start:end])
            events.append(_frame(command, headers, body))
            pos = end + 1
        return pos

    def _check_incomplete_headers(self, buf: bytes | bytearray, pos: int, n: int) -> None:
        """Fail early on garbage and on header blocks that could only grow past the limits.

        The same rules as a complete block, applied to what arrived so far: the first limit the
        stream crosses is the one reported, however the bytes were split.
        """
        limits = self.limits
        # The command line plus its CRLF, or enough of it to know it is too long.
        line = bytes(buf[pos : min(n, pos + MAX_COMMAND_LENGTH + 2)])
        eol = line.find(b"\n")
        if eol >= 0:
            line = line[:eol]
        if line.endswith(b"\r"):  # the end of the line, or the start of its CRLF
            line = line[:-1]
        _check_command(line)
        # Every line so far, finished or not (_check_line), within the first max_frame_size + 1
        # bytes: a line refused before the block crosses max_frame_size is what a peer sending
        # a byte at a time is refused for. Lines checked by an earlier read are not scanned
        # again (_lscan), so a block arriving a byte at a time costs linear time.
        max_line = limits.max_header_line
        end = min(n, pos + limits.max_frame_size + 1)
        start = pos + self._lscan
        while True:
            eol = buf.find(b"\n", start, end)
            _check_line(buf, start, eol if eol >= 0 else end, max_line)
            if eol < 0:
                break
            start = eol + 1
        self._lscan = start - pos
        if n - pos > limits.max_frame_size:
            raise RemoteProtocolError(f"Frame headers are over the limit of {limits.max_frame_size} bytes")

    def _uncached_headers(self, raw: bytes, cache: dict) -> tuple[str, tuple[tuple[str, str], ...], int | None]:
        """Headers not in the cache: parsed, and remembered when they are a SEND's.

        A producer asking a RECEIPT for every SEND makes every header block differ by its
        receipt line alone: the block without that line is the cache key, and the receipt header
        goes back in at its place (plain values only; anything to unescape takes the full path).
        """
        limits = self.limits
        cacheable = (raw.startswith(b"SEND\n") or raw.startswith(b"SEND\r\n")) and len(raw) <= _CACHEABLE_HEADERS
        if cacheable and self.version != "1.0" and len(raw) <= limits.max_header_line:
            at = raw.find(b"\nreceipt:")
            if at >= 0:
                end = raw.find(b"\n", at + 1)
                if end < 0:
                    end = len(raw)
                value = raw[at + 9 : end]
                key = raw[:at] + raw[end:]
                index = raw.count(b"\n", 0, at)  # the receipt's place among the header lines
                plain = b"\\" not in value and b"\r" not in value and b"\x00" not in value and value.isascii()
                base = cache.get(key) if plain else None
                if base is not None and len(base[1]) < limits.max_headers:
                    command, headers, length = base
                    return command, (*headers[:index], ("receipt", value.decode("ascii")), *headers[index:]), length
                parsed = self._parse_headers(raw)
                if plain:
                    command, headers, length = parsed
                    self._remember(cache, key, (command, headers[:index] + headers[index + 1 :], length))
                return parsed
        parsed = self._parse_headers(raw)
        if cacheable:
            self._remember(cache, raw, parsed)
        return parsed

    @staticmethod
    def _remember(cache: dict, key: bytes, parsed: tuple[str, tuple[tuple[str, str], ...], int | None]) -> None:
        if len(cache) >= _CACHE_ENTRIES:
            cache.clear()
        cache[key] = parsed

    def _parse_headers(self, raw: bytes) -> tuple[str, tuple[tuple[str, str], ...], int | None]:
        limits = self.limits
        eol = raw.find(b"\n")
        line = raw[:eol] if eol >= 0 else raw
        if line.endswith(b"\r"):
            line = line[:-1]
        _check_command(line)
        if len(raw) > limits.max_header_line or b"\x00" in raw:
            # Before anything else about the lines, on the raw bytes, in order, as an unfinished
            # block is checked: the same frame is refused for the same reason however it arrived.
            start = 0
            while True:
                eol = raw.find(b"\n", start)
                _check_line(raw, start, eol if eol >= 0 else len(raw), limits.max_header_line)
                if eol < 0:
                    break
                start = eol + 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError("Frame headers are not valid UTF-8") from None
        lines = text.split("\n")
        if "\r" in text:
            lines = [line[:-1] if line.endswith("\r") else line for line in lines]
        command = lines[0]
        if len(lines) - 1 > limits.max_headers:
            raise RemoteProtocolError(
                f"Frame has {len(lines) - 1} headers, over the limit of {limits.max_headers}"
            )
        parts = [line.partition(":") for line in lines[1:]]
        headers = [(name, value) for name, sep, value in parts if sep and name]
        if len(headers) != len(parts):
            for line in lines[1:]:
                name, sep, _ = line.partition(":")
                if not sep:
                    raise RemoteProtocolError(f"Header line without a colon: {_short(line)}")
                if not name:
                    raise RemoteProtocolError(f"Header line with an empty name: {_short(line)}")
        if "\\" in text and self.version != "1.0" and command not in UNESCAPED_COMMANDS:
            headers = [(unescape(name), unescape(value)) for name, value in headers]
        elif self.version == "1.0" and (" " in text or "\t" in text):
            # STOMP 1.0's examples padded headers ("ack: client"), and 1.0 clients such as
            # stomper still write them so; 1.2 forbids trimming, 1.0 peers expect it.
            headers = [(name.strip(" \t"), value.strip(" \t")) for name, value in headers]
        length: int | None = None
        if "content-length:" in text:
            for name, value in headers:
                if name == "content-length":
                    if not (value.isdigit() and value.isascii()):
                        raise RemoteProtocolError(f"Invalid content-length header: {_short(value)}")
                    length = int(value)
                    if length > limits.max_body_size:
                        raise RemoteProtocolError(
                            f"Frame body of {length} bytes is over the limit of {limits.max_body_size} bytes"
                        )
                    break
        headers_t = tuple(headers)
        if command in UNESCAPED_COMMANDS:
            self._follow_handshake(command, headers_t)
        return command, headers_t, length

    def _follow_handshake(self, command: str, headers: tuple[tuple[str, str], ...]) -> None:
        # Frames pipelined right behind CONNECT in the same read are parsed in this very call,
        # before the caller could set the version: follow the handshake here.
        found = {}
        for name, value in headers:
            found.setdefault(name, value)
        if command == "CONNECTED":
            version = found.get("version", "1.0")
            if version in VERSIONS:
                self.version = version
        else:
            self.version = negotiate_version(found.get("accept-version")) or self.version
