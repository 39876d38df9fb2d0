"""JSON views for the logged-in user's notifications: the list and mark-as-read (CSRF protected)."""
from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from . import api
from .models import Notification

__all__ = ["notification_list", "mark_read"]


def _login_required_json(request: HttpRequest) -> JsonResponse | None:
    if not request.user.is_authenticated:
        return JsonResponse({"error": "Log in to see notifications."}, status=403)
    return None


# Notifications one page of ?after= returns at most.
AFTER_PAGE_MAX = 200


@require_GET
def notification_list(request: HttpRequest) -> JsonResponse:
    """GET ?unread=1&limit=20 -> {"unread": n, "notifications": [event, ...]} newest first.

    GET ?after=<id>&limit=100 -> the user's notifications (own and broadcasts) with a larger id,
    oldest first, and "more": true when there are others after them: what a page that was away
    fetches, page by page, to show everything it missed.
    """
    if (denied := _login_required_json(request)) is not None:
        return denied
    try:
        limit = int(request.GET.get("limit", "20"))
        after = int(request.GET["after"]) if "after" in request.GET else None
    except ValueError:
        return JsonResponse({"error": "limit and after must be integers"}, status=400)
    if after is not None:
        limit = max(1, min(limit, AFTER_PAGE_MAX))
        rows = list(Notification.objects.for_user(request.user).filter(pk__gt=after).order_by("pk")[: limit + 1])
        return JsonResponse(
            {
                "unread": api.unread_count(request.user),
                "notifications": [n.to_event() for n in rows[:limit]],
                "more": len(rows) > limit,
            }
        )
    unread_only = request.GET.get("unread") in {"1", "true", "yes"}
    items = api.recent(request.user, limit=limit, unread_only=unread_only)
    return JsonResponse(
        {
            "unread": api.unread_count(request.user),
            "notifications": [n.to_event() for n in items],
        }
    )


@require_POST
def mark_read(request: HttpRequest) -> JsonResponse:
    """POST ids=1&ids=2, or all=1 (form or JSON {"ids": [..]} / {"all": true}) -> {"marked": n, "unread": n}."""
    if (denied := _login_required_json(request)) is not None:
        return denied
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body or b"{}")
        except ValueError:
            return JsonResponse({"error": "The body is not valid JSON."}, status=400)
        if not isinstance(data, dict):
            return JsonResponse({"error": 'Send {"ids": [1, 2]} or {"all": true}.'}, status=400)
        mark_all = data.get("all") is True
        ids = data.get("ids")
        if ids is None and "id" in data:
            ids = [data["id"]]
    else:
        mark_all = request.POST.get("all") in {"1", "true", "on", "yes"}
        ids = request.POST.getlist("ids") or request.POST.getlist("id") or None
    if not mark_all and not ids:
        return JsonResponse({"error": 'Say which notifications: ids, or all.'}, status=400)
    if not mark_all and not isinstance(ids, list):
        return JsonResponse({"error": "ids must be a list of integers."}, status=400)
    try:
        marked = api.mark_read(request.user, None if mark_all else ids)
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse({"marked": marked, "unread": api.unread_count(request.user)})
