"""LiveModelAdmin: what it adds to a ModelAdmin (one module script with its settings) and its check."""
from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.models import Group

from jobs.admin import JobAdmin
from jobs.models import Job
from notifications.live_admin import LiveModelAdmin


def ids(errors) -> list[str]:
    return [e.id for e in errors]


class GroupAdmin(LiveModelAdmin, admin.ModelAdmin):
    live_destination = "/topic/jobs.all"


def test_the_media_gets_the_live_script_with_its_destinations_in_its_url():
    media = GroupAdmin(Group, admin.AdminSite()).media
    assert (
        '<script src="/static/notifications/live-admin.js?list=%2Ftopic%2Fjobs.all&amp;object=&amp;key=id&amp;seq=seq" '
        'type="module"></script>'
    ) in str(media)


def test_the_media_links_the_live_widgets_stylesheets_in_the_order_the_jobs_admin_uses_them():
    media = GroupAdmin(Group, admin.AdminSite()).media

    assert [line for line in str(media).splitlines() if line.startswith("<link")] == [
        '<link href="/static/notifications/ui.css" media="all" rel="stylesheet">',
        '<link href="/static/notifications/notifications.css" media="all" rel="stylesheet">',
        '<link href="/static/notifications/admin.css" media="all" rel="stylesheet">',
        '<link href="/static/notifications/live-admin.css" media="all" rel="stylesheet">',
    ]


def test_without_a_destination_the_media_is_the_model_admins_own():
    class Plain(LiveModelAdmin, admin.ModelAdmin):
        pass

    assert str(Plain(Group, admin.AdminSite()).media) == str(admin.ModelAdmin(Group, admin.AdminSite()).media)


def test_a_declared_destination_passes_the_check():
    assert GroupAdmin(Group, admin.AdminSite()).check() == []


def test_a_list_destination_nobody_declared_is_error_e025():
    class Wrong(LiveModelAdmin, admin.ModelAdmin):
        live_destination = "/topic/groups.all"

    errors = Wrong(Group, admin.AdminSite()).check()
    assert ids(errors) == ["notifications.E025"]
    assert "'/topic/groups.all' is not a declared live destination" in errors[0].msg


def test_an_object_destination_without_pk_or_undeclared_is_error_e025():
    class NoPk(LiveModelAdmin, admin.ModelAdmin):
        live_object_destination = "/topic/jobs.all"

    class Undeclared(LiveModelAdmin, admin.ModelAdmin):
        live_object_destination = "/topic/groups.{pk}"

    assert ids(NoPk(Group, admin.AdminSite()).check() + Undeclared(Group, admin.AdminSite()).check()) == [
        "notifications.E025", "notifications.E025",
    ]


def test_the_jobs_admin_is_a_live_model_admin_with_its_own_script():
    media = str(JobAdmin(Job, admin.AdminSite()).media)
    assert isinstance(JobAdmin(Job, admin.AdminSite()), LiveModelAdmin)
    assert (
        '<script src="/static/jobs/admin-live.js?list=%2Ftopic%2Fjobs.all&amp;object=%2Ftopic%2Fjobs.%7Bpk%7D'
        '&amp;key=id&amp;seq=seq" type="module"></script>'
    ) in media
    assert JobAdmin(Job, admin.AdminSite()).check() == []
