"""Settings of the processes a chaos run starts (daphne, workers, the shell that enqueues): the
project's, with DEBUG off (DEBUG keeps every query in memory, which a soak must not measure),
JOBS from CHAOS_JOBS_JSON and quick reconnects, so one run fits in CI's minutes."""
from __future__ import annotations

import json
import os

from project.settings import *  # noqa: F401,F403

DEBUG = False
JOBS = json.loads(os.environ.get("CHAOS_JOBS_JSON", "{}"))
NOTIFICATIONS = {
    **NOTIFICATIONS,  # noqa: F405
    "RECONNECT_MIN": 0.05,
    "RECONNECT_MAX": 0.5,
}
