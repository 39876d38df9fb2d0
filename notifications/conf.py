"""The NOTIFICATIONS settings dict: every key, its default, read when used (never at import)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "DEFAULTS",
    "URL_OPTIONS",
    "BrokerURL",
    "get",
    "broker_url",
    "broker_urls",
    "parse_broker_url",
    "parse_broker_urls",
    "as_broker_urls",
    "SERVER_NAME",
]

# What the WebSocket endpoint calls itself in CONNECTED frames: the product and its protocol version.
SERVER_NAME = "django-live-jobs/1.0"

DEFAULTS: dict[str, Any] = {
    # Where every process publishes and subscribes: stomp://[user:pass@]host[:port][/vhost][?options],
    # stomp+ssl:// for TLS; several brokers separated by commas (or failover:(url,url), or a list).
    "BROKER_URL": "stomp://127.0.0.1:61613",
    # Events waiting in a publisher while the broker is away; the oldest are dropped past this.
    "PUBLISHER_BUFFER": 10_000,
    # Reconnect backoff of the publisher and the hub, seconds (doubles up to the maximum).
    "RECONNECT_MIN": 0.1,
    "RECONNECT_MAX": 5.0,
    # STOMP heart-beats between our processes and the broker, milliseconds (a URL's ?heartbeat= wins).
    "HEARTBEAT_MS": 10_000,
    # Seconds a SUBSCRIBE or a batch of SENDs may wait for the broker's RECEIPT; past it the
    # connection is taken for dead (a broker that stopped processing): reconnect, resubscribe, resend.
    "RECEIPT_TIMEOUT": 10.0,
    # The outbox (notifications.outbox): a durable event (a notification, a job's final event)
    # not confirmed by the broker this many seconds after its commit is published again by any
    # worker's relay (the bound doubles with each further try, up to 32 times);
    "OUTBOX_RETRY_AFTER": 10.0,
    # rows a relay claims at once;
    "OUTBOX_BATCH": 100,
    # and a row still unconfirmed after this many seconds is deleted, counted and logged as an
    # ERROR (the database keeps the truth it announced; pages catch up on load).
    "OUTBOX_MAX_AGE": 86_400.0,
    # Origins allowed to open the WebSocket, besides the site's own host (ALLOWED_HOSTS).
    "ALLOWED_ORIGINS": [],
    # How often an open WebSocket re-reads its session and permissions (seconds); a logout in
    # another process or a withdrawn permission ends its subscriptions within this time.
    "SESSION_RECHECK_SECONDS": 5.0,
    # Read notifications and broadcasts older than this (seconds) are deleted by `manage.py
    # prunenotifications` and by every jobworker's housekeeping; None keeps them forever.
    "PRUNE_READ_AFTER": 30 * 86400.0,
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
        # TLS: a PEM certificate chain and its private key (None: in the certificate file). With
        # a certificate the broker speaks only TLS; clients use stomp+ssl:// URLs.
        "CERTFILE": None,
        "KEYFILE": None,
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


# URL schemes: plain TCP, and TLS (ActiveMQ writes ssl://, RabbitMQ's docs stomp+ssl).
PLAIN_SCHEMES = ("stomp", "tcp")
TLS_SCHEMES = ("stomp+ssl", "stomps", "ssl")
# STOMP's registered port, and the one RabbitMQ's STOMP plugin uses for TLS.
DEFAULT_PORT = 61613
DEFAULT_TLS_PORT = 61614
# Query options a broker URL may carry, each for that broker only (see the README's broker table).
URL_OPTIONS = {
    "heartbeat": "heart-beat interval in milliseconds for this broker, 0 for none (default: HEARTBEAT_MS)",
    "ca_file": "PEM file of the certificate authorities trusted for this broker (default: the system's)",
    "cert_file": "PEM file of the client certificate (and its key unless key_file is given)",
    "key_file": "PEM file of the client certificate's private key",
}
_TLS_OPTIONS = ("ca_file", "cert_file", "key_file")


@dataclass(frozen=True)
class BrokerURL:
    """One parsed broker URL: where to connect, as whom, and its per-broker options."""

    host: str
    port: int
    login: str | None = None
    passcode: str | None = field(default=None, repr=False)  # never in logs or tracebacks
    # The virtual host a path in the URL forces (the CONNECT frame's host header); None lets
    # the client choose (see notifications.connection.host_candidates).
    vhost: str | None = None
    tls: bool = False
    heartbeat_ms: int | None = None  # None: NOTIFICATIONS["HEARTBEAT_MS"]
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def __str__(self) -> str:
        scheme = "stomp+ssl" if self.tls else "stomp"
        auth = f"{self.login}:***@" if self.login else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        vhost = f"/{self.vhost}" if self.vhost else ""
        options = [
            f"{name}={value}"
            for name, value in (("heartbeat", self.heartbeat_ms), *((n, getattr(self, n)) for n in _TLS_OPTIONS))
            if value is not None
        ]
        query = f"?{'&'.join(options)}" if options else ""
        return f"{scheme}://{auth}{host}:{self.port}{vhost}{query}"


def parse_broker_url(url: str) -> BrokerURL:
    """Parse one stomp://user:pass@host:port/vhost?options URL; raise ValueError with a readable message.

    Schemes: stomp:// (or tcp://) for plain TCP, stomp+ssl:// (or stomps://, ssl://) for TLS
    with the server's certificate verified. Options: see URL_OPTIONS.
    """
    if not isinstance(url, str):
        raise ValueError(f"Broker URL {url!r} must be a string like stomp://127.0.0.1:61613")
    url = url.strip()
    if "," in url or url.lower().startswith("failover:"):
        raise ValueError(f"Broker URL {_masked(url)!r} names several brokers; read it with parse_broker_urls()")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in PLAIN_SCHEMES + TLS_SCHEMES:
        raise ValueError(
            f"Broker URL {_masked(url)!r} must start with stomp:// or stomp+ssl:// (for example stomp://127.0.0.1:61613)"
        )
    tls = scheme in TLS_SCHEMES
    if not parts.hostname:
        raise ValueError(f"Broker URL {_masked(url)!r} has no host (for example stomp://127.0.0.1:61613)")
    try:
        port = parts.port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT)
    except ValueError as exc:
        raise ValueError(f"Broker URL {_masked(url)!r} has an invalid port") from exc
    vhost = unquote(parts.path.lstrip("/")) or None
    options = _parse_options(url, parts.query, tls)
    return BrokerURL(
        host=parts.hostname,
        port=port,
        login=unquote(parts.username) if parts.username else None,
        passcode=unquote(parts.password) if parts.password else None,
        vhost=vhost,
        tls=tls,
        **options,
    )


def _parse_options(url: str, query: str, tls: bool) -> dict[str, Any]:
    options: dict[str, Any] = {}
    seen: set[str] = set()
    for name, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if name not in URL_OPTIONS:
            known = ", ".join(sorted(URL_OPTIONS))
            raise ValueError(f"Broker URL {_masked(url)!r} has an unknown option {name!r}; known options: {known}")
        if name in seen:
            raise ValueError(f"Broker URL {_masked(url)!r} gives the option {name!r} twice")
        seen.add(name)
        if name == "heartbeat":
            if not value.isdigit():
                raise ValueError(
                    f"Broker URL {_masked(url)!r}: heartbeat={value!r} must be a number of milliseconds (0 for none)"
                )
            options["heartbeat_ms"] = int(value)
            continue
        if not tls:
            raise ValueError(f"Broker URL {_masked(url)!r}: {name} applies to TLS URLs only (stomp+ssl://...)")
        if not value:
            raise ValueError(f"Broker URL {_masked(url)!r}: {name} needs a file path")
        options[name] = value
    if "key_file" in options and "cert_file" not in options:
        raise ValueError(f"Broker URL {_masked(url)!r}: key_file needs cert_file (the client certificate) too")
    return options


def parse_broker_urls(value: str | list[str] | tuple[str, ...]) -> tuple[BrokerURL, ...]:
    """Parse BROKER_URL: one URL, several separated by commas, ActiveMQ's failover:(url,url)
    form, or a list of URLs. Processes connect to the first that answers and move to the next
    when it dies (the brokers must form one cluster for processes on different ones to meet)."""
    if isinstance(value, (list, tuple)):
        items = [str(item) for item in value]
        if not items:
            raise ValueError("BROKER_URL is an empty list; give at least one stomp:// URL")
    elif isinstance(value, str):
        text = value.strip()
        if text.lower().startswith("failover:"):
            inner = text[len("failover:"):].strip()
            if not (inner.startswith("(") and inner.endswith(")")):
                raise ValueError(
                    f"Broker URL {_masked(text)!r}: write failover:(stomp://host1:61613,stomp://host2:61613) "
                    "(failover options after the parenthesis are not supported; put options on each URL)"
                )
            text = inner[1:-1]
        items = text.split(",")
    else:
        raise ValueError(f"BROKER_URL must be a string or a list of strings, not {type(value).__name__}")
    if any(not item.strip() for item in items):
        raise ValueError(f"Broker URL list {_masked(str(value))!r} has an empty entry")
    return tuple(parse_broker_url(item) for item in items)


def _masked(url: str) -> str:
    """The URL text with any password replaced, for error messages."""
    return re.sub(r"(://[^:/@,]*:)[^@/,]*@", r"\1***@", url)


def as_broker_urls(value: BrokerURL | str | list | tuple | None) -> tuple[BrokerURL, ...]:
    """The brokers a Hub or Publisher was given: None for NOTIFICATIONS["BROKER_URL"], a
    BrokerURL, BrokerURLs, or anything parse_broker_urls() reads."""
    if value is None:
        return broker_urls()
    if isinstance(value, BrokerURL):
        return (value,)
    if isinstance(value, (list, tuple)) and value and all(isinstance(u, BrokerURL) for u in value):
        return tuple(value)
    return parse_broker_urls(value)


def broker_urls() -> tuple[BrokerURL, ...]:
    """Every broker of NOTIFICATIONS["BROKER_URL"], in the order they are tried."""
    return parse_broker_urls(get("BROKER_URL"))


def broker_url() -> BrokerURL:
    """The first broker of NOTIFICATIONS["BROKER_URL"] (all of them are validated)."""
    return broker_urls()[0]
