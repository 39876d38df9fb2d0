"""System checks for the NOTIFICATIONS settings and for a project's wiring of the live endpoint.

Ids: notifications.E001-E009 for the settings, E03x for the embedded broker's, E040-E049 and
W040-W049 for what a project adds when it installs the apps (INSTALLED_APPS, the ASGI
application, the URLs; every message names the line to add or fix). E020-E024 are the live
registry's (notifications.live), E05x the outbox's (notifications.outbox).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
from os import PathLike
from urllib.parse import urlsplit

from django.core.checks import Error, Warning, register

from . import conf

__all__ = [
    "check_settings",
    "check_live_delivery",
    "check_embedded_broker",
    "check_installation",
    "check_asgi_application",
    "settings_module",
    "settings_package",
    "unroutable",
]


def _configured():
    from django.conf import settings

    return getattr(settings, "NOTIFICATIONS", {}) or {}


@register()
def check_settings(app_configs=None, **kwargs):
    configured = _configured()
    if not isinstance(configured, dict):
        return [
            Error(
                f"NOTIFICATIONS is a {type(configured).__name__}; it must be a dict.",
                hint='For example NOTIFICATIONS = {"BROKER_URL": "stomp://127.0.0.1:61613"}.',
                id="notifications.E005",
            )
        ]
    errors = []
    unknown = sorted(map(str, set(configured) - set(conf.DEFAULTS)))
    if unknown:
        errors.append(
            Error(
                f"Unknown NOTIFICATIONS key(s): {', '.join(unknown)}.",
                hint=f"Known keys: {', '.join(sorted(conf.DEFAULTS))}.",
                id="notifications.E006",
            )
        )
    try:
        conf.broker_url()
    except ValueError as exc:
        errors.append(
            Error(
                str(exc),
                hint="Set NOTIFICATIONS['BROKER_URL'] to stomp://[user:pass@]host[:port][/vhost].",
                id="notifications.E001",
            )
        )
    except (TypeError, AttributeError):
        errors.append(
            Error(
                f"NOTIFICATIONS['BROKER_URL'] is {conf.get('BROKER_URL')!r}; it must be a URL such as "
                "'stomp://127.0.0.1:61613'.",
                id="notifications.E001",
            )
        )
    buffer = conf.get("PUBLISHER_BUFFER")
    if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
        errors.append(
            Error(
                f"NOTIFICATIONS['PUBLISHER_BUFFER'] is {buffer!r}; it must be a whole number of at least 1.",
                id="notifications.E002",
            )
        )
    errors.extend(_check_embedded_broker())
    return errors


def _check_embedded_broker() -> list[Error]:
    """notifications.E007 for an EMBEDDED_BROKER that `manage.py stompbroker` could not use."""
    value = _configured().get("EMBEDDED_BROKER", {})
    if not isinstance(value, dict):
        return [Error(f"NOTIFICATIONS['EMBEDDED_BROKER'] is {value!r}; it must be a dict.",
                      hint=f"Keys: {', '.join(conf.DEFAULTS['EMBEDDED_BROKER'])}.", id="notifications.E007")]
    problems = []
    unknown = sorted(map(str, set(value) - set(conf.DEFAULTS["EMBEDDED_BROKER"])))
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(conf.DEFAULTS['EMBEDDED_BROKER'])})")
    broker = conf.get("EMBEDDED_BROKER")
    if not isinstance(broker["HOST"], str) or not broker["HOST"]:
        problems.append(f"HOST is {broker['HOST']!r}, not an address such as '127.0.0.1'")
    port = broker["PORT"]
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        problems.append(f"PORT is {port!r}, not a port number from 1 to 65535")
    users = broker["USERS"]
    if not isinstance(users, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in users.items()):
        problems.append(f"USERS is {users!r}, not a dict of login to passcode strings")
    data_file = broker["DATA_FILE"]
    if data_file is not None and not isinstance(data_file, (str, PathLike)):
        problems.append(f"DATA_FILE is {data_file!r}, not None or a file path")
    return [
        Error(f"NOTIFICATIONS['EMBEDDED_BROKER']: {problem}.", id="notifications.E007") for problem in problems
    ]


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
    if not isinstance(_configured(), dict):
        return []  # notifications.E005 says it
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
    if not isinstance(_configured(), dict) or not isinstance(_configured().get("EMBEDDED_BROKER", {}), dict):
        return []  # notifications.E005 / E007 say it
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
    certfile, keyfile = settings.get("CERTFILE"), settings.get("KEYFILE")
    if keyfile and not certfile:
        errors.append(
            Error(
                "NOTIFICATIONS['EMBEDDED_BROKER']['KEYFILE'] is set without CERTFILE.",
                hint="Set CERTFILE to the PEM certificate chain the key belongs to.",
                id="notifications.E031",
            )
        )
    for key, path in (("CERTFILE", certfile), ("KEYFILE", keyfile)):
        if path and not os.path.isfile(path):
            errors.append(
                Error(
                    f"NOTIFICATIONS['EMBEDDED_BROKER']['{key}'] is {str(path)!r}, which is not a file.",
                    hint="Give the path of a PEM file readable by the broker process.",
                    id="notifications.E031",
                )
            )
    return errors


def settings_module() -> str | None:
    """The dotted path of the settings module in use ("mysite.settings"), if known."""
    from django.conf import ENVIRONMENT_VARIABLE, settings

    # Under override_settings the holder has no SETTINGS_MODULE; the environment still names it.
    return getattr(settings, "SETTINGS_MODULE", None) or os.environ.get(ENVIRONMENT_VARIABLE) or None


def settings_package() -> str:
    """"mysite" for mysite.settings: where startproject put asgi.py and urls.py."""
    return (settings_module() or "mysite.settings").rpartition(".")[0] or "mysite"


@register()
def check_installation(app_configs=None, **kwargs):
    """What a project adds to run the live endpoint: daphne for runserver, ASGI_APPLICATION, the URLs."""
    from django.apps import apps
    from django.conf import settings

    errors = []
    if not apps.is_installed("daphne"):
        errors.append(
            Warning(
                "'daphne' is not in INSTALLED_APPS, so `manage.py runserver` serves no WebSocket and pages "
                "do not update live during development.",
                hint="Add 'daphne' at the top of INSTALLED_APPS (or serve the site with an ASGI server, e.g. "
                f"`daphne {settings_package()}.asgi:application`).",
                id="notifications.W040",
            )
        )
    elif not getattr(settings, "ASGI_APPLICATION", None):
        errors.append(
            Error(
                "ASGI_APPLICATION is not set, so `manage.py runserver` (daphne) cannot start.",
                hint=f'Add ASGI_APPLICATION = "{settings_package()}.asgi.application" to your settings.',
                id="notifications.E040",
            )
        )
    if unroutable("notifications:list"):
        errors.append(
            Warning(
                "The notifications URLs are not in ROOT_URLCONF, so {% live_notifications %} cannot render "
                "(no list or mark-read URL).",
                hint=f'Add path("notifications/", include("notifications.urls")) to urlpatterns in '
                f"{getattr(settings, 'ROOT_URLCONF', 'your URLconf')}.",
                id="notifications.W041",
            )
        )
    return errors


def unroutable(name: str) -> bool:
    """True when `name` cannot be reversed; a broken URLconf is Django's own check (urls.E...)."""
    from django.conf import settings
    from django.urls import NoReverseMatch, reverse

    if not getattr(settings, "ROOT_URLCONF", None):
        return False
    try:
        reverse(name)
    except NoReverseMatch:
        return True
    except Exception:  # noqa: BLE001 (the URLconf does not import: reported by Django itself)
        return False
    return False


