"""URLs of the jobs pages, mounted under /jobs/ (namespace "jobs")."""
from __future__ import annotations

from django.urls import path

from . import views

app_name = "jobs"

urlpatterns = [
    path("", views.job_list, name="list"),
    path("debug-report/", views.start_debug_report, name="start_debug_report"),
    path("<uuid:job_id>/", views.job_detail, name="detail"),
    path("<uuid:job_id>/download/", views.download, name="download"),
    path("<uuid:job_id>/cancel/", views.cancel, name="cancel"),
]
