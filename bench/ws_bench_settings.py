"""Settings for bench/ws_bench.py's run of the product: the project's, tuned for the benchmark.

The worker writes and publishes progress every 5 ms (not every 100 ms) so that a task
reporting 50 times a second is published 50 times a second; DEBUG is off (DEBUG keeps every
SQL query in memory, which a benchmark must not measure).
"""
from project.settings import *  # noqa: F401,F403

DEBUG = False
JOBS = {"PROGRESS_INTERVAL": 0.005, "CONCURRENCY": 1}
LOGGING = {**LOGGING, "root": {"handlers": ["console"], "level": "WARNING"}}  # noqa: F405
