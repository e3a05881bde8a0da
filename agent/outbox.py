"""The agent's store-and-forward queue: SQLite in WAL mode on the gateway's SD card.

Every telemetry point, health message and alert goes in here before it is published, and
leaves only after the broker has acknowledged it (QoS 1 PUBACK).  After a reconnect or a
restart, what is left is sent again in the order it was accepted, with its original
``msg_id``, so the server can drop duplicates.

Acceptance and durability: :meth:`Outbox.put` buffers in memory; :meth:`Outbox.commit`
writes the buffer in one transaction (one fsync per batch, to spare the SD card: a gateway
commits once per poll round, not per message).  A message is *accepted* once committed;
committed messages survive SIGKILL and power loss (``synchronous=FULL`` in WAL mode, per
SQLite's documentation of WAL durability).

Health is a snapshot: a health message *replaces* any queued health message of the same
topic (``health/gateway``, ``health/{device}``), so at most one health message per topic
waits in the outbox and in the buffer (:attr:`Outbox.superseded` counts the replaced ones).

Drop policy when full (``max_messages``): the oldest *telemetry* is deleted first, then,
if the outbox holds no telemetry, the oldest health; alerts are never dropped, so only an
outbox holding (nearly) only alerts may exceed the bound.  Drops are counted
(``dropped``, kept in the database) and published in the health topic.

While commits fail (disk full, I/O error) messages stay in the RAM buffer, at most
``max_buffered`` of them: beyond that the oldest buffered telemetry is dropped (then the
oldest buffered health), never an alert; those drops are counted in ``dropped`` too and
logged as a warning (the first, then at most one line every :data:`WARN_EVERY_S`).

The queue's depth (:attr:`Outbox.depth`) changes only when a write has committed; after a
failed write it is counted again from the table.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["telemetry", "alert", "health"]

log = logging.getLogger("flylead.agent.outbox")

#: Default bound: 200k messages of ~400 bytes ≈ 80 MB on the card; about 2 days of
#: 64 devices polled every minute (64 * 1440 * 2 = 184k).  Chosen; configurable.
DEFAULT_MAX_MESSAGES = 200_000
#: Default bound of the RAM buffer (messages put, not yet committed), reached only while
#: commits fail: ~4 MB of payloads.  Chosen.
DEFAULT_MAX_BUFFERED = 10_000
#: At most one warning about RAM-buffer drops this often (s).
WARN_EVERY_S = 60.0

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

_Row = tuple[str, str, bytes]


@dataclass(frozen=True, slots=True)
class Entry:
    """One queued message; ``seq`` orders the queue."""

    seq: int
    kind: str
    topic: str
    payload: bytes


def _coalesce_health(rows: list[_Row]) -> tuple[list[_Row], int]:
    """``rows`` with only the last health message of each topic; and how many went."""
    last = {topic: i for i, (kind, topic, _) in enumerate(rows) if kind == "health"}
    kept = [r for i, r in enumerate(rows) if r[0] != "health" or last[r[1]] == i]
    return kept, len(rows) - len(kept)


class Outbox:
    """A bounded, durable FIFO of MQTT messages.

    Args:
        path: SQLite file (created with its folder), or ``":memory:"`` for tests.
        max_messages: bound on queued messages before telemetry is dropped, > 0.
        max_buffered: bound on messages buffered in RAM and not yet committed (reached
            only while commits fail), > 0; default ``min(max_messages, 10_000)``.

    Thread-safe: the agent's event loop puts and commits, paho's thread acknowledges.

    Raises:
        sqlite3.DatabaseError: the file exists and is not an outbox database.
    """

    def __init__(self, path: str | Path, *, max_messages: int = DEFAULT_MAX_MESSAGES,
                 max_buffered: int | None = None) -> None:
        if max_messages <= 0:
            raise ValueError(f"outbox max_messages must be > 0, got {max_messages}")
        if max_buffered is None:
            max_buffered = min(max_messages, DEFAULT_MAX_BUFFERED)
        if max_buffered <= 0:
            raise ValueError(f"outbox max_buffered must be > 0, got {max_buffered}")
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self.max_messages = max_messages
        self.max_buffered = max_buffered
        self._lock = threading.Lock()  # the database
        # the buffer has its own lock: put() runs on the agent's event loop and must never
        # wait for a commit's fsync (milliseconds on an SD card) in the publisher's thread
        self._buf_lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._buffer: list[_Row] = []
        self._depth = self._count_rows()
        row = self._db.execute("SELECT value FROM counters WHERE name='dropped'").fetchone()
        self._dropped_db = row[0] if row else 0  # as written in the counters table
        self._dropped_buf = 0  # dropped from the RAM buffer, not yet written (under _buf_lock)
        #: health messages replaced by a newer one of the same topic (this run)
        self.superseded = 0
        self._warned_at: float | None = None
        self._unwarned_drops = 0

    # ----------------------------------------------------------------- writing
    def put(self, kind: Kind, topic: str, payload: bytes | str) -> None:
        """Buffer one message; it is accepted at the next :meth:`commit`.  A health message
        replaces a buffered one of the same topic; over ``max_buffered`` the oldest buffered
        telemetry (then health) is dropped, never an alert."""
        if isinstance(payload, str):
            payload = payload.encode()
        with self._buf_lock:
            if kind == "health":
                for i, (k, t, _) in enumerate(self._buffer):
                    if k == "health" and t == topic:
                        del self._buffer[i]
                        self.superseded += 1
                        break  # there is at most one: every put keeps it so
            self._buffer.append((kind, topic, payload))
            dropped = self._trim_buffer_locked()
        if dropped:
            self._warn_buffer_drops(dropped)

    def _trim_buffer_locked(self) -> int:
        """Drop the oldest buffered telemetry, then health, down to ``max_buffered``; count."""
        dropped = 0
        for kind in ("telemetry", "health"):
            while len(self._buffer) > self.max_buffered:
                i = next((i for i, r in enumerate(self._buffer) if r[0] == kind), None)
                if i is None:
                    break
                del self._buffer[i]
                dropped += 1
        self._dropped_buf += dropped
        return dropped

    def _warn_buffer_drops(self, n: int) -> None:
        """Log RAM-buffer drops: the first, then at most one line every WARN_EVERY_S."""
        self._unwarned_drops += n
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY_S:
            log.warning("outbox %s: %d messages wait in RAM, the bound, because the outbox cannot be "
                        "written; dropped the %d oldest telemetry/health messages (alerts are kept); "
                        "%d dropped in all", self.path, self.max_buffered, self._unwarned_drops,
                        self._dropped_db + self._dropped_buf)  # no lock: put() never waits for one
            self._warned_at, self._unwarned_drops = now, 0

    def commit(self) -> int:
        """Write buffered messages in one transaction, enforce the bound; count written.

        Raises:
            sqlite3.Error: the write failed (disk full, I/O error); nothing was accepted,
                the messages stay buffered (within ``max_buffered``) for the next commit.
        """
        with self._lock:
            with self._buf_lock:
                if not self._buffer and not self._dropped_buf:
                    return 0
                rows, self._buffer = self._buffer, []
                buf_dropped, self._dropped_buf = self._dropped_buf, 0
            rows, superseded = _coalesce_health(rows)
            topics = sorted({t for k, t, _ in rows if k == "health"})
            try:
                with self._transaction():
                    replaced = 0
                    if topics:
                        replaced = self._db.executemany(
                            "DELETE FROM outbox WHERE kind='health' AND topic=?", [(t,) for t in topics]
                        ).rowcount
                    self._db.executemany("INSERT INTO outbox (kind, topic, payload) VALUES (?, ?, ?)", rows)
                    depth = self._depth - replaced + len(rows)
                    dropped = 0
                    for kind in ("telemetry", "health"):
                        excess = depth - self.max_messages
                        if excess <= 0:
                            break
                        n = self._db.execute(
                            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox "
                            "WHERE kind=? ORDER BY seq LIMIT ?)", (kind, excess)
                        ).rowcount
                        depth -= n
                        dropped += n
                    total_dropped = self._dropped_db + buf_dropped + dropped
                    if total_dropped != self._dropped_db:
                        self._db.execute(
                            "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
                            "ON CONFLICT(name) DO UPDATE SET value=excluded.value", (total_dropped,))
            except BaseException:
                # rolled back (disk full, I/O error): nothing was accepted; keep the rows
                # buffered ahead of newer ones for the next commit, within the RAM bound
                with self._buf_lock:
                    self._buffer, again = _coalesce_health(rows + self._buffer)
                    self.superseded += superseded + again
                    self._dropped_buf += buf_dropped
                    trimmed = self._trim_buffer_locked()
                self._recount()
                if trimmed:
                    self._warn_buffer_drops(trimmed)
                raise
            # committed: only now do the counts change
            self._depth, self._dropped_db = depth, total_dropped
            with self._buf_lock:
                self.superseded += superseded + replaced
            return len(rows)

    @contextmanager
    def _transaction(self):
        """BEGIN IMMEDIATE ... COMMIT; rolled back when anything in it, or the COMMIT itself,
        fails (SQLite rolls back by itself after some errors, e.g. disk full, not others)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:  # the original error says more
                    pass
            raise

    def _count_rows(self) -> int:
        return self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def _recount(self) -> None:
        """After a failed write: the depth is what the table holds (unchanged if unreadable)."""
        try:
            self._depth = self._count_rows()
        except sqlite3.Error:
            pass

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
        """Remove acknowledged messages (unknown seqs are ignored: already dropped or
        replaced).

        Raises:
            sqlite3.Error: the delete failed (disk full, I/O error): nothing was removed,
                :attr:`depth` is unchanged; call again with the same seqs.
        """
        if not seqs:
            return
        with self._lock:
            try:
                with self._transaction():
                    removed = self._db.executemany(
                        "DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs]).rowcount
            except BaseException:
                self._recount()
                raise
            self._depth -= max(removed, 0)

    @property
    def depth(self) -> int:
        """Committed messages not yet acknowledged."""
        with self._lock:
            return self._depth

    @property
    def dropped(self) -> int:
        """Messages dropped because the outbox (or, while it could not be written, its RAM
        buffer) was full, since the outbox file was created."""
        with self._lock, self._buf_lock:
            return self._dropped_db + self._dropped_buf

    @property
    def buffered(self) -> int:
        """Messages put but not yet committed (not yet accepted)."""
        with self._buf_lock:
            return len(self._buffer)

    def count(self, kind: Kind) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM outbox WHERE kind=?", (kind,)).fetchone()[0]

    def close(self) -> None:
        """Commit what is buffered and close the database (closed even if the commit fails).

        Raises:
            sqlite3.Error: the last commit failed; what was buffered is lost.
        """
        try:
            self.commit()
        finally:
            with self._lock:
                self._db.close()
