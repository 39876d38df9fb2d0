from __future__ import annotations

from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core import checks as django_checks

        from . import checks  # noqa: F401  (registers the system checks)
        from . import destinations, live  # noqa: F401  (destinations declares this app's own)

        # Every installed app's live.py declares its destinations, as admin.py registers models.
        live.autodiscover()
        django_checks.register(live.check_declarations)
        from . import outbox  # noqa: F401  (registers the outbox settings check)
