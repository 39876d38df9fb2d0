"""`manage.py adduser NAME`: an ordinary user (not staff), who sees only their own jobs and
notifications. createsuperuser is for administrators; the admin's Users page works too."""
from __future__ import annotations

import getpass
import os
import secrets

from django.contrib.auth import get_user_model, password_validation
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

__all__ = ["Command", "PASSWORD_ENV"]

# Where --noinput takes the password from (like createsuperuser's DJANGO_SUPERUSER_PASSWORD).
PASSWORD_ENV = "DJANGO_USER_PASSWORD"


class Command(BaseCommand):
    help = (
        "Add an ordinary user (not staff, no permissions): they log in on the site and see their own "
        "jobs and notifications. Asks for the password twice; with --noinput it is read from "
        f"{PASSWORD_ENV}, or made up and printed."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--email", default="", help="the user's e-mail address (optional)")
        parser.add_argument(
            "--noinput", "--no-input", action="store_false", dest="interactive",
            help=f"ask nothing: the password comes from {PASSWORD_ENV}, else a random one is printed",
        )

    def handle(self, *args, username, email, interactive, **options):
        users = get_user_model()
        field = users._meta.get_field(users.USERNAME_FIELD)
        try:
            username = field.clean(username, None)
        except ValidationError as exc:
            raise CommandError(f"Not a valid username: {'; '.join(exc.messages)}") from exc
        if users._default_manager.filter(**{users.USERNAME_FIELD: username}).exists():
            raise CommandError(f"The user {username!r} already exists (manage.py changepassword {username} sets a new password).")
        user = users(**{users.USERNAME_FIELD: username})
        generated = False
        if interactive:
            password = self._ask_password(user)
        else:
            password = os.environ.get(PASSWORD_ENV, "")
            if not password:
                password, generated = secrets.token_urlsafe(9), True
            try:
                password_validation.validate_password(password, user)
            except ValidationError as exc:
                raise CommandError(f"{PASSWORD_ENV} is refused: {' '.join(exc.messages)}") from exc
        users._default_manager.create_user(username, email=email or "", password=password)
        self.stdout.write(self.style.SUCCESS(f"Added the user {username!r} (not staff)."))
        if generated:
            self.stdout.write(f"Log in as (username / password): {username} / {password}")

    def _ask_password(self, user) -> str:
        for _ in range(3):
            password = getpass.getpass("Password: ")
            if password != getpass.getpass("Password (again): "):
                self.stderr.write("The two passwords differ; try again.")
                continue
            try:
                password_validation.validate_password(password, user)
            except ValidationError as exc:
                self.stderr.write(" ".join(exc.messages))
                continue
            return password
        raise CommandError("No acceptable password after three tries; nothing was added.")
