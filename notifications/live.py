"""Live destinations: what browsers may subscribe to and send over the WebSocket, declared per app.

Each app declares its destinations in its own ``live.py`` module, found at start-up the way the
admin finds ``admin.py``; the WebSocket consumer only asks this registry. A declaration is a
pattern with typed parts, who may use it, and what a subscriber gets first::

    from notifications import live

    def can_view(user, pk):                    # in a thread: the database may be used
        return Order.objects.filter(pk=pk, customer=user).exists()

    def current(user, pk):                     # the snapshot, sent first and after a reconnect
        return Order.objects.get(pk=pk).live_event()

    live.subscription("/topic/orders.{pk:int}", permission=can_view, snapshot=current)

    @live.handler("/app/orders.cancel", body='{"order": 12}')
    def cancel(user, body):                    # in a thread, in a transaction
        ...

Any process publishes with ``live.publish("/topic/orders.12", {...})`` (after the current
transaction commits; ``durable=True`` to have it retried until the broker confirms it). Mistakes in declarations are system check errors (notifications.E020 to
E024) at start-up, never a surprise on the first subscription.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.core.checks import Error

__all__ = [
    "Destination",
    "Handler",
    "Pattern",
    "PatternError",
    "Refused",
    "BadBody",
    "Registry",
    "registry",
    "subscription",
    "handler",
    "publish",
    "autodiscover",
    "check_declarations",
    "SUBSCRIBE_PREFIXES",
    "SEND_PREFIX",
    "BROKER_PREFIXES",
]

logger = logging.getLogger(__name__)

# What browsers may subscribe to, and what they may send to (handled here, never relayed).
SUBSCRIBE_PREFIXES = ("/topic/", "/queue/", "/user/")
SEND_PREFIX = "/app/"
# What the broker carries: the destinations RabbitMQ, ActiveMQ and the embedded broker share.
BROKER_PREFIXES = ("/topic/", "/queue/")


class PatternError(ValueError):
    """A destination pattern that cannot be parsed (reported by the system checks)."""


class Refused(Exception):
    """Raised by a permission, snapshot or handler callable: the browser gets an ERROR frame
    with this message (and its socket closes, as STOMP requires after an ERROR)."""

    def __init__(self, message: str = ""):
        super().__init__(message)
        self.message = message


class BadBody(Refused):
    """Raised by a SEND handler whose JSON body has the wrong shape: the ERROR says which shape
    the handler's declaration expects (``body=``)."""


# ---------------------------------------------------------------------------- patterns

