"""The alert desk's own SQLite database: users, cases and the case history.

One case per alert (``gateway`` + ``alert_id``, as the store keys alerts).  A case moves
through the campaign's lifecycle, one step at a time, each step recorded as an event::

    new ──dispatch──▶ dispatched ──verify──▶ verified ──rectify──▶ rectified
        ──recheck──▶ rechecked ──close──▶ closed

``dispatch`` names the grid worker sent to the household; ``verify`` is the on-site
check that the hazard is real; ``rectify`` records that it was removed; ``recheck`` is the
campaign's "look back" visit some days later; ``close`` ends the case.  A new alert for a
household whose last case is closed (closed before the new alert started) and which has
no case still in progress opens a new case marked as a **rebound** of the closed one.

**Acknowledgements to the gateway.**  The alarms of an electrical-fire detector latch on
the gateway until a person acknowledges them (detectors/hazards.py).  The step that does it
is ``rectify`` (:data:`ACK_ACTIONS`): someone has been on site, found the hazard and made it
safe, which is what resetting a latched GB 14287 detector alarm stands for.  ``rectify`` of a
case whose alert is of a latching kind (:data:`agent.schema.LATCHING_KINDS`) and still open
queues, in the same transaction, an acknowledgement in table ``acks``; the desk's
:class:`broker.desk.acks.AckSender` publishes it to the gateway
(``flylead/v1/{gw}/cmd/ack``) and sends it again, with the same ``msg_id``, every
``retry_s`` until a synced alert message shows the gateway took it (``ack=`` in its
detail, or the alert closed): ``pending`` → ``sent`` → ``done`` (or ``expired``).

All times are UTC epoch seconds.  Thread-safe: each call opens its own connection (WAL
mode), so the web server's threads, a sync thread and the CLI may share the file.
"""

from __future__ import annotations

import functools
import hmac
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from agent.schema import HAZARD_PATTERN, LATCHING_KINDS, NAME_PATTERN, AlertMsg
from broker.desk.registry import UNASSIGNED, Registry

__all__ = [
    "ACK_ACTIONS",
    "ACK_STATES",
    "ACTIONS",
    "Ack",
    "KIND_LABELS",
    "STATES",
    "Case",
    "DeskDB",
    "DeskError",
    "Event",
    "TransitionError",
    "User",
]

#: Case states in lifecycle order.
STATES = ("new", "dispatched", "verified", "rectified", "rechecked", "closed")
#: action -> (state it applies to, state it leads to).
ACTIONS: dict[str, tuple[str, str]] = {
    "dispatch": ("new", "dispatched"),
    "verify": ("dispatched", "verified"),
    "rectify": ("verified", "rectified"),
    "recheck": ("rectified", "rechecked"),
    "close": ("rechecked", "closed"),
}
ROLES = ("office", "village")
#: Lifecycle actions that acknowledge a latched hazard alert on its gateway: ``rectify``
#: (the hazard was made safe on site; ``verify`` only finds it, and resetting an alarm
#: whose cause is still there would just let it latch again).
ACK_ACTIONS = ("rectify",)
#: Acknowledgement states: queued, published (PUBACK from the broker), taken by the
#: gateway (or the alert closed meanwhile), given up after ``max_age_s``.
ACK_STATES = ("pending", "sent", "done", "expired")
#: Longest note sent with an acknowledgement (agent.schema.AckCmd).
MAX_ACK_NOTE = 200
#: How an acknowledging action reads in the note sent to the gateway.
ACK_VERBS = {"rectify": "rectified"}