def _asgi_application_path() -> str | None:
    """ASGI_APPLICATION, else startproject's <package>.asgi.application when that module exists."""
    from django.conf import settings

    path = getattr(settings, "ASGI_APPLICATION", None)
    if path:
        return str(path)
    candidate = f"{settings_package()}.asgi"
    try:
        found = importlib.util.find_spec(candidate) is not None
    except (ImportError, ValueError):
        found = False
    return f"{candidate}.application" if found else None


@register()
def check_asgi_application(app_configs=None, **kwargs):
    """The project's ASGI application must route WebSockets to the live endpoint (/ws/stomp/).

    The application is imported, as daphne and runserver do; what it routes is found by walking
    Channels' routers and middleware (their `application_mapping`, `application`, `inner`,
    `routes`) down to a consumer of this app.
    """
    path = _asgi_application_path()
    if path is None:
        return []  # no ASGI application to look at: notifications.W040/E020 cover runserver
    module_name, _, attribute = path.rpartition(".")
    fix = (
        f"In {module_name.replace('.', '/')}.py, import get_asgi_application from notifications.asgi instead of "
        "django.core.asgi (application = get_asgi_application()), or route "
        'notifications.routing.websocket_application() under "websocket" in your ProtocolTypeRouter.'
    )
    try:
        with _logging_kept():
            application = getattr(importlib.import_module(module_name), attribute)
    except Exception as exc:  # noqa: BLE001 (whatever the project's module raises, say it)
        return [
            Error(
                f"The ASGI application {path} cannot be loaded: {type(exc).__name__}: {exc}",
                hint="ASGI_APPLICATION must name a module attribute, e.g. \"mysite.asgi.application\".",
                id="notifications.E041",
            )
        ]
    routed = _routes_live_endpoint(application)
    if routed is False:
        return [
            Error(
                f"The ASGI application {path} does not route WebSockets to the live endpoint (/ws/stomp/), "
                "so pages never update live.",
                hint=fix,
                id="notifications.E042",
            )
        ]
    if routed is None:
        return [
            Warning(
                f"Could not tell whether the ASGI application {path} routes WebSockets to the live endpoint "
                "(/ws/stomp/): it wraps it in something this check cannot look into.",
                hint=fix + " Silence this with SILENCED_SYSTEM_CHECKS = [\"notifications.W042\"] once it works.",
                id="notifications.W042",
            )
        ]
    return []


