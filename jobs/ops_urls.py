"""Operations URLs, included by a project as path("ops/", include("jobs.ops_urls"))."""
from __future__ import annotations

from django.urls import path

from . import ops_views

app_name = "ops"
urlpatterns = [
    path("health/", ops_views.health, name="health"),
    path("metrics", ops_views.metrics, name="metrics"),
]
