"""`manage.py adduser`: ordinary users (not staff), the documented way to add one."""
from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def test_adduser_without_input_takes_the_password_from_the_environment_and_makes_no_staff(monkeypatch):
    monkeypatch.setenv("DJANGO_USER_PASSWORD", "correct-horse-battery-9")
    out = io.StringIO()

    call_command("adduser", "carol", "--email", "carol@example.com", "--noinput", stdout=out)

    user = get_user_model().objects.get(username="carol")
    assert (user.is_staff, user.is_superuser, user.email) == (False, False, "carol@example.com")
    assert user.check_password("correct-horse-battery-9")
    assert out.getvalue() == "Added the user 'carol' (not staff).\n"


def test_adduser_without_input_or_password_makes_one_up_and_prints_it(monkeypatch):
    monkeypatch.delenv("DJANGO_USER_PASSWORD", raising=False)
    out = io.StringIO()

    call_command("adduser", "dave", "--noinput", stdout=out)

    printed = out.getvalue().splitlines()[-1]
    assert printed.startswith("Log in as (username / password): dave / ")
    assert get_user_model().objects.get(username="dave").check_password(printed.rsplit(" / ", 1)[1])


def test_adduser_asks_for_the_password_twice(monkeypatch):
    answers = iter(["first-try-pass-123", "typo", "second-try-pass-456", "second-try-pass-456"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    err = io.StringIO()

    call_command("adduser", "erin", stdout=io.StringIO(), stderr=err)

    assert get_user_model().objects.get(username="erin").check_password("second-try-pass-456")
    assert "The two passwords differ" in err.getvalue()


def test_adduser_refuses_an_existing_username_and_changes_nothing(monkeypatch):
    get_user_model().objects.create_user("frank", password="old-pass-123456")
    monkeypatch.setenv("DJANGO_USER_PASSWORD", "new-pass-1234567")

    with pytest.raises(CommandError, match="The user 'frank' already exists"):
        call_command("adduser", "frank", "--noinput")

    assert get_user_model().objects.get(username="frank").check_password("old-pass-123456")


def test_adduser_refuses_a_password_the_validators_refuse(monkeypatch):
    monkeypatch.setenv("DJANGO_USER_PASSWORD", "123")

    with pytest.raises(CommandError, match="DJANGO_USER_PASSWORD is refused: This password is too short"):
        call_command("adduser", "gina", "--noinput")

    assert not get_user_model().objects.filter(username="gina").exists()
