"""The project's URLs plus the example's order page (ROOT_URLCONF of tests.liveapp.settings)."""
from __future__ import annotations

from django.urls import path

from project.urls import urlpatterns as project_urlpatterns

from .views import order_page

urlpatterns = [path("orders/<int:pk>/", order_page, name="order"), *project_urlpatterns]
