"""Run a Broker on its own event loop in a background thread, for sync code and tests."""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import threading

from .config import BrokerConfig, BrokerStats
from .server import Broker

__all__ = ["BrokerThread", "new_event_loop", "until_signalled", "parse_user", "parse_size"]

logger = logging.getLogger(__name__)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (faster), else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def until_signalled(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
    """A shutdown trigger for Broker.run(): returns when the process gets one of ``signals``."""
    loop = asyncio.get_running_loop()
    received = asyncio.Event()
    for signum in signals:
        loop.add_signal_handler(signum, received.set)
    try:
        await received.wait()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def parse_user(value: str) -> tuple[str, str]:
    """``login:passcode`` from the command line; ValueError with a readable message otherwise."""
    login, sep, passcode = value.partition(":")
    if not sep or not login:
        raise ValueError(f"{value!r} is not login:passcode (for example --user worker:s3cret)")
    return login, passcode


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(value: str) -> int:
    """A byte count from the command line: ``268435456``, ``256M``, ``1G`` (binary units)."""
    text = value.strip().upper().removesuffix("IB").removesuffix("B")
    unit = text[-1:] if text[-1:] in _UNITS else ""
    number = text[: len(text) - len(unit)]
    if not number.isdigit() or int(number) <= 0:
        raise ValueError(f"{value!r} is not a size in bytes (for example 268435456, 256M or 1G)")
    return int(number) * _UNITS[unit]


class BrokerThread:
    """A broker serving from a daemon thread: ``start()`` returns once it listens.

    Usable as a context manager. ``stop()`` is idempotent and waits for a clean close.
    """

    def __init__(self, config: BrokerConfig | None = None, *, use_uvloop: bool = True) -> None:
        self.broker = Broker(config)
        self._use_uvloop = use_uvloop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    @property
    def host(self) -> str:
        return self.broker.host

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def url(self) -> str:
        return self.broker.url

    def start(self, timeout: float = 10.0) -> BrokerThread:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._main, name=f"stomp-broker-{id(self):x}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"The STOMP broker did not start within {timeout} s")
        if self._error is not None:
            self._thread.join(timeout)
            raise self._error
        return self

    def _main(self) -> None:
        loop = new_event_loop() if self._use_uvloop else asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start() or logged: a thread cannot raise
            if not self._ready.is_set():
                self._error = exc
            else:
                logger.exception("The STOMP broker thread failed")
        finally:
            self._ready.set()
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        await self.broker.start()
        self._ready.set()
        await self.broker.run(self._stop.wait)

    def call(self, fn, *args, timeout: float = 10.0):
        """Run ``fn(*args)`` on the broker's loop and return its result (for stats, assertions)."""
        if self._loop is None or self._loop.is_closed():
            raise RuntimeError("The broker thread is not running")
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout)

    def stats(self) -> BrokerStats:
        return self.call(self.broker.stats)

    def stop(self, timeout: float = 15.0) -> None:
        thread = self._thread
        if thread is None:
            return
        loop = self._loop
        if loop is not None and not loop.is_closed() and self._stop is not None:
            try:
                loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass  # the loop closed meanwhile
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"The STOMP broker thread did not stop within {timeout} s")

    def __enter__(self) -> BrokerThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
