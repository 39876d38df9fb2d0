"""Optional persistence of messages waiting in /queue/ destinations, in one SQLite file.

Writes are batched: the broker calls commit() once per event-loop turn, before writing the
frames (receipts included) that this turn produced, so a receipt means the message is on disk.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["StoredMessage", "QueueStore"]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queued_message (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    destination TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    redelivered INTEGER NOT NULL DEFAULT 0
)
"""


@dataclass(frozen=True)
class StoredMessage:
    """One message read back from the data file."""

    message_id: str
    destination: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    redelivered: bool


class QueueStore:
    """Adds and removals are buffered in memory and written by :meth:`commit`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._adds: dict[str, tuple[str, str, str, bytes, int]] = {}
        self._removes: list[str] = []
        self._redelivered: list[str] = []

    def load(self) -> Iterator[StoredMessage]:
        rows = self._db.execute(
            "SELECT message_id, destination, headers, body, redelivered FROM queued_message ORDER BY seq"
        )
        for message_id, destination, headers, body, redelivered in rows.fetchall():
            yield StoredMessage(
                message_id, destination, tuple(tuple(h) for h in json.loads(headers)), bytes(body), bool(redelivered)
            )

    def add(self, message_id: str, destination: str, headers: tuple[tuple[str, str], ...], body: bytes) -> None:
        self._adds[message_id] = (message_id, destination, json.dumps(headers), body, 0)

    def remove(self, message_id: str) -> None:
        # A message taken before it was ever written costs no disk I/O at all.
        if self._adds.pop(message_id, None) is None:
            self._removes.append(message_id)

    def mark_redelivered(self, message_id: str) -> None:
        add = self._adds.get(message_id)
        if add is not None:
            self._adds[message_id] = add[:4] + (1,)
        else:
            self._redelivered.append(message_id)

    @property
    def dirty(self) -> bool:
        return bool(self._adds or self._removes or self._redelivered)

    def commit(self) -> None:
        if not self.dirty:
            return
        adds, removes, redelivered = list(self._adds.values()), self._removes, self._redelivered
        self._adds, self._removes, self._redelivered = {}, [], []
        db = self._db
        db.execute("BEGIN")
        try:
            if adds:
                db.executemany(
                    "INSERT OR REPLACE INTO queued_message (message_id, destination, headers, body, redelivered)"
                    " VALUES (?, ?, ?, ?, ?)",
                    adds,
                )
            if redelivered:
                db.executemany(
                    "UPDATE queued_message SET redelivered = 1 WHERE message_id = ?", [(m,) for m in redelivered]
                )
            if removes:
                db.executemany("DELETE FROM queued_message WHERE message_id = ?", [(m,) for m in removes])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self._db.close()
