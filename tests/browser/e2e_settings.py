"""Settings of the end-to-end stack: the project's, with a quicker debug report (about 2.4 s
instead of 5 s: still long enough to be watched running, short enough for CI)."""
from project.settings import *  # noqa: F401,F403

JOBS = {**JOBS, "DEBUG_REPORT_STEP_DELAY": 0.3}  # noqa: F405