@contextlib.contextmanager
def _logging_kept():
    """Undo what importing a project's ASGI module does to logging in this process.

    A module calling django.core.asgi.get_asgi_application() runs django.setup() again, which
    configures logging again: the root logger's handlers are replaced (and, with
    disable_existing_loggers, loggers created so far are disabled). A check must not change how
    the process that runs it (runserver, a worker, a test) logs.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    disabled = {
        name: logger.disabled
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, was in disabled.items():
            logger = logging.Logger.manager.loggerDict.get(name)
            if isinstance(logger, logging.Logger):
                logger.disabled = was


_PACKAGE = __name__.rpartition(".")[0]


def _routes_live_endpoint(application) -> bool | None:
    """True: a WebSocket reaches this app's consumer; False: none can; None: something opaque is in the way."""
    opaque = False
    stack, seen = [application], set()
    while stack and len(seen) < 500:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        consumer = getattr(node, "consumer_class", None)
        if isinstance(consumer, type):
            if consumer.__module__ == _PACKAGE or consumer.__module__.startswith(_PACKAGE + "."):
                return True
            continue  # another app's consumer: understood, not ours
        children = _children(node)
        if children is None:
            opaque = True
        else:
            stack.extend(children)
    return None if opaque else False


def _children(node) -> list | None:
    """What `node` passes WebSocket connections to; None when it is not a router or middleware known here."""
    from django.core.handlers.asgi import ASGIHandler

    if isinstance(node, ASGIHandler):
        return []  # Django over HTTP: no WebSocket
    mapping = getattr(node, "application_mapping", None)
    if isinstance(mapping, dict):  # Channels' ProtocolTypeRouter
        return [mapping["websocket"]] if "websocket" in mapping else []
    routes = getattr(node, "routes", None)
    if isinstance(routes, (list, tuple)):  # Channels' URLRouter: path() and re_path() entries
        return [route.callback for route in routes if getattr(route, "callback", None) is not None]
    # Channels' middleware (BaseMiddleware.inner, OriginValidator.application) and the usual names
    children = [child for name in ("inner", "application", "app") if (child := getattr(node, name, None)) is not None]
    return children or None