# Typed parts of a pattern, as Django's path converters: the regex a part must match and the
# Python value the callables get. No part matches a dot or a slash: RabbitMQ routes /topic/
# names by their dot-separated words, so a part is always one word.
_CONVERTERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "int": (r"[0-9]{1,18}", int),
    "uuid": (r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", uuid.UUID),
    "slug": (r"[-a-zA-Z0-9_]+", str),
    "str": (r"[^./\s]+", str),
}
_PART = re.compile(r"\{([^{}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class Pattern:
    """A parsed destination pattern such as ``/topic/orders.{pk:int}``.

    ``match(destination)`` returns the converted parts (``{"pk": 12}``) or None; ``format(parts)``
    builds a destination from parts; ``shape`` is the pattern with its part names left out,
    so two patterns that match the same destinations have the same shape.
    """

    text: str
    names: tuple[str, ...]
    converters: tuple[str, ...]
    regex: re.Pattern | None  # None for a pattern without parts (matched by equality)
    shape: str

    @classmethod
    def parse(cls, text: str) -> Pattern:
        if not isinstance(text, str) or not text:
            raise PatternError(f"A destination pattern must be a non-empty string, not {text!r}")
        if any(c.isspace() for c in text):
            raise PatternError(f"The pattern {text!r} contains white space")
        names: list[str] = []
        converters: list[str] = []
        regex = ["\\A"]
        shape = []
        position = 0
        for part in _PART.finditer(text):
            literal = text[position:part.start()]
            if "{" in literal or "}" in literal:
                raise PatternError(f"The pattern {text!r} has an unbalanced brace")
            regex.append(re.escape(literal))
            shape.append(literal)
            name, _, converter = part.group(1).partition(":")
            converter = converter or "str"
            if not _NAME.match(name):
                raise PatternError(f"The part {{{part.group(1)}}} of {text!r} needs a name such as {{pk:int}}")
            if converter not in _CONVERTERS:
                raise PatternError(
                    f"The part {{{part.group(1)}}} of {text!r} has an unknown type {converter!r}; "
                    f"use one of {', '.join(_CONVERTERS)}"
                )
            if name in names:
                raise PatternError(f"The pattern {text!r} names the part {name!r} twice")
            if name == "user_id":
                raise PatternError(f"The part name 'user_id' in {text!r} is reserved for the subscriber's id")
            names.append(name)
            converters.append(converter)
            regex.append(f"(?P<{name}>{_CONVERTERS[converter][0]})")
            shape.append(f"{{{converter}}}")
            position = part.end()
        rest = text[position:]
        if "{" in rest or "}" in rest:
            raise PatternError(f"The pattern {text!r} has an unbalanced brace")
        regex.append(re.escape(rest) + "\\Z")
        shape.append(rest)
        return cls(
            text=text,
            names=tuple(names),
            converters=tuple(converters),
            regex=re.compile("".join(regex)) if names else None,
            shape="".join(shape),
        )

    def match(self, destination: str) -> dict[str, Any] | None:
        if self.regex is None:
            return {} if destination == self.text else None
        found = self.regex.match(destination)
        if found is None:
            return None
        parts = {}
        for name, converter in zip(self.names, self.converters):
            try:
                parts[name] = _CONVERTERS[converter][1](found.group(name))
            except ValueError:
                return None
        return parts

    def format(self, parts: dict[str, Any]) -> str:
        return _format(self.text, parts)


def _format(template: str, values: dict[str, Any]) -> str:
    # "{pk:int}" in a pattern means "the part pk", not a format spec: drop the type.
    return _PART.sub(lambda m: str(values[m.group(1).partition(":")[0]]), template)


def _template_fields(template: str) -> list[str]:
    return [m.group(1).partition(":")[0] for m in _PART.finditer(template)]


# ---------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Destination:
    """What browsers may subscribe to: a pattern, who may, and what they get.

    Callables get the user and the pattern's parts as keyword arguments (``pk=12``):
    ``permission(user, **parts) -> bool`` and ``snapshot(user, **parts) -> event | [events] |
    None`` run in a thread (the database may be used); ``filter(user, event) -> bool`` runs on
    the event loop for every event, so it must not touch the database. ``resync(user, since,
    pending, **parts) -> [events]`` replaces the snapshot after a reconnect: ``since`` is an aware
    datetime (events written from then on may have been missed) or None, ``pending`` the ``key``
    values this subscription last showed unfinished.
    """

    pattern: str
    # Who may subscribe (besides being logged in); re-run at every session re-check.
    permission: Callable[..., bool] | None = None
    # The current state from the database: sent first, and again after a broker reconnect.
    snapshot: Callable[..., Any] | None = None
    # Broker destinations relayed to the subscriber: templates using the parts and {user_id};
    # by default the pattern itself (required for /user/ patterns).
    topics: tuple[str, ...] | Callable[..., Iterable[str]] | None = None
    # Which broker events this subscriber sees (a user's view of a shared topic).
    filter: Callable[[Any, dict], bool] | None = None
    # Event fields: the item an event is about (pending events of one item coalesce, latest
    # wins), the number ordering its states (older ones are dropped), and whether it is final.
    key: str | None = None
    seq: str | None = None
    final: str | None = None
    # After a reconnect, instead of the snapshot: what changed since a time, and how the
    # items shown unfinished are now.
    resync: Callable[..., Any] | None = None
    declared_by: str = ""  # the module that declared it, for error messages

    def topics_for(self, user: Any, parts: dict[str, Any]) -> tuple[str, ...]:
        """The broker destinations a subscriber with these parts receives."""
        if callable(self.topics):
            return tuple(self.topics(user, **parts))
        templates = self.topics if self.topics is not None else (self.pattern,)
        values = {**parts, "user_id": getattr(user, "pk", None)}
        return tuple(_format(t, values) for t in templates)


@dataclass(frozen=True)
class Handler:
    """What browsers may SEND to: ``/app/<name>`` with a permission and a handler.

    ``handler(user, body, **parts)`` runs in a thread inside ``transaction.atomic()`` with the
    parsed JSON body; raising Refused (or BadBody) sends an ERROR with its message, any other
    exception an ERROR "Internal server error" (logged). A RECEIPT follows success when asked.
    ``permission(user, **parts) -> bool`` is checked first.
    """

    pattern: str
    handler: Callable[..., Any]
    permission: Callable[..., bool] | None = None
    body: str = ""  # the JSON shape expected, quoted in errors: '{"order": 12}'
    declared_by: str = ""


@dataclass
class _Entry:
    declaration: Destination | Handler
    pattern: Pattern | None
    error: str | None


def _caller_module(depth: int = 2) -> str:
    frame = inspect.currentframe()
    try:
        for _ in range(depth):
            if frame is None:
                return ""
            frame = frame.f_back
        return frame.f_globals.get("__name__", "") if frame is not None else ""
    finally:
        del frame


class Registry:
    """The declared destinations. Declaring never raises: problems are kept for the system checks,
    and a destination with a problem is never matched."""

    def __init__(self) -> None:
        self._entries: list[_Entry] = []
        self._literal: dict[str, tuple[str, Destination | Handler]] = {}  # exact destinations
        self._patterns: list[tuple[str, Pattern, Destination | Handler]] = []

    # ------------------------------------------------------------ declaring

    def add(self, declaration: Destination | Handler) -> Destination | Handler:
        try:
            pattern = Pattern.parse(declaration.pattern)
            error = None
        except PatternError as exc:
            pattern, error = None, str(exc)
        entry = _Entry(declaration, pattern, error)
        self._entries.append(entry)
        if pattern is not None and self._problems_of(entry) == []:
            kind = "send" if isinstance(declaration, Handler) else "subscribe"
            if pattern.regex is None:
                self._literal.setdefault(declaration.pattern, (kind, declaration))
            elif not any(p.shape == pattern.shape for _, p, _ in self._patterns):
                self._patterns.append((kind, pattern, declaration))
        return declaration

    def subscription(self, pattern: str, **options: Any) -> Destination:
        if not options.get("declared_by"):
            options["declared_by"] = _caller_module()
        if isinstance(options.get("topics"), str):
            options["topics"] = (options["topics"],)
        elif isinstance(options.get("topics"), list):
            options["topics"] = tuple(options["topics"])
        return self.add(Destination(pattern, **options))

    def handler(self, pattern: str, handler: Callable | None = None, **options: Any):
        """Declare a SEND handler; as a decorator when ``handler`` is not given."""
        declared_by = options.pop("declared_by", None) or _caller_module()

        def register(function: Callable) -> Callable:
            self.add(Handler(pattern, function, declared_by=declared_by, **options))
            return function

        if handler is not None:
            register(handler)
            return handler
        return register

    # ------------------------------------------------------------ looking up

    def match_subscription(self, destination: str) -> tuple[Destination, dict[str, Any]] | None:
        """The destination a browser may subscribe to under this name, with its parts, or None."""
        return self._match(destination, "subscribe")

    def match_handler(self, destination: str) -> tuple[Handler, dict[str, Any]] | None:
        """The handler of a browser SEND to this destination, with its parts, or None."""
        return self._match(destination, "send")

    def _match(self, destination: str, kind: str):
        literal = self._literal.get(destination)
        if literal is not None:
            return (literal[1], {}) if literal[0] == kind else None
        for entry_kind, pattern, declaration in self._patterns:
            if entry_kind != kind:
                continue
            parts = pattern.match(destination)
            if parts is not None:
                return declaration, parts
        return None

    @property
    def declarations(self) -> list[Destination | Handler]:
        return [entry.declaration for entry in self._entries]

    # ------------------------------------------------------------ checking

    def _problems_of(self, entry: _Entry) -> list[tuple[str, str, str]]:
        """(id, message, hint) for one declaration, apart from clashes."""
        d = entry.declaration
        where = f" (declared in {d.declared_by})" if d.declared_by else ""
        problems = []
        if entry.error is not None:
            problems.append(("notifications.E020", f"{entry.error}{where}.",
                             "Write parts as {name} or {name:type} with type int, uuid, slug or str."))
            return problems
        if isinstance(d, Handler):
            if not d.pattern.startswith(SEND_PREFIX):
                problems.append(("notifications.E021", f"The SEND handler {d.pattern!r}{where} is not under {SEND_PREFIX}.",
                                 f"Browsers send to {SEND_PREFIX}<name>, e.g. {SEND_PREFIX}orders.cancel."))
            if not callable(d.handler):
                problems.append(("notifications.E024", f"The handler of {d.pattern!r}{where} is not callable.",
                                 "Pass a function handler(user, body, **parts)."))
        else:
            if not d.pattern.startswith(SUBSCRIBE_PREFIXES):
                problems.append(("notifications.E021",
                                 f"The destination {d.pattern!r}{where} is not under {', '.join(SUBSCRIBE_PREFIXES)}.",
                                 f"Browsers subscribe to {', '.join(SUBSCRIBE_PREFIXES)}...; they send to {SEND_PREFIX}..."))
            problems.extend(self._topic_problems(entry, where))
            for name in ("permission", "snapshot", "filter", "resync"):
                value = getattr(d, name)
                if value is not None and not callable(value):
                    problems.append(("notifications.E024", f"The {name} of {d.pattern!r}{where} is not callable.",
                                     "Pass a function, or leave it out."))
            if d.seq is not None and d.key is None:
                problems.append(("notifications.E024", f"{d.pattern!r}{where} orders events by {d.seq!r} but names no key.",
                                 'Name the event field of the item, e.g. key="id".'))
        if isinstance(d, Handler) and d.permission is not None and not callable(d.permission):
            problems.append(("notifications.E024", f"The permission of {d.pattern!r}{where} is not callable.",
                             "Pass a function permission(user, **parts), or leave it out."))
        return problems

    def _topic_problems(self, entry: _Entry, where: str) -> list[tuple[str, str, str]]:
        d = entry.declaration
        if callable(d.topics):
            return []
        if d.topics is None:
            if d.pattern.startswith("/user/"):
                return [("notifications.E023", f"The destination {d.pattern!r}{where} names no broker topic.",
                         'A /user/ destination relays topics of its own: topics="/topic/orders.user.{user_id}".')]
            return []
        problems = []
        known = set(entry.pattern.names) | {"user_id"}
        for template in d.topics:
            if not isinstance(template, str) or not template.startswith(BROKER_PREFIXES):
                problems.append(("notifications.E023", f"The topic {template!r} of {d.pattern!r}{where} is not a broker destination.",
                                 "Brokers carry /topic/... and /queue/... destinations."))
                continue
            unknown = [f for f in _template_fields(template) if f not in known]
            if unknown:
                problems.append(("notifications.E023",
                                 f"The topic {template!r} of {d.pattern!r}{where} uses {', '.join(unknown)}, not a part of the pattern.",
                                 f"Use the pattern's parts ({', '.join(sorted(known))})."))
        return problems

    def check(self) -> list[Error]:
        """System check errors for every declaration (notifications.E020 to E024)."""
        errors = []
        seen: dict[tuple[str, str], Destination | Handler] = {}
        for entry in self._entries:
            for error_id, message, hint in self._problems_of(entry):
                errors.append(Error(message, hint=hint, id=error_id, obj=entry.declaration.pattern))
            if entry.pattern is None:
                continue
            kind = "send" if isinstance(entry.declaration, Handler) else "subscribe"
            other = seen.setdefault((kind, entry.pattern.shape), entry.declaration)
            if other is not entry.declaration:
                a, b = other.declared_by or "?", entry.declaration.declared_by or "?"
                errors.append(Error(
                    f"{entry.declaration.pattern!r} ({b}) clashes with {other.pattern!r} ({a}): "
                    "both match the same destinations.",
                    hint="Give one of them another name; the first one declared is the one used.",
                    id="notifications.E022",
                    obj=entry.declaration.pattern,
                ))
        return errors


registry = Registry()


def subscription(
    pattern: str,
    *,
    permission: Callable[..., bool] | None = None,
    snapshot: Callable[..., Any] | None = None,
    topics: str | Iterable[str] | Callable[..., Iterable[str]] | None = None,
    filter: Callable[[Any, dict], bool] | None = None,  # noqa: A002  (the word users know)
    key: str | None = None,
    seq: str | None = None,
    final: str | None = None,
    resync: Callable[..., Any] | None = None,
) -> Destination:
    """Declare a destination browsers may subscribe to (see Destination for every option)."""
    return registry.subscription(
        pattern, permission=permission, snapshot=snapshot, topics=topics, filter=filter,
        key=key, seq=seq, final=final, resync=resync, declared_by=_caller_module(),
    )


def handler(pattern: str, function: Callable | None = None, *, permission: Callable[..., bool] | None = None, body: str = ""):
    """Declare a SEND handler for ``/app/<name>``: ``handler(pattern, function)``, or as a decorator."""
    return registry.handler(pattern, function, permission=permission, body=body, declared_by=_caller_module())


def autodiscover() -> None:
    """Import every installed app's ``live`` module, where it declares its destinations."""
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("live")


def check_declarations(app_configs=None, **kwargs) -> list[Error]:
    """The system check of the process registry (registered by the notifications app)."""
    return registry.check()


# ---------------------------------------------------------------------------- publishing


def publish(
    destination: str,
    event: dict | list | str | bytes,
    *,
    coalesce_key: str | None = None,
    using: str | None = None,
    durable: bool = False,
) -> None:
    """Publish an event to a broker destination (``/topic/...`` or ``/queue/...``) from any process.

    Inside a transaction it goes out once the transaction commits (nothing is announced that a
    rollback undoes); otherwise at once. In a web process the hub's connection carries it, elsewhere
    the process publisher (reconnecting, buffering while the broker is away; ``coalesce_key``: a
    newer buffered event with the same key replaces an older one). Never raises for a broker
    problem: the database stays the source of truth. Raises ValueError for a destination browsers
    use but brokers do not carry (``/user/...``, ``/app/...``) and TypeError for an event that is
    not a dict, list, str or bytes.

    ``durable=True`` (sync code only; a JSON event: dict, list or str): the event is written to the
    outbox in the current transaction and published after the commit until the broker confirms it,
    even if this process dies first (notifications.outbox.publish_durable; no ``coalesce_key``).
    """
    if durable:
        if coalesce_key is not None:
            raise ValueError("A durable event is never coalesced: leave out coalesce_key")
        from .outbox import publish_durable

        publish_durable(destination, event, using=using)
        return
    if not isinstance(destination, str) or not destination.startswith(BROKER_PREFIXES):
        raise ValueError(
            f"Cannot publish to {destination!r}: publish to a broker destination such as /topic/orders.12 "
            "(browsers' /user/ and /app/ names are not broker destinations)"
        )
    if not isinstance(event, (dict, list, str, bytes, bytearray)):
        raise TypeError(f"Cannot publish a {type(event).__name__}; use a dict, a list, a str or bytes")
    from .publisher import publish_event

    def send() -> None:
        publish_event(destination, event, coalesce_key=coalesce_key)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:  # async code (a consumer, an async view) never holds an open transaction here
        send()
        return
    from django.db import DEFAULT_DB_ALIAS, connections, transaction

    # Outside a transaction on_commit would run it at once too, but only after opening a
    # database connection to ask about autocommit: code that never used the database (a
    # thread of a web process, a script) need not.
    if not connections[using or DEFAULT_DB_ALIAS].in_atomic_block:
        send()
        return
    transaction.on_commit(send, using=using)

