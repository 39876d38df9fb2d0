"""System checks for what a project adds when it installs the apps: each names the line to add."""
from __future__ import annotations

from jobs.checks import check_installation as check_jobs_installation
from jobs.checks import check_settings as check_jobs_settings
from notifications.checks import check_asgi_application, check_installation, check_live_delivery, check_settings

JOB_BACKEND = {"BACKEND": "jobs.backends.JobBackend"}
IMMEDIATE = {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}


def ids(errors) -> list[str]:
    return [e.id for e in errors]


def test_the_demo_project_passes_every_installation_check():
    assert check_installation() + check_asgi_application() + check_jobs_installation() == []


# --- NOTIFICATIONS with wrong types -------------------------------------------------------------


def test_notifications_settings_that_are_not_a_dict_are_one_error_and_no_crash(settings):
    settings.NOTIFICATIONS = ["BROKER_URL", "stomp://127.0.0.1:61613"]
    [error] = check_settings()
    assert (error.id, error.msg) == ("notifications.E005", "NOTIFICATIONS is a list; it must be a dict.")
    assert check_live_delivery() == []


def test_an_unknown_notifications_key_is_reported_with_the_known_keys(settings):
    settings.NOTIFICATIONS = {"BROKER_URI": "stomp://127.0.0.1:61613"}
    [error] = check_settings()
    assert (error.id, error.msg) == ("notifications.E006", "Unknown NOTIFICATIONS key(s): BROKER_URI.")
    assert "BROKER_URL" in error.hint


def test_a_broker_url_that_is_not_text_is_reported(settings):
    settings.NOTIFICATIONS = {"BROKER_URL": 61613}
    [error] = check_settings()
    assert (error.id, error.msg) == ("notifications.E001", "BROKER_URL must be a string or a list of strings, not int")


def test_a_publisher_buffer_of_zero_is_reported(settings):
    settings.NOTIFICATIONS = {"PUBLISHER_BUFFER": 0}
    assert ids(check_settings()) == ["notifications.E002"]


def test_an_embedded_broker_port_given_as_text_is_reported(settings):
    settings.NOTIFICATIONS = {"EMBEDDED_BROKER": {"PORT": "61614"}}
    [error] = check_settings()
    assert (error.id, error.msg) == (
        "notifications.E007",
        "NOTIFICATIONS['EMBEDDED_BROKER']: PORT is '61614', not a port number from 1 to 65535.",
    )


def test_embedded_broker_users_given_as_a_list_are_reported(settings):
    settings.NOTIFICATIONS = {"EMBEDDED_BROKER": {"USERS": ["app:secret"]}}
    assert ids(check_settings()) == ["notifications.E007"]


# --- daphne, ASGI_APPLICATION and the URLs ----------------------------------------------------


def test_a_project_without_daphne_is_warned_that_runserver_serves_no_websocket(settings):
    settings.INSTALLED_APPS = [app for app in settings.INSTALLED_APPS if app != "daphne"]
    [warning] = check_installation()
    assert warning.id == "notifications.W040"
    assert "Add 'daphne' at the top of INSTALLED_APPS" in warning.hint


def test_daphne_without_asgi_application_names_the_setting_to_add(settings):
    del settings.ASGI_APPLICATION
    [error] = check_installation()
    assert error.id == "notifications.E040"
    assert error.hint == 'Add ASGI_APPLICATION = "project.asgi.application" to your settings.'


def test_an_asgi_application_serving_only_http_is_an_error_naming_the_import_to_change(settings):
    settings.ASGI_APPLICATION = "tests.install_variants.django_only"
    [error] = check_asgi_application()
    assert error.id == "notifications.E042"
    assert error.msg == (
        "The ASGI application tests.install_variants.django_only does not route WebSockets to the live "
        "endpoint (/ws/stomp/), so pages never update live."
    )
    assert error.hint.startswith(
        "In tests/install_variants.py, import get_asgi_application from notifications.asgi instead of django.core.asgi"
    )


def test_a_protocol_router_without_websocket_is_an_error(settings):
    settings.ASGI_APPLICATION = "tests.install_variants.http_router_only"
    assert ids(check_asgi_application()) == ["notifications.E042"]


