"""The agent's store-and-forward queue: SQLite in WAL mode on the gateway's SD card.

Every telemetry point and alert goes in here before it is published, and leaves only after
the broker has acknowledged it (QoS 1 PUBACK).  After a reconnect or a restart, what is
left is sent again in the order it was accepted, with its original ``msg_id``, so the
server can drop duplicates.

Acceptance and durability: :meth:`Outbox.put` buffers in memory; :meth:`Outbox.commit`
writes the buffer in one transaction (one fsync per batch, to spare the SD card: a gateway
commits once per poll round, not per message).  A message is *accepted* once committed;
committed messages survive SIGKILL and power loss (``synchronous=FULL`` in WAL mode, per
SQLite's documentation of WAL durability).

Drop policy when full (``max_messages``): the oldest *telemetry* is deleted first; alerts
and health messages are never dropped, so an outbox holding only alerts may exceed the
bound.  Drops are counted (``dropped``) and published in the health topic.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["telemetry", "alert", "health"]

#: Default bound: 200k messages of ~400 bytes ≈ 80 MB on the card; about 2 days of
#: 64 devices polled every minute (64 * 1440 * 2 = 184k).  Chosen; configurable.
DEFAULT_MAX_MESSAGES = 200_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    TEXT NOT NULL CHECK (kind IN ('telemetry', 'alert', 'health')),
    topic   TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_kind ON outbox (kind, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """One queued message; ``seq`` orders the queue."""

    seq: int
    kind: str
    topic: str
    payload: bytes


class Outbox:
    """A bounded, durable FIFO of MQTT messages.

    Args:
        path: SQLite file (created with its folder), or ``":memory:"`` for tests.
        max_messages: bound on queued messages before telemetry is dropped, > 0.

    Thread-safe: the agent's event loop puts and commits, paho's thread acknowledges.

    Raises:
        sqlite3.DatabaseError: the file exists and is not an outbox database.
    """

    def __init__(self, path: str | Path, *, max_messages: int = DEFAULT_MAX_MESSAGES) -> None:
        if max_messages <= 0:
            raise ValueError(f"outbox max_messages must be > 0, got {max_messages}")
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self.max_messages = max_messages
        self._lock = threading.Lock()  # the database
        # the buffer has its own lock: put() runs on the agent's event loop and must never
        # wait for a commit's fsync (milliseconds on an SD card) in the publisher's thread
        self._buf_lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._buffer: list[tuple[str, str, bytes]] = []
        self._depth = self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        row = self._db.execute("SELECT value FROM counters WHERE name='dropped'").fetchone()
        self.dropped = row[0] if row else 0

    # ----------------------------------------------------------------- writing
    def put(self, kind: Kind, topic: str, payload: bytes | str) -> None:
        """Buffer one message; it is accepted at the next :meth:`commit`."""
        if isinstance(payload, str):
            payload = payload.encode()
        with self._buf_lock:
            self._buffer.append((kind, topic, payload))

    def commit(self) -> int:
        """Write buffered messages in one transaction, enforce the bound; count written."""
        with self._lock:
            with self._buf_lock:
                if not self._buffer:
                    return 0
                rows, self._buffer = self._buffer, []
            depth, dropped_before = self._depth, self.dropped
            try:
                with self._transaction():
                    self._db.executemany("INSERT INTO outbox (kind, topic, payload) VALUES (?, ?, ?)", rows)
                    self._depth += len(rows)
                    excess = self._depth - self.max_messages
                    if excess > 0:
                        dropped = self._db.execute(
                            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox "
                            "WHERE kind='telemetry' ORDER BY seq LIMIT ?)", (excess,)
                        ).rowcount
                        self._depth -= dropped
                        self.dropped += dropped
                        self._db.execute(
                            "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
                            "ON CONFLICT(name) DO UPDATE SET value=excluded.value", (self.dropped,))
            except BaseException:
                # rolled back (disk full, I/O error): nothing was accepted, keep the rows
                # buffered ahead of newer ones for the next commit
                self._depth, self.dropped = depth, dropped_before
                with self._buf_lock:
                    self._buffer[:0] = rows
                raise
            return len(rows)

    def _transaction(self):
        db = self._db

        class _Tx:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, exc, tb):
                if exc_type is None:
                    db.execute("COMMIT")
                elif db.in_transaction:  # SQLite already rolled back after SQLITE_FULL, I/O errors
                    db.execute("ROLLBACK")
                return False

        return _Tx()

    # ----------------------------------------------------------------- reading
    def peek(self, after_seq: int = 0, limit: int = 100) -> list[Entry]:
        """Up to ``limit`` committed messages with ``seq > after_seq``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, topic, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [Entry(*r) for r in rows]

    def ack(self, seqs: list[int]) -> None:
        """Remove acknowledged messages (unknown seqs are ignored: already dropped)."""
        if not seqs:
            return
        with self._lock, self._transaction():
            removed = self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs]).rowcount
            self._depth -= max(removed, 0)

    @property
    def depth(self) -> int:
        """Committed messages not yet acknowledged."""
        with self._lock:
            return self._depth

    @property
    def buffered(self) -> int:
        """Messages put but not yet committed (not yet accepted)."""
        with self._buf_lock:
            return len(self._buffer)

    def count(self, kind: Kind) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM outbox WHERE kind=?", (kind,)).fetchone()[0]

    def close(self) -> None:
        """Commit what is buffered and close the database."""
        self.commit()
        with self._lock:
            self._db.close()
