"""System checks for the NOTIFICATIONS settings (ids notifications.E0xx)."""
from __future__ import annotations

from urllib.parse import urlsplit

from django.core.checks import Error, register

from . import conf

__all__ = ["check_settings", "check_live_delivery", "check_embedded_broker"]


@register()
def check_settings(app_configs=None, **kwargs):
    errors = []
    try:
        conf.broker_url()
    except ValueError as exc:
        errors.append(
            Error(
                str(exc),
                hint="Set NOTIFICATIONS['BROKER_URL'] or the STOMP_BROKER_URL environment variable.",
                id="notifications.E001",
            )
        )
    return errors


def _number(key: str, *, minimum: float, allow_zero: bool) -> Error | None:
    value = conf.get(key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and (value > minimum or (allow_zero and value == 0)):
        return None
    need = f"a number greater than {minimum:g}" + (" (or 0 to disable)" if allow_zero else "")
    return Error(f"NOTIFICATIONS['{key}'] is {value!r}; it must be {need}.", id="notifications.E002")


@register()
def check_live_delivery(app_configs=None, **kwargs):
    """The WebSocket side: heart-beats, session re-checks, reconnect backoff, allowed origins."""
    errors = []
    for key, minimum, allow_zero in (
        ("HEARTBEAT_MS", 0, True),
        ("SESSION_RECHECK_SECONDS", 0, False),
        ("RECONNECT_MIN", 0, False),
        ("RECONNECT_MAX", 0, False),
    ):
        error = _number(key, minimum=minimum, allow_zero=allow_zero)
        if error is not None:
            errors.append(error)
    low, high = conf.get("RECONNECT_MIN"), conf.get("RECONNECT_MAX")
    if not errors and low > high:
        errors.append(
            Error(
                f"NOTIFICATIONS['RECONNECT_MIN'] ({low}) is larger than RECONNECT_MAX ({high}).",
                id="notifications.E003",
            )
        )
    origins = conf.get("ALLOWED_ORIGINS")
    if not isinstance(origins, (list, tuple)) or not all(isinstance(o, str) for o in origins):
        errors.append(
            Error(
                f"NOTIFICATIONS['ALLOWED_ORIGINS'] is {origins!r}; it must be a list of origins.",
                hint='For example ["https://app.example.com"].',
                id="notifications.E004",
            )
        )
    else:
        for origin in origins:
            parts = urlsplit(origin)
            if origin != "*" and not (parts.scheme in {"http", "https"} and parts.hostname) and "://" in origin:
                errors.append(
                    Error(
                        f"NOTIFICATIONS['ALLOWED_ORIGINS'] entry {origin!r} is not an origin.",
                        hint='Write scheme://host[:port] like "https://app.example.com", or a bare host.',
                        id="notifications.E004",
                    )
                )
    return errors


@register()
def check_embedded_broker(app_configs=None, **kwargs):
    """NOTIFICATIONS['EMBEDDED_BROKER'] (what `manage.py stompbroker` runs with): ids notifications.E03x."""
    settings = conf.get("EMBEDDED_BROKER")
    errors = []
    for key, unit in (("MAX_MEMORY", "bytes"), ("FRAME_TIMEOUT", "seconds")):
        value = settings.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            errors.append(
                Error(
                    f"NOTIFICATIONS['EMBEDDED_BROKER']['{key}'] is {value!r}; it must be a positive number of {unit}.",
                    hint=f"Leave it out for the default ({conf.DEFAULTS['EMBEDDED_BROKER'][key]!r}).",
                    id="notifications.E030",
                )
            )
    return errors
