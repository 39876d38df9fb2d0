"""ASGI entry point: Django over HTTP, the STOMP-over-WebSocket endpoint over WebSocket."""
import gc
import os

from notifications.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
# Django over HTTP, the STOMP-over-WebSocket endpoint (/ws/stomp/) over WebSocket: the same
# one call a project that installs the apps makes (README, "Add to an existing project").
application = get_asgi_application()


def _plain_autobahn_debug_text() -> None:
    """Stop autobahn colouring debug-log text that is never printed.

    autobahn (daphne's WebSocket stack) builds the arguments of its log.debug() calls eagerly,
    about four per frame sent, and colours them with click.style when click is importable.
    The calls are dropped below txaio's log level, but the colouring is paid first: it was
    about 14% of daphne's CPU per delivered event in a profile. Without click, autobahn's
    hl() returns the text unchanged: only the look of autobahn's debug lines differs.
    """
    try:
        import autobahn.util
    except ImportError:  # another ASGI server: nothing to do
        return
    autobahn.util._HAS_CLICK = False


_plain_autobahn_debug_text()

# Everything loaded so far (Django, the apps, the URLconf: about 150,000 objects) lives as long
# as the process. Left in the cyclic collector's generations, every full collection walks it
# all: measured 66 ms with the loop stopped, i.e. a latency spike for every socket of a web
# process relaying thousands of messages a second. Frozen, the same collection took 0.1 ms.
gc.freeze()
