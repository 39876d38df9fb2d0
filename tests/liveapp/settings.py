"""Settings of the end-to-end stack with the test app installed (tests/browser/test_liveapp_*.py)."""
from tests.browser.e2e_settings import *  # noqa: F401,F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.liveapp"]  # noqa: F405
ROOT_URLCONF = "tests.liveapp.urls"
