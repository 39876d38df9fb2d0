"""Header escaping of STOMP 1.1 and 1.2 (section "Value Encoding"); 1.0 and CONNECT/CONNECTED have none."""
from __future__ import annotations

import re

from .errors import RemoteProtocolError

__all__ = ["UNESCAPED_COMMANDS", "escapes", "escape", "unescape"]

# The specification exempts CONNECT and CONNECTED for 1.0 compatibility; STOMP is CONNECT's alias.
UNESCAPED_COMMANDS = frozenset({"CONNECT", "CONNECTED", "STOMP"})

_UNESCAPE = {"\\\\": "\\", "\\n": "\n", "\\r": "\r", "\\c": ":"}
_ESCAPE_SEQUENCE = re.compile(r"\\.?", re.DOTALL)


def escapes(version: str, command: str) -> bool:
    """Whether headers of ``command`` are escaped on a connection speaking ``version``."""
    return version != "1.0" and command not in UNESCAPED_COMMANDS


def escape(text: str) -> str:
    """Escape backslash, carriage return, line feed and colon in a header name or value."""
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\r" in text:
        text = text.replace("\r", "\\r")
    if "\n" in text:
        text = text.replace("\n", "\\n")
    if ":" in text:
        text = text.replace(":", "\\c")
    return text


def _replace(match: re.Match[str]) -> str:
    sequence = match.group()
    try:
        return _UNESCAPE[sequence]
    except KeyError:
        # The specification: undefined escape sequences MUST be treated as a fatal protocol error.
        raise RemoteProtocolError(f"Undefined escape sequence {sequence!r} in a header") from None


def unescape(text: str) -> str:
    """Undo :func:`escape`; an undefined sequence such as ``\\t`` raises RemoteProtocolError."""
    if "\\" not in text:
        return text
    return _ESCAPE_SEQUENCE.sub(_replace, text)
