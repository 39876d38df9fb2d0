"""daphne's application in bench/ws_bench.py's run of the product: project.asgi, plus GET /bench/stats.

/bench/stats answers this web process's own counters as JSON, without the database (the
benchmark polls it a few times a second): messages its mailboxes merged ("coalesced": a socket
at least COALESCE_AFTER messages behind gets an item's latest state only, by design), sockets
closed for falling too far behind, open sockets, and the hub's counts. The benchmark reads it
to tell events merged by design from events lost in the web process. Never used outside bench/.
"""
from __future__ import annotations

import json

from project.asgi import application as project_application

__all__ = ["application"]


def _stats() -> dict:
    from notifications import consumers
    from notifications.hub import current_hub

    sockets = [c for c in list(consumers._open) if getattr(c, "mailbox", None) is not None]
    hub = current_hub()
    return {
        "sockets": len(sockets),
        "coalesced": sum(c.mailbox.coalesced for c in sockets),
        "pending": sum(len(c.mailbox) for c in sockets),
        "overflows": consumers.stats.overflows,
        "hub_messages_received": hub.stats.messages_received if hub else None,
        "hub_deliveries": hub.stats.deliveries if hub else None,
    }


async def application(scope, receive, send):
    if scope["type"] == "http" and scope.get("path") == "/bench/stats":
        body = json.dumps(_stats()).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return
    await project_application(scope, receive, send)
