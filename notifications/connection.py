"""Talking to any STOMP broker, for the hub and the publisher alike.

What every client connection needs whichever broker answers: TLS with the server's certificate
verified, the CONNECT frame's ``host`` header (and what to try when a broker refuses it), one log
line saying what the broker negotiated and what that means, and the workarounds for brokers'
known defects, recognised from what they say at connect.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from .conf import BrokerURL

__all__ = [
    "KnownDefect",
    "BrokerState",
    "ssl_context",
    "tls_error_text",
    "host_candidates",
    "known_defect",
    "session_summary",
]

logger = logging.getLogger(__name__)

# CoilMQ reads 4,096 bytes at a time (coilmq/server/socket_server.py): a window under that keeps
# every frame whole in one read.
COILMQ_WINDOW = 3_500


@dataclass(frozen=True)
class KnownDefect:
    """A broker defect that breaks a feature, and what the client does instead."""

    broker: str  # how the broker names itself, e.g. "coilmq/1.1.0"
    reason: str
    workaround: str
    no_heartbeats: bool = False  # send it none (a ``heartbeat`` option in the URL overrides)
    # Bytes of frames sent before waiting for a RECEIPT, for a broker that cannot take more at once.
    max_unconfirmed_bytes: int | None = None


def known_defect(server: str | None) -> KnownDefect | None:
    """The known defect of the broker whose CONNECTED frame carried this ``server`` header, if any.

    CoilMQ (every release up to 1.1.0, the latest) stops reading a connection at the first
    heart-beat it receives (a bare newline): every frame after it is ignored, RECEIPTs never
    come and messages are lost. Its own heart-beats to us work, so we keep expecting those. It
    also reads in 4 KiB chunks and drops the connection when a frame's headers or final NUL
    fall in the next chunk, so more than 4 KiB sent at once breaks it: we send at most
    COILMQ_WINDOW bytes before waiting for a RECEIPT.
    """
    if server and server.strip().lower().startswith("coilmq"):
        return KnownDefect(
            broker=server.strip(),
            reason=(
                "it stops reading a connection at the first heart-beat a client sends, and drops one "
                "when a frame straddles two of its 4 KiB reads"
            ),
            workaround=f"sending it no heart-beats (its own are still expected) and at most {COILMQ_WINDOW} bytes per RECEIPT",
            no_heartbeats=True,
            max_unconfirmed_bytes=COILMQ_WINDOW,
        )
    return None


def ssl_context(url: BrokerURL) -> ssl.SSLContext | None:
    """The TLS context for ``url`` (None for plain stomp://): the server's certificate and host
    name are verified against ``ca_file`` or the system's CAs; ``cert_file`` is sent if given.

    Raises OSError with the option's name when a file cannot be read.
    """
    if not url.tls:
        return None
    try:
        context = ssl.create_default_context(cafile=url.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise OSError(f"cannot load ca_file {url.ca_file!r}: {_reason(exc)}") from exc
    if url.cert_file:
        try:
            context.load_cert_chain(url.cert_file, url.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise OSError(f"cannot load cert_file {url.cert_file!r} / key_file {url.key_file!r}: {_reason(exc)}") from exc
    return context


def tls_error_text(url: BrokerURL, exc: BaseException) -> str:
    """A sentence a person can act on for a failed TLS handshake with ``url``."""
    where = f"{url.host}:{url.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = "pass the CA that signed it with ?ca_file=/path/ca.pem" if not url.ca_file else f"it is not signed by {url.ca_file}"
        return f"TLS certificate of {where} not trusted: {exc.verify_message or exc.reason} ({hint})"
    text = _reason(exc)
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        return f"TLS handshake with {where} failed: {text} (is this port plain STOMP? use stomp:// for it)"
    return f"TLS handshake with {where} failed: {text}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{exc.reason} ({exc.strerror or exc})" if exc.strerror else str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def host_candidates(url: BrokerURL) -> list[str]:
    """The CONNECT ``host`` headers to try, in order, for ``url``.

    A path in the URL forces its virtual host (no fallback). Otherwise "/" first: RabbitMQ's
    default virtual host, ignored by ActiveMQ, StompServer and the embedded broker; then the
    URL's host name (the spec's recommendation); then the machine's canonical name, which is
    what CoilMQ insists on (on a loopback address, this machine's own name). May do a DNS
    lookup: call it off the event loop.
    """
    if url.vhost:
        return [url.vhost]
    names = ["/", url.host]
    try:
        canonical = socket.getfqdn() if _is_loopback(url.host) else socket.getfqdn(url.host)
    except OSError:
        canonical = url.host
    if canonical not in names:
        names.append(canonical)
    return names


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BrokerState:
    """What one client learned about one broker URL in this process: which host header it
    accepts and which known defect is being worked around. Not thread-safe: each client owns its own."""

    def __init__(self, url: BrokerURL, heartbeat_ms: int):
        self.url = url
        self.default_heartbeat_ms = heartbeat_ms
        self._hosts: list[str] | None = None
        self._host_index = 0
        self.refused: list[str] = []  # "host '/': message" for the host headers refused so far
        self.defect: KnownDefect | None = None

    @property
    def host(self) -> str:
        """The host header for the next CONNECT (the first candidate until one was refused)."""
        if self._hosts is None:
            return self.url.vhost or "/"
        return self._hosts[self._host_index]

    def host_refused(self, message: str) -> bool:
        """The broker answered CONNECT with ERROR: move to the next host header. True if there is
        one to try at once, False if every one was refused (start over after the backoff).
        May resolve names (see host_candidates): call it off the event loop."""
        self.refused.append(f"host {self.host!r}: {message}")
        if self._hosts is None:
            self._hosts = host_candidates(self.url)
        if self._host_index + 1 < len(self._hosts):
            self._host_index += 1
            return True
        self._host_index = 0
        self.refused = []
        return False

    def host_accepted(self) -> str:
        """Note that the current host header worked; returns how to describe it in the log."""
        text = repr(self.host)
        if self.refused:
            text += f" (after {'; '.join(self.refused)})"
        self.refused = []
        return text

    @property
    def heartbeats(self) -> tuple[int, int]:
        """(send, expect) milliseconds to offer in CONNECT for this broker."""
        if self.url.heartbeat_ms is not None:
            return self.url.heartbeat_ms, self.url.heartbeat_ms
        interval = self.default_heartbeat_ms
        if self.defect is not None and self.defect.no_heartbeats:
            return 0, interval
        return interval, interval

    @property
    def window(self) -> int | None:
        """At most this many bytes of frames before waiting for a RECEIPT (None: no limit)."""
        return self.defect.max_unconfirmed_bytes if self.defect is not None else None

    def check_defect(self, server: str | None, client: str) -> bool:
        """Recognise a known defect from the CONNECTED frame's ``server`` header. True if this
        connection must be remade with the workaround (heart-beats were offered in its CONNECT);
        logs one warning when the workaround starts. A ``heartbeat`` option in the URL wins."""
        defect = known_defect(server)
        if defect is None:
            self.defect = None  # another broker now answers at this address
            return False
        if self.defect is not None:
            return False  # already worked around
        offered = self.heartbeats
        self.defect = defect
        logger.warning(
            "%s: the broker at %s is %s, which has a known defect: %s. Working around it by %s%s.",
            client, self.url, defect.broker, defect.reason, defect.workaround,
            "" if not defect.no_heartbeats
            else " (the URL's heartbeat option keeps heart-beats on, as it asks)" if self.url.heartbeat_ms is not None
            else " (heartbeat=N in the broker URL overrides the heart-beat part)",
        )
        # Heart-beats offered in this CONNECT that the workaround takes back: connect again.
        return offered[0] > 0 and self.heartbeats[0] == 0


def session_summary(headers: Mapping[str, str], *, host: str, send_ms: int, expect_ms: int, tls: str | None) -> str:
    """One line on what a broker negotiated in its CONNECTED frame, and what it means for us."""
    version = headers.get("version") or "1.0"
    parts = [f"server {headers['server']!r}" if headers.get("server") else "no server header"]
    if version == "1.0":
        parts.append("STOMP 1.0 (messages routed by destination)")
    else:
        parts.append(f"STOMP {version}")
    if send_ms or expect_ms:
        parts.append(f"heart-beats: sending every {send_ms} ms, expecting every {expect_ms} ms" if send_ms and expect_ms
                     else f"heart-beats: sending every {send_ms} ms" if send_ms
                     else f"heart-beats: expecting every {expect_ms} ms, sending none")
    elif "heart-beat" not in headers:
        parts.append("no heart-beats (the broker offers none)")
    else:
        parts.append("no heart-beats")
    parts.append(f"host header {host}")
    if tls:
        parts.append(tls)
    return ", ".join(parts)
