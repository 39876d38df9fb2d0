"""WebSocket routing of the notifications app: /ws/stomp/ behind the session and an origin check."""
from __future__ import annotations

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import OriginValidator
from django.urls import path

from . import conf
from .consumers import StompConsumer

__all__ = ["websocket_urlpatterns", "SiteOriginValidator", "websocket_application"]

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


def websocket_application():
    """The ASGI app for the "websocket" protocol: origin check, session and user, then the router."""
    return SiteOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
