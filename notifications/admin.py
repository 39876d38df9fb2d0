"""Admin for notifications: browse, filter, mark read."""
from __future__ import annotations

from django.contrib import admin
from django.utils import timezone

from .models import Notification


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["title", "recipient", "level", "created", "read"]
    list_filter = ["level", "read", "created"]
    search_fields = ["title", "text", "recipient__username"]
    raw_id_fields = ["recipient"]
    date_hierarchy = "created"
    readonly_fields = ["read_at"]
    actions = ["mark_read"]

    @admin.action(description="Mark selected notifications as read")
    def mark_read(self, request, queryset):
        changed = queryset.filter(read=False).update(read=True, read_at=timezone.now())
        self.message_user(request, f"{changed} notification(s) marked as read.")
