"""{% live_notifications %}: an unread counter, a list and live toasts on any page.

The counter and the newest notifications are rendered here, from the database, so a page is
right at load without JavaScript (and "Mark all read" is a plain form); the module
live-notifications.js then keeps it live over STOMP.
"""
from __future__ import annotations

from django import template
from django.middleware.csrf import get_token
from django.templatetags.static import static
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from notifications import api

__all__ = ["live_notifications"]

register = template.Library()

# How many of the newest notifications the panel shows at load.
PANEL_SIZE = 10


def _item(n) -> SafeString:
    title = format_html('<a href="{}" data-read="{}">{}</a>', n.link, n.pk, n.title) if n.link else n.title
    text = format_html('<div class="ln-text">{}</div>', n.text) if n.text else ""
    mark = (
        ""
        if n.read or n.recipient_id is None
        else format_html(
            '<button type="button" class="ln-read" data-read="{}" title="Mark as read">Mark read</button>', n.pk
        )
    )
    return format_html(
        '<li class="ln-item ln-{level}{unread}" data-id="{id}"><div class="ln-title">{title}</div>{text}'
        '<div class="ln-meta"><time datetime="{iso}">{when}</time>{mark}</div></li>',
        level=n.level,
        unread="" if n.read or n.recipient_id is None else " ln-unread",
        id=n.pk,
        title=title,
        text=text,
        iso=n.created.isoformat(),
        when=n.created.strftime("%H:%M:%S"),
        mark=mark,
    )


@register.simple_tag(takes_context=True)
def live_notifications(context) -> SafeString:
    """The bell with the unread count, the list of newest notifications and the toast area."""
    request = context.get("request")
    user = getattr(request, "user", None) or context.get("user")
    if user is None or not user.is_authenticated:
        return mark_safe("")
    items = api.recent(user, limit=PANEL_SIZE)
    unread = api.unread_count(user)
    newest = max((n.pk for n in items), default=0)
    listing = format_html_join("", "{}", ((_item(n),) for n in items)) or mark_safe(
        '<li class="ln-empty">No notifications yet.</li>'
    )
    read_url = reverse("notifications:mark_read")
    csrf = get_token(request) if request is not None else ""
    return format_html(
        '<link rel="stylesheet" href="{ui_css}"><link rel="stylesheet" href="{css}">'
        '<div class="live-notifications{has}" data-live-notifications data-list-url="{list_url}" '
        'data-read-url="{read_url}" data-csrf="{csrf}" data-newest="{newest}">'
        '<details class="ln-panel"><summary title="Notifications">'
        '<svg class="ln-bell" aria-hidden="true" viewBox="0 0 24 24" width="20" height="20"><path fill="currentColor" '
        'd="M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22Zm7-6V11a7 7 0 0 0-5.5-6.84V3.5a1.5 1.5 0 0 0-3 0v.66'
        'A7 7 0 0 0 5 11v5l-2 2v1h18v-1l-2-2Z"/></svg><span class="visually-hidden">Notifications</span>'
        '<span class="ln-badge" data-unread="{unread}"{hidden}>{unread_text}</span></summary>'
        '<div class="ln-dropdown"><div class="ln-head"><strong>Notifications</strong>'
        '<form method="post" action="{read_url}" class="ln-mark-all">'
        '<input type="hidden" name="csrfmiddlewaretoken" value="{csrf}"><input type="hidden" name="all" value="1">'
        '<button type="submit">Mark all read</button></form></div>'
        '<ul class="ln-list">{listing}</ul></div></details></div>'
        '<div class="ln-toasts" role="status" aria-live="polite"></div>'
        '<script type="module" src="{js}"></script>',
        ui_css=static("notifications/ui.css"),
        css=static("notifications/notifications.css"),
        has=" ln-has-unread" if unread else "",
        list_url=f"{reverse('notifications:list')}?limit=20",
        read_url=read_url,
        csrf=csrf,
        newest=newest,
        unread=unread,
        hidden=mark_safe("") if unread else mark_safe(" hidden"),
        unread_text="99+" if unread > 99 else unread,
        listing=listing,
        js=static("notifications/live-notifications.js"),
    )

