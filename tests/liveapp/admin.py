from django.contrib import admin

from notifications.live_admin import LiveModelAdmin

from .models import Order


@admin.register(Order)
class OrderAdmin(LiveModelAdmin, admin.ModelAdmin):
    list_display = ("id", "customer", "status")
    live_destination = "/topic/orders.all"
