from __future__ import annotations

from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "tests.liveapp"
    label = "shop"  # as in the README's example
    default_auto_field = "django.db.models.BigAutoField"
