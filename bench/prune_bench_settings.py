"""Settings for bench/prune_bench.py: the project's, DEBUG off, persistent connections, every job
its own claim (PREFETCH 0), no pruning by the claimers themselves (the prune is the command's).
PRUNE_BENCH_JOBS (JSON) adds JOBS keys, e.g. {"PRUNE_BATCH": 200, "PRUNE_BATCH_PAUSE": 0.05}."""
import json
import os

from project.settings import *  # noqa: F401,F403

DEBUG = False
DATABASES["default"]["CONN_MAX_AGE"] = None  # noqa: F405
JOBS = {"CONCURRENCY": 1, "PREFETCH": 0, "PRUNE_INTERVAL": None, **json.loads(os.environ.get("PRUNE_BENCH_JOBS", "{}"))}
LOGGING = {**LOGGING, "root": {"handlers": ["console"], "level": "WARNING"}}  # noqa: F405
