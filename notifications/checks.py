"""System checks for the NOTIFICATIONS settings (ids notifications.E0xx)."""
from __future__ import annotations

from django.core.checks import Error, register

from . import conf


@register()
def check_settings(app_configs=None, **kwargs):
    errors = []
    try:
        conf.broker_url()
    except ValueError as exc:
        errors.append(
            Error(
                str(exc),
                hint="Set NOTIFICATIONS['BROKER_URL'] or the STOMP_BROKER_URL environment variable.",
                id="notifications.E001",
            )
        )
    return errors
