"""ASGI applications and a URLconf as projects write them, for the installation checks' tests.

ROOT_URLCONF may point here: `urlpatterns` is a project's URLconf without the apps' URLs.
"""
from __future__ import annotations

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from channels.sessions import SessionMiddlewareStack
from django.core.asgi import get_asgi_application
from django.urls import path

from notifications.asgi import get_asgi_application as live_asgi_application
from notifications.routing import websocket_urlpatterns

urlpatterns: list = []


class ChatConsumer(AsyncWebsocketConsumer):
    """A project's own WebSocket consumer."""


async def opaque_websocket_app(scope, receive, send):
    """A plain ASGI callable: what it routes cannot be seen from outside."""


# startproject's asgi.py: Django over HTTP only.
django_only = get_asgi_application()
# The README's one line.
with_helper = live_asgi_application()
# A project routing its own consumer and the apps' endpoint behind Channels' middleware.
own_and_live_routes = ProtocolTypeRouter({
    "http": django_only,
    "websocket": AllowedHostsOriginValidator(SessionMiddlewareStack(URLRouter([
        path("ws/chat/", ChatConsumer.as_asgi()),
        *websocket_urlpatterns,
    ]))),
})
# ... and one that forgot the apps' endpoint.
own_routes_only = ProtocolTypeRouter({
    "http": django_only,
    "websocket": URLRouter([path("ws/chat/", ChatConsumer.as_asgi())]),
})
http_router_only = ProtocolTypeRouter({"http": django_only})
opaque = ProtocolTypeRouter({"http": django_only, "websocket": opaque_websocket_app})
