"""The outbox when its SQLite writes fail, and its bound when the broker is away.

Faults are made in the real SQLite file, deterministically:
* a failing COMMIT: a trace callback sees each statement, a progress handler interrupts the
  COMMIT of a transaction that deleted acknowledged messages (as a full disk fails the
  COMMIT that appends to the WAL); SQLite leaves that transaction open, as it may after
  some I/O errors;
* a full disk: ``PRAGMA max_page_count`` at the current size (SQLite's own "database or
  disk is full").
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid

from agent.config import MqttSettings
from agent.outbox import Outbox
from agent.publisher import Publisher
from agent.schema import TelemetryMsg, telemetry_topic


class AckCommitFault:
    """Make the COMMIT of every transaction that deletes outbox rows by seq (an ack) fail."""

    def __init__(self, box: Outbox) -> None:
        self.db = box._db
        self.armed = True
        self.failed = 0
        self._deleting = False
        self._last = ""
        self.db.set_trace_callback(self._trace)
        self.db.set_progress_handler(self._progress, 1)

    def _trace(self, sql: str) -> None:
        text = " ".join(sql.split()).upper()
        if text.startswith("BEGIN"):
            self._deleting = False
        elif text.startswith("DELETE FROM OUTBOX WHERE SEQ ="):
            self._deleting = True
        self._last = text

    def _progress(self) -> int:
        if self.armed and self._deleting and self._last == "COMMIT":
            self.failed += 1
            self._last = ""  # once per COMMIT
            return 1  # sqlite3.OperationalError: interrupted
        return 0

    def clear(self) -> None:
        self.armed = False


def rows(box: Outbox) -> int:
    """Rows in the table, as another connection (the next start) sees them."""
    with sqlite3.connect(box.path) as db:
        return db.execute("SELECT count(*) FROM outbox").fetchone()[0]


def test_failed_ack_changes_no_depth_and_is_retried(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    for i in range(300):
        box.put("telemetry", "t", f"m{i}")
    assert box.commit() == 300
    fault = AckCommitFault(box)
    first = [e.seq for e in box.peek(limit=50)]
    try:
        box.ack(first)
    except sqlite3.OperationalError as exc:
        assert "interrupted" in str(exc)
    else:
        raise AssertionError("the ack's COMMIT did not fail")
    assert fault.failed == 1
    # nothing was deleted, and the depth says so (it was 250 before the fix)
    assert (box.depth, rows(box), box._db.in_transaction) == (300, 300, False)
    # the outbox goes on working: a commit (no delete in it) and, the fault cleared, the
    # same ack again
    box.put("telemetry", "t", "m300")
    assert box.commit() == 1
    assert (box.depth, rows(box)) == (301, 301)
    fault.clear()
    box.ack(first)
    assert (box.depth, rows(box)) == (251, 251)
    assert box.peek(limit=1)[0].payload == b"m50"


def test_publisher_keeps_failed_acks_and_deletes_them_when_the_disk_recovers(mosquitto, tmp_path, caplog):
    """Against the real broker: every ack fails for a while; the acknowledged messages
    stay in SQLite meanwhile (sent again only after a restart), the error is logged once,
    and once the fault clears they are deleted: rows == depth == 0."""
    gw = f"t{uuid.uuid4().hex[:8]}"
    box = Outbox(tmp_path / "o.sqlite")
    pub = Publisher(gw, MqttSettings(), box, commit_interval_s=0.05)
    fault = AckCommitFault(box)
    pub.connect()
    with caplog.at_level(logging.INFO, logger="flylead.agent.mqtt"):
        for i in range(50):
            pub.publish(telemetry_topic(gw, "m1"), TelemetryMsg(
                msg_id=pub.next_msg_id(), gateway=gw, ts=1.8e9 + i, device="m1",
                values={"active_power": float(i)}))
        pub.commit()
        deadline = time.monotonic() + 10
        while (pub.acked < 50 or fault.failed < 5 or pub.outbox_errors < 5) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pub.acked == 50 and fault.failed >= 5  # the broker acknowledged all, deletes failed
        assert pub.outbox_errors >= 5
        with pub._lock:
            pending = sorted(pub._acked)
        assert len(pending) == 50  # kept for the next try (lost before the fix)
        assert (box.depth, rows(box), pub.unacked) == (50, 50, 0)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1  # rate-limited: one line, not one every commit_interval_s
        assert "deleting acknowledged messages failed" in errors[0].getMessage()
        assert "o.sqlite" in errors[0].getMessage()
        fault.clear()

        def recovered() -> bool:  # the warning follows the delete on the sender thread
            return any("written again" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)

        deadline = time.monotonic() + 5
        while (box.depth or not recovered()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (box.depth, rows(box)) == (0, 0)
        assert recovered()
    pub.close()


def test_ram_buffer_is_bounded_while_the_disk_is_full(tmp_path, caplog):
    """Commits fail (disk full): the buffer keeps at most max_buffered messages, dropping the
    oldest telemetry and never an alert; one warning; the drops are counted and, once the
    disk has room, written with the rest."""
    path = tmp_path / "o.sqlite"
    box = Outbox(path, max_buffered=10)
    box.put("telemetry", "t", "seed")
    box.commit()
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count = {pages}")
    big = "x" * 2000  # new pages needed
    with caplog.at_level(logging.WARNING, logger="flylead.agent.outbox"):
        for i in range(5):
            box.put("alert", "a", f"A{i}" + big)
        for i in range(20):
            box.put("telemetry", "t", f"T{i}" + big)
        try:
            box.commit()
        except sqlite3.OperationalError as exc:
            assert "full" in str(exc)
        else:
            raise AssertionError("commit into a full database succeeded")
        for i in range(20, 30):
            box.put("telemetry", "t", f"T{i}" + big)
        box.put("health", "h/gateway", "H0")
        box.put("health", "h/gateway", "H1")  # replaces H0
    assert box.buffered == 10 and box.dropped == 26 and box.depth == 1
    warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(warnings) == 1 and "o.sqlite" in warnings[0].getMessage()
    box._db.execute("PRAGMA max_page_count = 1073741823")
    assert box.commit() == 10
    assert [e.payload[:3] for e in box.peek(limit=20)] == [
        b"see", b"A0x", b"A1x", b"A2x", b"A3x", b"A4x", b"T26", b"T27", b"T28", b"T29", b"H1"]
    assert (box.depth, box.dropped) == (11, 26)
    box.close()
    assert Outbox(path).dropped == 26  # written to the database


def test_health_is_coalesced_and_the_bound_holds_with_the_broker_away(tmp_path):
    """The tester's case: max_messages = 100, health every 1 s (the gateway and two
    meters), two meters polled every 0.5 s, nothing acknowledged for 60 s.  Only the
    newest health of each topic waits; the newest telemetry fills the rest of the bound."""
    box = Outbox(tmp_path / "o.sqlite", max_messages=100)
    for s in range(60):
        for half in range(2):
            for m in ("m1", "m2"):
                box.put("telemetry", f"tele/{m}", f"{m}:{s}.{half}")
        for topic in ("health/gateway", "health/m1", "health/m2"):
            box.put("health", topic, f"{topic}@{s}")
        box.commit()
    assert (box.count("health"), box.count("telemetry"), box.depth) == (3, 97, 100)
    assert box.dropped == 240 - 97 and box.superseded == 180 - 3
    entries = box.peek(limit=200)
    assert [e.payload for e in entries if e.kind == "health"] == [
        b"health/gateway@59", b"health/m1@59", b"health/m2@59"]
    tele = [e.payload.decode() for e in entries if e.kind == "telemetry"]
    assert tele[0] == "m2:35.1" and tele[-1] == "m2:59.1"  # the newest 97 of 240
    assert [e.seq for e in entries] == sorted(e.seq for e in entries)


def test_health_goes_before_an_alert_when_no_telemetry_is_left(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_messages=5)
    for i in range(4):
        box.put("alert", "a", f"A{i}")
    for d in ("d1", "d2", "d3"):
        box.put("health", f"health/{d}", d)
    box.commit()
    assert [e.payload for e in box.peek()] == [b"A0", b"A1", b"A2", b"A3", b"d3"]
    assert (box.depth, box.dropped) == (5, 2)
    for i in range(4, 8):  # alerts alone still exceed the bound: never dropped
        box.put("alert", "a", f"A{i}")
    box.commit()
    assert (box.count("alert"), box.count("health"), box.dropped) == (8, 0, 3)
