"""WebSocket routing of the notifications app: /ws/stomp/ behind the session and an origin check."""
from __future__ import annotations

from importlib import import_module
from types import SimpleNamespace

from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.security.websocket import OriginValidator
from django.http.cookie import parse_cookie
from django.urls import path

from . import conf
from .consumers import StompConsumer

__all__ = ["websocket_urlpatterns", "SiteOriginValidator", "SessionAuthMiddleware", "websocket_application"]

websocket_urlpatterns = [
    path("ws/stomp/", StompConsumer.as_asgi(), name="stomp"),
]


class SiteOriginValidator(OriginValidator):
    """Browsers may open the socket from the site's own hosts (ALLOWED_HOSTS) or NOTIFICATIONS["ALLOWED_ORIGINS"].

    Both lists are read on every handshake, so the settings fixture of tests applies. A
    handshake without an Origin header is let through: browsers always send one, so it comes
    from a program (node, a test), which has to present a session cookie of its own anyway.
    """

    def __init__(self, application):
        super().__init__(application, allowed_origins=[])

    @property
    def allowed_origins(self) -> list[str]:
        from django.conf import settings

        hosts = list(settings.ALLOWED_HOSTS)
        if settings.DEBUG and not hosts:
            hosts = [".localhost", "127.0.0.1", "[::1]"]  # what Django's host validation allows then
        return hosts + list(conf.get("ALLOWED_ORIGINS"))

    @allowed_origins.setter
    def allowed_origins(self, value) -> None:  # OriginValidator.__init__ assigns it
        pass

    def valid_origin(self, parsed_origin) -> bool:
        if parsed_origin is None:
            return True
        return self.validate_origin(parsed_origin)


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
