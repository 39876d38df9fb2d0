"""Errors of the STOMP codec: one root, a local side (our caller) and a remote side (the peer)."""
from __future__ import annotations

__all__ = ["StompError", "LocalProtocolError", "RemoteProtocolError"]


class StompError(Exception):
    """Root of every error the codec raises."""


class LocalProtocolError(StompError):
    """Our own caller asked for something STOMP cannot express (a bug on this side)."""


class RemoteProtocolError(StompError):
    """The peer broke the protocol.

    ``error_message`` is short, safe text meant for the ``message`` header of the ERROR frame
    sent back before closing; it names the problem and never contains internals.
    """

    def __init__(self, error_message: str, *, details: str = "") -> None:
        super().__init__(error_message)
        self.error_message = error_message
        self.details = details
