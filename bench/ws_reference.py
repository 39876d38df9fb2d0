"""The reference bench/ws_bench.py compares against: live job events through Channels' own group
messaging (channels_redis on the local Redis), the way a Django developer would otherwise do it.

    daphne -b 127.0.0.1 -p PORT ws_reference:application      (with bench/ on PYTHONPATH)

A WebSocket at /?job=<id> joins the group "job.<id>" and receives every event sent to it as
a text frame; any other WebSocket joins its own group (its user's notifications, idle here).
`produce()` is the worker's side: group_send of the same event JSON.

Configured as a careful user would: channels_redis' defaults (capacity 100 per channel, expiry
60 s), except redis-py's socket timeout. redis-py 5+ defaults to socket_timeout=5 s, and
channels_redis waits on each channel with a blocking pop of 5 s (brpop_timeout): when the pop
returns empty at the same moment the socket timeout fires, the receive raises TimeoutError and
the consumer crashes (about one crash every 5 s per process in issue 13's runs, each closing a
socket). socket_timeout=None lets the blocking pop end by itself; connecting still times out
after 5 s. BENCH_REDIS_SOCKET_TIMEOUT=5 restores redis-py's default to show the difference.
"""
from __future__ import annotations

import os
from urllib.parse import parse_qs

import django
from django.conf import settings

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def _socket_timeout() -> float | None:
    value = os.environ.get("BENCH_REDIS_SOCKET_TIMEOUT", "none").strip().lower()
    return None if value in {"", "none"} else float(value)


if not settings.configured:
    settings.configure(
        SECRET_KEY="bench-only",
        INSTALLED_APPS=["channels"],
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {
                    "hosts": [{"address": REDIS_URL, "socket_timeout": _socket_timeout(), "socket_connect_timeout": 5}],
                    "prefix": os.environ.get("BENCH_REDIS_PREFIX", "wsbench"),
                },
            }
        },
    )
    django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter  # noqa: E402


class JobEventsConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        query = parse_qs(self.scope.get("query_string", b"").decode())
        job = query.get("job", [None])[0]
        self.group = f"job.{job}" if job else f"user.{query.get('user', ['0'])[0]}"
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code) -> None:
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def job_event(self, message: dict) -> None:
        await self.send(text_data=message["text"])


application = ProtocolTypeRouter({"websocket": JobEventsConsumer.as_asgi()})