log = logging.getLogger("flylead.desk")
#: How alert kinds (agent.schema.ALERT_KINDS) are shown to people.
KIND_LABELS = {
    "ebike_charging": "e-bike charging (flying lead)",
    "residual_current": "residual current",
    "cable_temperature": "cable temperature",
    "overload": "overload",
    "device_offline": "meter offline",
}
#: Longest note or worker name kept (characters): a sentence or two, not a document.
MAX_NOTE = 1000
MAX_WORKER = 100
#: Characters a grid worker's name may not hold: control characters (C0, DEL, C1).  They
#: have no business in a name, and some cannot even be written to an XLSX cell.
WORKER_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: Characters a note may not hold: control characters other than tab and line breaks.
NOTE_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
#: Seconds a write waits for another connection's lock before failing.
_BUSY_TIMEOUT_S = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,
    pw_hash  TEXT NOT NULL,          -- argon2id (argon2-cffi PasswordHasher)
    role     TEXT NOT NULL CHECK (role IN ('office', 'village')),
    village  TEXT,                   -- village id for role 'village', NULL for 'office'
    created  REAL NOT NULL,
    session_token TEXT NOT NULL DEFAULT ''  -- in every web session of the user; a new one
                                     -- (password change, logout) ends all sessions
);
CREATE TABLE IF NOT EXISTS cases (
    id          INTEGER PRIMARY KEY,
    gateway     TEXT NOT NULL,
    alert_id    TEXT NOT NULL,
    household   TEXT NOT NULL,
    device      TEXT NOT NULL,
    village     TEXT NOT NULL,
    compound    TEXT,
    kind        TEXT NOT NULL,
    alert_start REAL NOT NULL,       -- UTC epoch s
    alert_end   REAL,                -- UTC epoch s, NULL while the alert is open
    alert_state TEXT NOT NULL,       -- the alert's own state: open | closed
    confidence  REAL NOT NULL,
    energy_kwh  REAL,
    peak_w      REAL,
    detail      TEXT NOT NULL DEFAULT '',
    state       TEXT NOT NULL DEFAULT 'new',
    worker      TEXT,
    rebound_of  INTEGER REFERENCES cases(id),
    created     REAL NOT NULL,       -- when the desk took the alert in
    updated     REAL NOT NULL,
    closed      REAL,                -- when the case was closed
    UNIQUE (gateway, alert_id)
);
CREATE INDEX IF NOT EXISTS cases_village ON cases (village, state);
CREATE INDEX IF NOT EXISTS cases_household ON cases (gateway, household, alert_start);
CREATE TABLE IF NOT EXISTS events (
    id        INTEGER PRIMARY KEY,
    case_id   INTEGER NOT NULL REFERENCES cases(id),
    ts        REAL NOT NULL,         -- UTC epoch s
    username  TEXT NOT NULL,
    action    TEXT NOT NULL,
    from_state TEXT,
    to_state  TEXT NOT NULL,
    note      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_case ON events (case_id, ts);
CREATE TABLE IF NOT EXISTS acks (
    id        INTEGER PRIMARY KEY,
    case_id   INTEGER NOT NULL REFERENCES cases(id),
    gateway   TEXT NOT NULL,
    alert_id  TEXT NOT NULL,
    device    TEXT NOT NULL,
    hazard    TEXT NOT NULL,
    username  TEXT NOT NULL,         -- who acknowledged
    at        REAL NOT NULL,         -- when, UTC epoch s
    note      TEXT NOT NULL DEFAULT '',
    msg_id    TEXT NOT NULL UNIQUE,  -- the same on every resend
    state     TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'done', 'expired')),
    attempts  INTEGER NOT NULL DEFAULT 0,
    last_sent REAL,                  -- UTC epoch s of the last PUBACK
    settled   REAL                   -- UTC epoch s it became done or expired
);
CREATE INDEX IF NOT EXISTS acks_state ON acks (state);
"""


class DeskError(Exception):
    """A desk operation failed; the message names the object and the cause."""


class TransitionError(DeskError):
    """The action does not apply to the case's current state."""


@dataclass(frozen=True, slots=True)
class User:
    username: str
    role: Literal["office", "village"]
    village: str | None

    def can_see(self, village: str) -> bool:
        """The office sees every village; a village user only its own."""
        return self.role == "office" or village == self.village


@dataclass(frozen=True, slots=True)
class Case:
    id: int
    gateway: str
    alert_id: str
    household: str
    device: str
    village: str
    compound: str | None
    kind: str
    alert_start: float
    alert_end: float | None
    alert_state: str
    confidence: float
    energy_kwh: float | None
    peak_w: float | None
    detail: str
    state: str
    worker: str | None
    rebound_of: int | None
    created: float
    updated: float
    closed: float | None

    @property
    def rebound(self) -> bool:
        return self.rebound_of is not None

    @property
    def next_action(self) -> str | None:
        """The action that moves this case on, None when closed."""
        for action, (src, _) in ACTIONS.items():
            if src == self.state:
                return action
        return None


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    case_id: int
    ts: float
    username: str
    action: str
    from_state: str | None
    to_state: str
    note: str


