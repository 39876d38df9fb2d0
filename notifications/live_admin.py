"""LiveModelAdmin: a ModelAdmin mixin whose change list and change form follow the model's live events.

    from notifications.live_admin import LiveModelAdmin

    @admin.register(Order)
    class OrderAdmin(LiveModelAdmin, admin.ModelAdmin):
        list_display = ("id", "customer", "status")
        live_destination = "/topic/orders.all"        # declared in shop/live.py

The change list subscribes to ``live_destination``; when an event names an object shown on the
page (its ``live_key`` field holds the primary key), the page fetches itself again and swaps in
the fresh cells of the changed rows, so the columns look exactly as Django renders them (the
action checkboxes and the selection are kept). Objects not on the page are counted in a banner
("reload to see them"). The change form follows ``live_object_destination`` ("/topic/orders.{pk}")
or, without one, the events of ``live_destination`` about its object: read-only fields are
refreshed in place; if an editable field changed on the server, a banner says so and nothing
the user typed is touched. After a reconnect both refresh once from the server.

What it changes in the host class: ``media`` (one more module script, with the settings above in
its URL, and the stylesheets of the live widgets: the design system, the bell and toasts, their
admin mapping, the live admin's banner and highlight) and ``check()`` (notifications.E025 when a
destination is not declared). Set ``live_script`` to apply events with a script of your own (the
jobs admin does).
"""
from __future__ import annotations

from urllib.parse import urlencode

from django import forms
from django.core import checks
from django.templatetags.static import static

__all__ = ["LiveModelAdmin"]

# The live widgets' styles, in this order, as every live admin page (the jobs admin's too) uses
# them: the design system and the bell and toasts (class-scoped, safe in the admin), then
# admin.css, which maps them to the admin's colours and themes and keeps the admin header's styles
# out of them, then the live admin's banner and highlight.
STYLESHEETS = (
    "notifications/ui.css",
    "notifications/notifications.css",
    "notifications/admin.css",
    "notifications/live-admin.css",
)


class LiveModelAdmin:
    """Mix into a ModelAdmin (before admin.ModelAdmin) to make its pages follow live events."""

    # The browser destination carrying an event for every change of any object of the model.
    live_destination: str | None = None
    # One object's destination, "{pk}" standing for its primary key (optional, for the change form).
    live_object_destination: str | None = None
    # The event field holding the object's primary key, and the one ordering an object's events.
    live_key: str = "id"
    live_seq: str | None = "seq"
    # The module that applies events to the page (given the settings above in its URL).
    live_script: str = "notifications/live-admin.js"

    @property
    def media(self):
        media = super().media
        if not (self.live_destination or self.live_object_destination):
            return media
        query = urlencode({
            "list": self.live_destination or "",
            "object": self.live_object_destination or "",
            "key": self.live_key or "",
            "seq": self.live_seq or "",
        })
        # A path starting with "/" is used as is, so the query survives hashed static storages.
        return media + forms.Media(
            css={"all": list(STYLESHEETS)},
            js=[forms.Script(f"{static(self.live_script)}?{query}", type="module")],
        )

    def check(self, **kwargs):
        return [*super().check(**kwargs), *self._check_live_destinations()]

    def _check_live_destinations(self) -> list[checks.Error]:
        from . import live

        errors = []
        where = f"{type(self).__module__}.{type(self).__qualname__}"
        if self.live_destination and live.registry.match_subscription(self.live_destination) is None:
            errors.append(checks.Error(
                f"{where}.live_destination {self.live_destination!r} is not a declared live destination.",
                hint="Declare it in your app's live.py with notifications.live.subscription(...).",
                obj=self, id="notifications.E025",
            ))
        template = self.live_object_destination
        if template and "{pk}" not in template:
            errors.append(checks.Error(
                f"{where}.live_object_destination {template!r} has no {{pk}}.",
                hint='Write where the primary key goes, e.g. "/topic/orders.{pk}".',
                obj=self, id="notifications.E025",
            ))
        elif template and not any(
            # What a primary key looks like: an integer, a UUID, a word.
            live.registry.match_subscription(template.replace("{pk}", sample))
            for sample in ("1", "00000000-0000-0000-0000-000000000000", "a")
        ):
            errors.append(checks.Error(
                f"{where}.live_object_destination {template!r} matches no declared live destination.",
                hint='Declare it in your app\'s live.py, e.g. live.subscription("/topic/orders.{pk:int}", ...).',
                obj=self, id="notifications.E025",
            ))
        return errors
