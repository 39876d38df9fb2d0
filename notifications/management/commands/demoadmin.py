"""`manage.py demoadmin`: make sure there is a way in for a first look, and say what it is."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Create a superuser 'admin' with a random password (or DEMO_ADMIN_PASSWORD) if no superuser "
        "exists, save the login to var/demo-login.txt and print it."
    )

    def handle(self, *args, **options):
        users = get_user_model()
        # The demo keeps it in VAR_DIR; another project in var/ next to manage.py.
        var_dir = getattr(settings, "VAR_DIR", None) or Path(getattr(settings, "BASE_DIR", None) or Path.cwd()) / "var"
        login_file = Path(var_dir) / "demo-login.txt"
        if not users.objects.filter(is_superuser=True).exists():
            password = os.environ.get("DEMO_ADMIN_PASSWORD") or secrets.token_urlsafe(9)
            users.objects.create_superuser("admin", "admin@localhost", password)
            login_file.parent.mkdir(parents=True, exist_ok=True)
            login_file.write_text(f"username: admin\npassword: {password}\n")
            login_file.chmod(0o600)
            self.stdout.write(self.style.SUCCESS("Created the superuser 'admin'."))
        if login_file.exists():
            creds = " / ".join(line.split(": ", 1)[1] for line in login_file.read_text().splitlines() if ": " in line)
            self.stdout.write(f"Log in as (username / password): {creds}   (saved in {login_file})")
        else:
            self.stdout.write("Log in with your existing superuser (manage.py changepassword resets a password).")
