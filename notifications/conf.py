"""The NOTIFICATIONS settings dict: every key, its default, read when used (never at import)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["DEFAULTS", "BrokerURL", "get", "broker_url", "parse_broker_url"]

DEFAULTS: dict[str, Any] = {
    # Where every process publishes and subscribes: stomp://[user:pass@]host[:port][/vhost]
    "BROKER_URL": "stomp://127.0.0.1:61613",
    # Events waiting in a publisher while the broker is away; the oldest are dropped past this.
    "PUBLISHER_BUFFER": 10_000,
    # Reconnect backoff of the publisher and the hub, seconds (doubles up to the maximum).
    "RECONNECT_MIN": 0.1,
    "RECONNECT_MAX": 5.0,
    # STOMP heart-beats between our processes and the broker, milliseconds.
    "HEARTBEAT_MS": 10_000,
    # Origins allowed to open the WebSocket, besides the site's own host (ALLOWED_HOSTS).
    "ALLOWED_ORIGINS": [],
    # How often an open WebSocket re-reads its session and permissions (seconds); a logout in
    # another process or a withdrawn permission ends its subscriptions within this time.
    "SESSION_RECHECK_SECONDS": 5.0,
    # The embedded broker started by `manage.py stompbroker` (and by the run command).
    "EMBEDDED_BROKER": {
        "HOST": "127.0.0.1",
        "PORT": 61613,
        # {"login": "passcode"}; empty means any login (or none) is accepted, like RabbitMQ's guest on loopback.
        "USERS": {},
        # A file for messages waiting in /queue/ destinations to survive a restart; None keeps them in memory.
        "DATA_FILE": None,
        # Bytes the broker holds for all clients together (unfinished frames, queued messages,
        # unsent output); past it what would add more is refused with an ERROR. 256 MiB.
        "MAX_MEMORY": 256 * 1024 * 1024,
        # Seconds a frame has, from its first byte, to arrive whole.
        "FRAME_TIMEOUT": 30.0,
    },
}


def get(key: str) -> Any:
    """One NOTIFICATIONS key, from settings or its default."""
    from django.conf import settings

    configured = getattr(settings, "NOTIFICATIONS", {}) or {}
    if key not in DEFAULTS:
        raise KeyError(f"Unknown NOTIFICATIONS key {key!r}; known keys: {', '.join(sorted(DEFAULTS))}")
    value = configured.get(key, DEFAULTS[key])
    if isinstance(DEFAULTS[key], dict) and isinstance(value, dict):
        return {**DEFAULTS[key], **value}
    return value


@dataclass(frozen=True)
class BrokerURL:
    """A parsed stomp:// URL."""

    host: str
    port: int
    login: str | None = None
    passcode: str | None = field(default=None, repr=False)  # never in logs or tracebacks
    vhost: str | None = None

    def __str__(self) -> str:
        auth = f"{self.login}:***@" if self.login else ""
        vhost = f"/{self.vhost}" if self.vhost else ""
        return f"stomp://{auth}{self.host}:{self.port}{vhost}"


def parse_broker_url(url: str) -> BrokerURL:
    """Parse stomp://user:pass@host:port/vhost; raise ValueError with a readable message."""
    parts = urlsplit(url)
    if parts.scheme not in {"stomp", "tcp"}:
        raise ValueError(f"Broker URL {url!r} must start with stomp:// (for example stomp://127.0.0.1:61613)")
    if not parts.hostname:
        raise ValueError(f"Broker URL {url!r} has no host (for example stomp://127.0.0.1:61613)")
    try:
        port = parts.port or 61613
    except ValueError as exc:
        raise ValueError(f"Broker URL {url!r} has an invalid port") from exc
    vhost = unquote(parts.path.lstrip("/")) or None
    return BrokerURL(
        host=parts.hostname,
        port=port,
        login=unquote(parts.username) if parts.username else None,
        passcode=unquote(parts.password) if parts.password else None,
        vhost=vhost,
    )


def broker_url() -> BrokerURL:
    return parse_broker_url(get("BROKER_URL"))
