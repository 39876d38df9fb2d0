"""The values the codec trades in: a STOMP frame and the heart-beat event."""
from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Frame", "Heartbeat", "HEARTBEAT"]


@dataclass(frozen=True, slots=True)
class Frame:
    """One STOMP frame: command, headers in wire order (repeats kept), body bytes."""

    command: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (the specification says the first one wins)."""
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def header_dict(self) -> dict[str, str]:
        """Headers as a dict where, for repeated names, the first value wins."""
        return dict(reversed(self.headers))


class Heartbeat(enum.Enum):
    """Events that are not frames."""

    HEARTBEAT = "heartbeat"
    """A bare end-of-line between frames: the peer is alive, nothing else."""

    def __repr__(self) -> str:
        return "HEARTBEAT"


HEARTBEAT = Heartbeat.HEARTBEAT
