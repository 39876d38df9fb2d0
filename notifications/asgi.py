"""One call for a project's asgi.py: Django over HTTP, the live STOMP-over-WebSocket endpoint over WebSocket.

    from notifications.asgi import get_asgi_application   # instead of django.core.asgi's
    application = get_asgi_application()

This module imports nothing of Django's app registry at import time, so the line above may stand
where Django's own import stood, before the settings are set up.
"""
from __future__ import annotations

__all__ = ["get_asgi_application"]


def get_asgi_application(http_application=None):
    """Django's ASGI application for HTTP and the live endpoint (/ws/stomp/) for WebSocket.

    A drop-in for django.core.asgi.get_asgi_application(): it sets Django up the same way, then
    builds a Channels ProtocolTypeRouter. Pass `http_application` to keep an HTTP application
    of your own (e.g. Django's wrapped in a middleware); Django must be set up by then.
    A project with WebSocket routes of its own routes them next to
    notifications.routing.websocket_application() instead.
    """
    if http_application is None:
        from django.apps import apps

        if apps.ready:
            # Django is set up already (a system check importing the project's ASGI module, a
            # test): setting it up again would configure logging a second time and replace the
            # handlers the running process installed.
            from django.core.handlers.asgi import ASGIHandler

            http_application = ASGIHandler()
        else:
            from django.core.asgi import get_asgi_application as django_asgi_application

            http_application = django_asgi_application()
    # Only now: the routing imports the consumer, which needs the app registry ready.
    from channels.routing import ProtocolTypeRouter

    from .routing import websocket_application

    return ProtocolTypeRouter({"http": http_application, "websocket": websocket_application()})
