"""WebSocket routing of the notifications app: /ws/stomp/ behind the session and an origin check."""
from __future__ import annotations

import logging
from importlib import import_module
from types import SimpleNamespace
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.security.websocket import OriginValidator, WebsocketDenier
from django.http.cookie import parse_cookie
from django.http.request import split_domain_port, validate_host
from django.urls import path
from django.utils.http import is_same_domain

from . import conf
from .consumers import StompConsumer

__all__ = ["websocket_urlpatterns", "SiteOriginValidator", "SessionAuthMiddleware", "websocket_application"]

logger = logging.getLogger(__name__)

websocket_urlpatterns = [
    path("ws/stomp/", StompConsumer.as_asgi(), name="stomp"),
]


class SiteOriginValidator(OriginValidator):
    """Browsers may open the socket only from an origin Django's CSRF check would accept.

    As django.middleware.csrf does for a POST: the Origin must be the socket's own origin
    (http or https as the socket is ws or wss, behind a proxy as SECURE_PROXY_SSL_HEADER says,
    and the Host header, which must be one of ALLOWED_HOSTS), or one of CSRF_TRUSTED_ORIGINS or
    NOTIFICATIONS["ALLOWED_ORIGINS"] ("https://app.example.com", "https://*.example.com"):
    scheme, host and port all count. A bare host in ALLOWED_ORIGINS stands for its http and
    https origins on the default ports; "*" allows any origin. Settings are read on every
    handshake. A handshake without an Origin header is let through: browsers always send one,
    so it comes from a program (node, a test), which has to present a session cookie anyway.
    """

    def __init__(self, application):
        super().__init__(application, allowed_origins=[])

    @property
    def allowed_origins(self) -> list[str]:
        from django.conf import settings

        origins = []
        for origin in [*settings.CSRF_TRUSTED_ORIGINS, *conf.get("ALLOWED_ORIGINS")]:
            if origin == "*" or "://" in origin:
                origins.append(origin)
            else:
                origins += [f"http://{origin}", f"https://{origin}"]
        return origins

    @allowed_origins.setter
    def allowed_origins(self, value) -> None:  # OriginValidator.__init__ assigns it
        pass

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            raise ValueError("SiteOriginValidator guards WebSocket connections only")
        origin = _header(scope, b"origin")
        if origin is None or self.origin_allowed(origin, scope):
            return await self.application(scope, receive, send)
        logger.warning("WebSocket refused: Origin %s is neither this site (%s) nor a trusted origin", origin, _own_origin(scope))
        return await WebsocketDenier()(scope, receive, send)

    def origin_allowed(self, origin: str, scope: dict) -> bool:
        """Django's CsrfViewMiddleware._origin_verified, for a WebSocket handshake."""
        if origin == _own_origin(scope):
            return True
        allowed = self.allowed_origins
        if "*" in allowed or origin in allowed:
            return True
        try:
            parsed = urlsplit(origin)
        except ValueError:
            return False
        return any(
            is_same_domain(parsed.netloc, pattern.netloc.lstrip("*"))
            for pattern in (urlsplit(o) for o in allowed if "*" in o)
            if pattern.scheme == parsed.scheme
        )


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            try:
                return value.decode("latin1")
            except UnicodeDecodeError:
                return None
    return None


def _own_origin(scope: dict) -> str | None:
    """The origin a page of this site has when it opens this socket, or None (Host not allowed)."""
    from django.conf import settings

    host = _header(scope, b"host")
    if not host:
        return None
    domain, _port = split_domain_port(host)
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]  # what Django's host validation allows then
    if not domain or not validate_host(domain, allowed_hosts):
        return None
    secure = scope.get("scheme") == "wss"
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if proxy:
        header, secure_value = proxy
        name = header.lower().removeprefix("http_").replace("_", "-").encode("latin1")
        forwarded = _header(scope, name)
        if forwarded is not None:
            secure = forwarded.split(",", 1)[0].strip() == secure_value
    return f"{'https' if secure else 'http'}://{host}"


def _session_and_user(session_key: str | None):
    from django.conf import settings
    from django.contrib.auth import get_user

    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    # django.contrib.auth.get_user reads only request.session: the same checks as a page
    # request (backend, session hash of the password, its fallbacks).
    return session, get_user(SimpleNamespace(session=session))


class SessionAuthMiddleware:
    """scope["cookies"], scope["session"] and scope["user"], resolved once at the handshake.

    What Channels' AuthMiddlewareStack provides, minus its wrapping of every outgoing message
    (there to save a modified session): this endpoint never writes the session, and that
    wrapper cost a noticeable share of the CPU per delivered event.
    """

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        from django.conf import settings

        cookies: dict[str, str] = {}
        for name, value in scope.get("headers", ()):
            if name == b"cookie":
                cookies.update(parse_cookie(value.decode("latin1")))
        session, user = await database_sync_to_async(_session_and_user)(cookies.get(settings.SESSION_COOKIE_NAME))
        scope = {**scope, "cookies": cookies, "session": session, "user": user}
        return await self.application(scope, receive, send)


def websocket_application():
    """The ASGI app for the "websocket" protocol: origin check, session and user, then the router."""
    return SiteOriginValidator(SessionAuthMiddleware(URLRouter(websocket_urlpatterns)))
