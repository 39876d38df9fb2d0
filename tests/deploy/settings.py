"""Settings of the scale-out tests: the project's production settings (everything else comes from
the environment, as deploy/live-jobs.env gives it), with jobs slow enough to be killed mid-way and
dead workers noticed in seconds instead of 30.

The debug report takes about 8 × 2 s; a worker's job is taken over 10 s after its last
heartbeat; a job may run twice (the second attempt is what recovers a killed worker's job).
"""
from __future__ import annotations

from project.settings import *  # noqa: F401,F403

JOBS = {  # noqa: F405
    **JOBS,  # noqa: F405
    "DEBUG_REPORT_STEP_DELAY": 2.0,
    "HEARTBEAT_INTERVAL": 1.0,
    "STALE_AFTER": 10.0,
    "MAX_ATTEMPTS": 2,
}
