"""Settings for worker subprocesses started by the jobs tests: the project's, with JOBS from the
JOBS_SETTINGS_JSON environment variable (short heartbeats and stale limits)."""
from __future__ import annotations

import json
import os

from project.settings import *  # noqa: F401,F403

JOBS = json.loads(os.environ.get("JOBS_SETTINGS_JSON", "{}"))