@dataclass(frozen=True, slots=True)
class Ack:
    """An acknowledgement queued for a gateway (table ``acks``); times UTC epoch s."""

    id: int
    case_id: int
    gateway: str
    alert_id: str
    device: str
    hazard: str
    username: str
    at: float
    note: str
    msg_id: str
    state: str
    attempts: int
    last_sent: float | None
    settled: float | None


def hazard_of(alert_id: str, gateway: str, device: str) -> str | None:
    """The hazard in a hazard alert's id ``{gateway}:{device}:{hazard}:{start}``
    (agent/hazards.py), or None when the id is not of that form (e.g. truncated)."""
    prefix = f"{gateway}:{device}:"
    if not alert_id.startswith(prefix):
        return None
    hazard, sep, start = alert_id[len(prefix):].rpartition(":")
    if not sep or not start.isdigit() or not re.match(HAZARD_PATTERN, hazard):
        return None
    return hazard


_hasher = PasswordHasher()


class DeskDB:
    """The desk database file (created with its tables if missing).

    Raises:
        DeskError: the file cannot be opened or is not a desk database.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            with self._db() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
            self._migrate()
        except sqlite3.Error as exc:
            raise DeskError(f"cannot open desk database {self.path!r}: {exc}") from exc
        self._warned: set[tuple[str, str, str]] = set()

    def _migrate(self) -> None:
        """Bring a database made by an earlier version up to date: users get a session
        token (their sessions from before it end: they log in again)."""
        with self._tx() as db:
            columns = {r["name"] for r in db.execute("PRAGMA table_info(users)").fetchall()}
            if "session_token" not in columns:
                db.execute("ALTER TABLE users ADD COLUMN session_token TEXT NOT NULL DEFAULT ''")
            db.execute("UPDATE users SET session_token = lower(hex(randomblob(16))) WHERE session_token = ''")

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        except sqlite3.Error as exc:
            raise DeskError(f"desk database {self.path!r}: {exc}") from exc
        finally:
            db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE: one writer at a time, no lost updates)."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- meta ----------------------------------------------------------------------------

    def secret_key(self) -> str:
        """The web session signing key, made on first use and kept in the database so
        that sessions survive a restart."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'secret_key'").fetchone()
            if row:
                return str(row[0])
            key = secrets.token_hex(32)
            db.execute("INSERT INTO meta VALUES ('secret_key', ?)", (key,))
            return key

    # -- users ---------------------------------------------------------------------------

    def add_user(self, username: str, password: str, role: str, village: str | None = None,
                 *, replace: bool = False, registry: Registry | None = None) -> User:
        """Create (or with ``replace`` update) a user; the password is stored argon2id-hashed.

        A village must be a name (NAME_PATTERN) and not the pseudo-village of unregistered
        households (:data:`~broker.desk.registry.UNASSIGNED`, the office's); with
        ``registry``, one of its villages.  ``replace`` also ends the user's web sessions
        (a new session token).

        Raises:
            DeskError: bad name, role, village or password, or the user exists and
                ``replace`` is False.
        """
        if not re.match(NAME_PATTERN, username):
            raise DeskError(f"user name {username!r} must match {NAME_PATTERN}")
        if role not in ROLES:
            raise DeskError(f"user {username!r}: role must be one of {ROLES}, got {role!r}")
        if role == "village" and not village:
            raise DeskError(f"user {username!r}: a village user needs a village")
        if role == "office" and village:
            raise DeskError(f"user {username!r}: an office user sees every village; give no village")
        if village is not None and role == "village":
            if village == UNASSIGNED:
                raise DeskError(f"user {username!r}: village {village!r} is reserved for alerts of households "
                                "not in the registry (office users see them)")
            if not re.match(NAME_PATTERN, village):
                raise DeskError(f"user {username!r}: village {village!r} must be a village id matching {NAME_PATTERN}")
            if registry is not None and village not in registry.villages:
                raise DeskError(f"user {username!r}: village {village!r} is not in the registry "
                                f"(villages: {', '.join(sorted(registry.villages)) or 'none'})")
        if len(password) < 8 or not password.strip():
            raise DeskError(f"user {username!r}: password must have at least 8 characters, not only spaces")
        pw_hash = _hasher.hash(password)
        query = "INSERT INTO users (username, pw_hash, role, village, created, session_token) VALUES (?,?,?,?,?,?)"
        if replace:  # keeps 'created'; a new session token ends the user's sessions
            query += (" ON CONFLICT (username) DO UPDATE SET pw_hash = excluded.pw_hash, role = excluded.role,"
                      " village = excluded.village, session_token = excluded.session_token")
        try:
            with self._tx() as db:
                db.execute(query, (username, pw_hash, role, village, time.time(), secrets.token_hex(16)))
        except DeskError as exc:
            if "UNIQUE" in str(exc):
                raise DeskError(f"user {username!r} already exists in {self.path}") from None
            raise
        return User(username, role, village)  # type: ignore[arg-type]

    def user(self, username: str) -> User | None:
        with self._db() as db:
            row = db.execute("SELECT username, role, village FROM users WHERE username = ?",
                             (username,)).fetchone()
        return User(row["username"], row["role"], row["village"]) if row else None

    def check_password(self, username: str, password: str) -> User | None:
        """The user if ``password`` is theirs, else None (also for unknown users, after
        the same hashing work so that timing does not tell which names exist)."""
        found = self.login(username, password)
        return found[0] if found else None

    def login(self, username: str, password: str) -> tuple[User, str] | None:
        """(user, session token) if ``password`` is the user's, else None; see
        :meth:`check_password`.  The web app keeps the token in the session and checks it
        on every request (:meth:`session_user`)."""
        with self._db() as db:
            row = db.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        pw_hash = row["pw_hash"] if row else _dummy_hash()
        try:
            _hasher.verify(pw_hash, password)
        except (VerificationError, InvalidHashError):
            return None
        if row is None:
            return None
        return User(row["username"], row["role"], row["village"]), str(row["session_token"])

    def session_user(self, username: str, token: str) -> User | None:
        """The user of a web session, if ``token`` is still the user's session token (not
        ended by a password change or a logout since), else None."""
        with self._db() as db:
            row = db.execute("SELECT username, role, village, session_token FROM users WHERE username = ?",
                             (username,)).fetchone()
        if row is None or not row["session_token"] or not hmac.compare_digest(
                str(row["session_token"]).encode(), token.encode()):
            return None
        return User(row["username"], row["role"], row["village"])

    def end_sessions(self, username: str) -> None:
        """End every web session of ``username`` (a new session token); the web app's
        logout calls it, so that a copy of the session cookie is worthless afterwards."""
        with self._tx() as db:
            db.execute("UPDATE users SET session_token = ? WHERE username = ?", (secrets.token_hex(16), username))

    def users(self) -> list[User]:
        with self._db() as db:
            rows = db.execute("SELECT username, role, village FROM users ORDER BY username").fetchall()
        return [User(r["username"], r["role"], r["village"]) for r in rows]

    # -- cases ---------------------------------------------------------------------------

    def case(self, case_id: int) -> Case | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM cases WHERE id = ?", (case_id,)).fetchone()
        return Case(**dict(row)) if row else None

    def cases(self, villages: Sequence[str] | None = None, states: Iterable[str] | None = None) -> list[Case]:
        """Cases of ``villages`` (None: all) in ``states`` (None: all), ordered by village,
        compound, then newest alert first."""
        query = "SELECT * FROM cases"
        where, args = [], []
        if villages is not None:
            where.append(f"village IN ({','.join('?' * len(villages))})")
            args += list(villages)
        if states is not None:
            states = list(states)
            where.append(f"state IN ({','.join('?' * len(states))})")
            args += states
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY village, compound, alert_start DESC, id DESC"
        with self._db() as db:
            rows = db.execute(query, args).fetchall()
        return [Case(**dict(r)) for r in rows]

    def events(self, case_id: int | None = None) -> list[Event]:
        """History of one case (or of all), oldest first."""
        with self._db() as db:
            if case_id is None:
                rows = db.execute("SELECT * FROM events ORDER BY ts, id").fetchall()
            else:
                rows = db.execute("SELECT * FROM events WHERE case_id = ? ORDER BY ts, id",
                                  (case_id,)).fetchall()
        return [Event(**dict(r)) for r in rows]

    def transition(self, case_id: int, action: str, username: str, *, note: str = "",
                   worker: str | None = None, at: float | None = None) -> Case:
        """Apply a lifecycle ``action`` to a case and record it.

        Args:
            action: one of :data:`ACTIONS`.
            username: who did it (recorded in the history).
            note: free text (at most :data:`MAX_NOTE` characters).
            worker: the grid worker's name; required for ``dispatch``.
            at: when it happened (UTC epoch s); default now.

        Raises:
            DeskError: no such case, bad note or missing worker.
            TransitionError: the action does not apply to the case's state (e.g. it was
                moved on by someone else meanwhile).
        """
        if action not in ACTIONS:
            raise TransitionError(f"case {case_id}: unknown action {action!r} (one of {list(ACTIONS)})")
        note = note.strip()
        if len(note) > MAX_NOTE:
            raise DeskError(f"case {case_id}: note longer than {MAX_NOTE} characters")
        if NOTE_FORBIDDEN.search(note):
            raise DeskError(f"case {case_id}: the note must not contain control characters "
                            "(line breaks and tabs are fine)")
        if action == "dispatch":
            worker = (worker or "").strip()
            if not worker or len(worker) > MAX_WORKER:
                raise DeskError(f"case {case_id}: dispatch needs a grid worker name (1-{MAX_WORKER} characters)")
            if WORKER_FORBIDDEN.search(worker):
                raise DeskError(f"case {case_id}: the grid worker name must not contain control characters")
        src, dst = ACTIONS[action]
        now = time.time() if at is None else at
        with self._tx() as db:
            row = db.execute("SELECT * FROM cases WHERE id = ?", (case_id,)).fetchone()
            if row is None:
                raise DeskError(f"no case {case_id} in {self.path}")
            if row["state"] != src:
                raise TransitionError(
                    f"case {case_id} is {row['state']!r}: {action!r} applies to {src!r} cases only")
            db.execute(
                "UPDATE cases SET state = ?, updated = ?, worker = COALESCE(?, worker),"
                " closed = CASE WHEN ? = 'closed' THEN ? ELSE closed END WHERE id = ?",
                (dst, now, worker if action == "dispatch" else None, dst, now, case_id))
            db.execute("INSERT INTO events (case_id, ts, username, action, from_state, to_state, note)"
                       " VALUES (?,?,?,?,?,?,?)", (case_id, now, username, action, src, dst, note))
            if action in ACK_ACTIONS:
                self._queue_ack(db, row, action, username, now, note)
        case = self.case(case_id)
        assert case is not None
        return case

    # -- acknowledgements to the gateways ----------------------------------------------------

    @staticmethod
    def _queue_ack(db: sqlite3.Connection, case: sqlite3.Row, action: str, username: str,
                   at: float, note: str) -> None:
        """Queue the acknowledgement of a case's latched alert (see the module docstring)."""
        if case["kind"] not in LATCHING_KINDS or case["alert_state"] != "open":
            return  # nothing latched on the gateway (not a latching kind, or closed already)
        hazard = hazard_of(case["alert_id"], case["gateway"], case["device"])
        if hazard is None:
            log.warning("case %s: alert id %r does not name a hazard; no acknowledgement sent to %s",
                        case["id"], case["alert_id"], case["gateway"])
            return
        verb = ACK_VERBS.get(action, action)
        text = " ".join(re.sub(r"[\x00-\x1f\x7f]", " ", f"{verb}: {note}" if note else verb).split())
        if len(text) > MAX_ACK_NOTE:
            text = text[:MAX_ACK_NOTE - 1] + "…"
        db.execute(
            "INSERT INTO acks (case_id, gateway, alert_id, device, hazard, username, at, note, msg_id)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            (case["id"], case["gateway"], case["alert_id"], case["device"], hazard, username, at, text,
             f"desk:{case['id']}:{secrets.token_hex(6)}"))

    def acks(self, case_id: int | None = None, states: Iterable[str] | None = None) -> list[Ack]:
        """Queued acknowledgements (of one case, in some states), oldest first."""
        query, args = "SELECT * FROM acks WHERE (?1 IS NULL OR case_id = ?1)", [case_id]
        if states is not None:
            states = list(states)
            query += f" AND state IN ({','.join('?' * len(states))})"
            args += states
        with self._db() as db:
            rows = db.execute(query + " ORDER BY id", args).fetchall()
        return [Ack(**dict(r)) for r in rows]

    def due_acks(self, now: float, retry_s: float, max_age_s: float) -> list[Ack]:
        """Acknowledgements to publish now: ``pending`` ones, and ``sent`` ones whose last
        publish is ``retry_s`` or more ago (the gateway has not shown it took them yet).
        Those given more than ``max_age_s`` ago become ``expired`` instead."""
        with self._tx() as db:
            db.execute("UPDATE acks SET state = 'expired', settled = ? WHERE state IN ('pending', 'sent')"
                       " AND at < ?", (now, now - max_age_s))
            rows = db.execute("SELECT * FROM acks WHERE state = 'pending' OR (state = 'sent' AND"
                              " last_sent <= ?) ORDER BY id", (now - retry_s,)).fetchall()
        return [Ack(**dict(r)) for r in rows]

    def ack_sent(self, ack_id: int, now: float) -> None:
        """The broker acknowledged (PUBACK) a publish of ack ``ack_id`` at ``now``."""
        with self._tx() as db:
            db.execute("UPDATE acks SET attempts = attempts + 1, last_sent = ?,"
                       " state = CASE WHEN state = 'pending' THEN 'sent' ELSE state END WHERE id = ?",
                       (now, ack_id))

    # -- sync from the store ---------------------------------------------------------------

    def sync_alerts(self, alerts: Iterable[AlertMsg], registry: Registry,
                    *, now: float | None = None) -> list[Case]:
        """Create a case for each alert not yet known; refresh the alert fields of known ones.

        Idempotent: an alert (gateway, alert_id) gets one case however often it is synced.
        ``alerts`` may hold several messages of one alert (open, then closed; the store's
        every message, :meth:`broker.store.SqliteStore.alerts`).  Rules, against a gateway
        that publishes a wrong message (a clock far off, a bug, a forgery):

        - A case's household, device and kind are those of the alert's first message
          (earliest ``ts``) when the case is created, and never change: a later message
          of the same alert id naming another household, device or kind is logged and
          ignored (it neither refreshes the case nor settles its acknowledgements).
        - ``closed`` is final for an alert id (the agent opens a new alert id for a new
          alarm: ``{device}:{hazard}:{start}``, ``{household}:ebike_charging:{start}``):
          once a closed message was seen, the case's alert is closed and no open message,
          of any ``ts``, reopens it or changes its fields.
        - The alert fields (start, end, confidence, energy, peak, detail) are those of the closed
          message with the greatest ``ts`` once there is one, else of the open message with
          the greatest ``ts``.  (The one way the agent reuses an id: a charging alert
          withdrawn while open, whose session qualifies again with the same start, is
          published open and closed again; its final closed message then gives the fields.)

        Village and compound come from ``registry`` on every sync, looked up by the case's
        own (gateway, household): a household added to the registry later moves its cases
        there; a message cannot move a case.  New cases are created in order of alert
        start, so a rebound is linked to the closed case before it.

        Returns:
            The newly created cases (for notifications), in creation order.
        """
        now = time.time() if now is None else now
        by_alert: dict[tuple[str, str], list[AlertMsg]] = {}
        for a in alerts:
            by_alert.setdefault((a.gateway, a.alert_id), []).append(a)
        for msgs in by_alert.values():
            msgs.sort(key=lambda m: (m.ts, m.state == "closed", m.msg_id))
        created: list[int] = []
        with self._tx() as db:
            work = []
            for key, msgs in by_alert.items():
                row = db.execute("SELECT * FROM cases WHERE gateway = ? AND alert_id = ?", key).fetchone()
                start = row["alert_start"] if row is not None else msgs[0].start
                work.append((start, key, row, msgs))
            work.sort(key=lambda w: (w[0], w[1]))
            for _, (gateway, alert_id), row, msgs in work:
                if row is not None:
                    self._refresh_case(db, row, msgs, registry, now)
                    continue
                first = msgs[0]  # the case's household, device and kind from now on
                same = self._consistent(first.household, first.device, first.kind, msgs,
                                        f"new case of alert {alert_id!r} of {gateway}")
                a = self._alert_fields(same)
                village, compound = registry.locate(gateway, first.household)
                rebound_of = self._rebound_of(db, first)
                cur = db.execute(
                    "INSERT INTO cases (gateway, alert_id, household, device, village, compound,"
                    " kind, alert_start, alert_end, alert_state, confidence, energy_kwh, peak_w,"
                    " detail, state, rebound_of, created, updated)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,'new',?,?,?)",
                    (gateway, alert_id, first.household, first.device, village, compound, first.kind,
                     a.start, a.end, a.state, a.confidence, a.energy_kwh, a.peak_w, a.detail,
                     rebound_of, now, now))
                case_id = int(cur.lastrowid or 0)
                db.execute("INSERT INTO events (case_id, ts, username, action, from_state, to_state, note)"
                           " VALUES (?,?,?,?,?,?,?)",
                           (case_id, now, "system", "open", None, "new",
                            f"rebound of case {rebound_of}" if rebound_of else ""))
                created.append(case_id)
        return [c for c in (self.case(i) for i in created) if c is not None]

    def _consistent(self, household: str, device: str, kind: str, msgs: list[AlertMsg],
                    what: str) -> list[AlertMsg]:
        """The messages of ``msgs`` naming the case's household, device and kind; the
        others are logged (once per message and process) and left out."""
        same = []
        for m in msgs:
            if (m.household, m.device, m.kind) == (household, device, kind):
                same.append(m)
                continue
            key = (m.gateway, m.alert_id, m.msg_id)
            if key not in self._warned:
                self._warned.add(key)
                log.warning("%s: message %s (%s, ts %s) names household %r, device %r, kind %r, but the "
                            "case is household %r, device %r, kind %r: ignored", what, m.msg_id, m.state,
                            m.ts, m.household, m.device, m.kind, household, device, kind)
        return same

    @staticmethod
    def _alert_fields(msgs: list[AlertMsg]) -> AlertMsg:
        """The message that gives a case its alert fields (``msgs`` sorted by ts, not empty):
        the latest closed one (closed is final), else the latest open one."""
        closed = [m for m in msgs if m.state == "closed"]
        return closed[-1] if closed else msgs[-1]

    def _refresh_case(self, db: sqlite3.Connection, row: sqlite3.Row, msgs: list[AlertMsg],
                      registry: Registry, now: float) -> None:
        """Refresh a known case from its alert's messages (rules: :meth:`sync_alerts`)."""
        village, compound = registry.locate(row["gateway"], row["household"])
        if (village, compound) != (row["village"], row["compound"]):  # the registry is the truth
            db.execute("UPDATE cases SET village = ?, compound = ? WHERE id = ?", (village, compound, row["id"]))
        same = self._consistent(row["household"], row["device"], row["kind"], msgs,
                                f"case {row['id']} (alert {row['alert_id']!r} of {row['gateway']})")
        if not same:
            return
        a = self._alert_fields(same)
        if row["alert_state"] != "closed" or a.state == "closed":  # no open message after a close
            db.execute(
                "UPDATE cases SET alert_start = ?, alert_end = ?, alert_state = ?, confidence = ?,"
                " energy_kwh = ?, peak_w = ?, detail = ? WHERE id = ?",
                (a.start, a.end, a.state, a.confidence, a.energy_kwh, a.peak_w, a.detail, row["id"]))
        closed = row["alert_state"] == "closed" or a.state == "closed"
        if closed or any("; ack=" in m.detail for m in same):
            # the gateway took the acknowledgement (its detail says ack=who@when), or the
            # alert is over: nothing more to send
            db.execute("UPDATE acks SET state = 'done', settled = ? WHERE case_id = ?"
                       " AND state IN ('pending', 'sent')", (now, row["id"]))

    @staticmethod
    def _rebound_of(db: sqlite3.Connection, a: AlertMsg) -> int | None:
        """The closed case this alert is a rebound of, if any (see module docstring)."""
        rows = db.execute(
            "SELECT id, state, closed FROM cases WHERE gateway = ? AND household = ?"
            " ORDER BY alert_start DESC, id DESC", (a.gateway, a.household)).fetchall()
        if not rows or any(r["state"] != "closed" for r in rows):
            return None  # first alert of the household, or a case still in progress
        last = max(rows, key=lambda r: r["closed"])
        return int(last["id"]) if last["closed"] <= a.start else None


@functools.cache
def _dummy_hash() -> str:
    """A hash checked against when the user does not exist (same cost as a real check)."""
    return _hasher.hash(secrets.token_hex(16))


def sync_from_store(desk: DeskDB, store: Any, registry: Registry, *, now: float | None = None) -> list[Case]:
    """Create cases for new alerts of a :class:`~broker.store.SqliteStore` (all messages
    of its alerts table); see :meth:`DeskDB.sync_alerts`.

    Raises:
        StoreError: the store cannot be read.
        DeskError: the desk database cannot be written.
    """
    # every message, not only the latest per alert: a message with a wrong (far-future) ts
    # must not hide the alert's closed message (DeskDB.sync_alerts)
    return desk.sync_alerts(store.alerts(), registry, now=now)


__all__ += ["sync_from_store"]
