"""Settings for worker subprocesses started by the jobs tests: the project's, with JOBS from the
JOBS_SETTINGS_JSON environment variable (short heartbeats and stale limits) and NOTIFICATIONS
keys from NOTIFICATIONS_SETTINGS_JSON (e.g. a short outbox retry bound)."""
from __future__ import annotations

import json
import os

from project.settings import *  # noqa: F401,F403
from project.settings import NOTIFICATIONS

JOBS = json.loads(os.environ.get("JOBS_SETTINGS_JSON", "{}"))
NOTIFICATIONS = {**NOTIFICATIONS, **json.loads(os.environ.get("NOTIFICATIONS_SETTINGS_JSON", "{}"))}