def test_websocket_routes_of_the_project_alone_are_an_error(settings):
    settings.ASGI_APPLICATION = "tests.install_variants.own_routes_only"
    assert ids(check_asgi_application()) == ["notifications.E042"]


def test_the_helper_passes(settings):
    settings.ASGI_APPLICATION = "tests.install_variants.with_helper"
    assert check_asgi_application() == []


def test_the_live_routes_behind_the_projects_own_middleware_pass(settings):
    settings.ASGI_APPLICATION = "tests.install_variants.own_and_live_routes"
    assert check_asgi_application() == []


def test_a_websocket_app_that_cannot_be_looked_into_is_a_warning_not_an_error(settings):
    settings.ASGI_APPLICATION = "tests.install_variants.opaque"
    assert ids(check_asgi_application()) == ["notifications.W042"]


def test_an_asgi_application_that_does_not_import_is_reported_with_the_reason(settings):
    settings.ASGI_APPLICATION = "tests.install_variants.no_such_application"
    [error] = check_asgi_application()
    assert error.id == "notifications.E041"
    assert error.msg.startswith("The ASGI application tests.install_variants.no_such_application cannot be loaded: AttributeError")


def test_a_urlconf_without_the_notifications_urls_names_the_line_to_add(settings):
    settings.ROOT_URLCONF = "tests.install_variants"
    [warning] = check_installation()
    assert warning.id == "notifications.W041"
    assert warning.hint == 'Add path("notifications/", include("notifications.urls")) to urlpatterns in tests.install_variants.'


# --- the TASKS backend, the notifications app, the jobs URLs, JOBS types --------------------------


def test_no_jobs_backend_in_tasks_names_the_setting_to_add(settings):
    settings.TASKS = {"default": IMMEDIATE}
    [error] = check_jobs_installation()
    assert error.id == "jobs.E020"
    assert error.hint == (
        'Add TASKS = {"default": {"BACKEND": "jobs.backends.JobBackend"}} to your settings (project.settings).'
    )


def test_the_jobs_backend_under_another_alias_only_is_a_warning(settings):
    settings.TASKS = {"default": IMMEDIATE, "jobs": JOB_BACKEND}
    [warning] = check_jobs_installation()
    assert warning.id == "jobs.W020"
    assert warning.msg.startswith("TASKS['default'] is not jobs.backends.JobBackend (only 'jobs' is)")


def test_jobs_without_the_notifications_app_is_an_error(settings):
    settings.INSTALLED_APPS = [app for app in settings.INSTALLED_APPS if app != "notifications"]
    assert ids(check_jobs_installation()) == ["jobs.E021"]


def test_a_urlconf_without_the_jobs_urls_names_the_line_to_add(settings):
    settings.ROOT_URLCONF = "tests.install_variants"
    [warning] = check_jobs_installation()
    assert warning.id == "jobs.W021"
    assert warning.hint == 'Add path("jobs/", include("jobs.urls")) to urlpatterns in tests.install_variants.'


def test_a_login_url_no_page_serves_names_the_setting(settings):
    settings.LOGIN_URL = "/accounts/login/"
    [warning] = check_jobs_installation()
    assert (warning.id, warning.msg) == (
        "jobs.W022",
        "LOGIN_URL ('/accounts/login/') leads nowhere, so the jobs pages send visitors who are not logged in to a 404.",
    )


def test_a_login_url_given_as_a_url_name_or_on_another_site_passes(settings):
    settings.LOGIN_URL = "admin:login"
    assert check_jobs_installation() == []
    settings.LOGIN_URL = "https://sso.example/login"
    assert check_jobs_installation() == []


def test_a_negative_prefetch_is_reported(settings):
    settings.JOBS = {"PREFETCH": -1}
    assert ids(check_jobs_settings()) == ["jobs.E002"]


def test_a_debug_report_delay_given_as_text_is_reported(settings):
    settings.JOBS = {"DEBUG_REPORT_STEP_DELAY": "0.5"}
    [error] = check_jobs_settings()
    assert (error.id, error.msg) == ("jobs.E002", "JOBS['DEBUG_REPORT_STEP_DELAY'] must be zero or more seconds, not '0.5'.")


def test_prefetch_seconds_may_be_none(settings):
    settings.JOBS = {"PREFETCH_SECONDS": None}
    assert check_jobs_settings() == []
