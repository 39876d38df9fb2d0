"""The reference bench/ws_bench.py compares against: live job events through Channels' own group
messaging (channels_redis on the local Redis), the way a Django developer would otherwise do it.

    daphne -b 127.0.0.1 -p PORT ws_reference:application      (with bench/ on PYTHONPATH)

A WebSocket at /?job=<id> joins the group "job.<id>" and receives every event sent to it as
a text frame; any other WebSocket joins its own group (its user's notifications, idle here).
`produce()` is the worker's side: group_send of the same event JSON.
"""
from __future__ import annotations

import os
from urllib.parse import parse_qs

import django
from django.conf import settings

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

if not settings.configured:
    settings.configure(
        SECRET_KEY="bench-only",
        INSTALLED_APPS=["channels"],
        CHANNEL_LAYERS={
            "default": {
                # channels_redis' defaults (capacity 100 per channel, expiry 60 s): what one gets.
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {"hosts": [REDIS_URL], "prefix": os.environ.get("BENCH_REDIS_PREFIX", "wsbench")},
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
