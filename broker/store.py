"""Where the ingest puts validated messages.

Two stores implement :class:`Store`:

* :class:`SqliteStore` — the embedded default (demo, single site): one file, queryable
  with the read methods below.
* :class:`InfluxStore` — InfluxDB 2 or VictoriaMetrics (``/api/v2/write``) through
  influxdb-client, for deployments with dashboards.

Both are idempotent: writing a message that is already stored changes nothing, so the
ingest may write a batch again after a failure or a redelivery.

:class:`SqliteStore` also keeps an alert's identity fixed: once a gateway's ``alert_id`` is
stored, a message of the same gateway and ``alert_id`` with another household, device
or kind is not stored (:meth:`SqliteStore.write` returns it and logs it on logger
``flylead.store``).

:func:`open_store` builds one from a URL::

    sqlite:///relative/path.sqlite      path relative to the working directory
    sqlite:////absolute/path.sqlite     absolute path (four slashes, as in SQLAlchemy)
    sqlite:///:memory:                  in-memory database (tests)
    influxdb://HOST:PORT/BUCKET?org=ORG&token=TOKEN     InfluxDB 2 over http
    influxdbs://HOST:PORT/BUCKET?org=ORG&token=TOKEN    the same over https

All timestamps are UTC epoch seconds.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from urllib.parse import parse_qs, urlsplit

from agent.schema import AlertMsg, TelemetryMsg

if TYPE_CHECKING:
    from influxdb_client import Point

__all__ = ["InfluxStore", "SqliteStore", "Store", "StoreError", "open_store"]

Msg = TelemetryMsg | AlertMsg

log = logging.getLogger("flylead.store")


class StoreError(Exception):
    """A write or read failed; the message names the store and the cause.

    After a failed :meth:`Store.write` some messages of the batch may be stored and others
    not; writing the whole batch again is safe (stores are idempotent).
    """


@runtime_checkable
class Store(Protocol):
    """What the ingest writes to."""

    def write(self, msgs: Sequence[TelemetryMsg | AlertMsg]) -> Sequence[TelemetryMsg | AlertMsg] | None:
        """Store ``msgs``; messages already stored (same ``msg_id``) are left as they are.

        Returns:
            The messages refused for good and not stored (SqliteStore: an alert whose
            ``alert_id`` is stored with another identity); None or empty: none refused.

        Raises:
            StoreError: the batch could not be stored (safe to retry).
            TypeError: an element is neither a TelemetryMsg nor an AlertMsg.
        """

    def close(self) -> None:
        """Release connections; further calls are errors."""


def _check_types(msgs: Sequence[object]) -> None:
    for m in msgs:
        if not isinstance(m, TelemetryMsg | AlertMsg):
            raise TypeError(f"store accepts TelemetryMsg or AlertMsg, got {type(m).__name__}")


# --------------------------------------------------------------------------------------
# SQLite


_SCHEMA = """
CREATE TABLE IF NOT EXISTS telemetry (
    msg_id    TEXT PRIMARY KEY,
    gateway   TEXT NOT NULL,
    device    TEXT NOT NULL,
    household TEXT,
    ts        REAL NOT NULL,      -- UTC epoch s
    values_json TEXT NOT NULL     -- JSON object quantity -> SI value
);
CREATE INDEX IF NOT EXISTS telemetry_device_ts ON telemetry (device, ts);

CREATE TABLE IF NOT EXISTS alerts (
    msg_id    TEXT PRIMARY KEY,   -- one row per message: open and closed are both kept
    alert_id  TEXT NOT NULL,
    gateway   TEXT NOT NULL,
    household TEXT NOT NULL,
    device    TEXT NOT NULL,
    kind      TEXT NOT NULL,
    state     TEXT NOT NULL,
    ts        REAL NOT NULL,      -- UTC epoch s
    start     REAL NOT NULL,      -- UTC epoch s
    msg       TEXT NOT NULL       -- the whole AlertMsg as JSON
);
CREATE INDEX IF NOT EXISTS alerts_alert_id ON alerts (gateway, alert_id);
CREATE INDEX IF NOT EXISTS alerts_start ON alerts (start);
"""

#: Seconds a write waits for another process's lock on the file before failing.
_BUSY_TIMEOUT_S = 5.0


class SqliteStore:
    """Messages in one SQLite file (WAL mode).

    Table ``telemetry`` holds one row per message, its values as a JSON object (one
    reading is one row, read back whole; a row per value would multiply rows tenfold
    for no query the demo needs).  Table ``alerts`` holds one row per alert message,
    the indexed columns next to the whole message as JSON, so an alert's ``open`` and
    ``closed`` messages are both kept.  ``msg_id`` is the primary key of both, and rows
    are inserted with ``INSERT OR IGNORE``: a message delivered twice is stored once.
    (msg_ids are unique across gateways because the ingest accepts only msg_ids that
    start with ``{gateway}:``, docs/mqtt.md.)  An alert message whose gateway and
    ``alert_id`` are stored already with another household, device or kind is not
    inserted: the first stored message fixes the alert's identity (``start`` may change:
    the agent refines a charging session's start between its open and closed messages).

    Thread-safe: one connection guarded by a lock (the ingest writes from its flusher
    thread while the demo reads from another).

    Args:
        path: database file (created with its tables if missing) or ``":memory:"``.
        read_only: open an existing store for reading only (``mode=ro``): nothing is
            created or written; a file without the store's tables is refused.

    Raises:
        StoreError: the file cannot be opened or is not a database.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            if read_only:  # a reader (the desk's sync): never creates or changes the file
                self._db = sqlite3.connect(f"{Path(self.path).resolve().as_uri()}?mode=ro", uri=True,
                                           timeout=_BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
                tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if not {"alerts", "telemetry"} <= tables:
                    self._db.close()
                    raise StoreError(f"{self.path} is not a flylead store (no alerts and telemetry tables)")
                return
            self._db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S,
                                       check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable across application crashes in WAL mode; only an OS crash
            # or power loss can lose the last transactions.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {self.path!r}: {exc}") from exc

    @contextmanager
    def _locked(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self.path!r}: {what} failed: {exc}") from exc

    def write(self, msgs: Sequence[TelemetryMsg | AlertMsg]) -> list[AlertMsg]:
        """Insert ``msgs`` in one transaction; already stored ``msg_id``\\ s are skipped.

        An alert message whose gateway and ``alert_id`` are stored already (or come earlier
        in ``msgs``) with another household, device or kind is not inserted; it is
        logged as a warning on logger ``flylead.store`` and returned.

        Returns:
            The alert messages refused for a changed identity, in batch order.

        Raises:
            StoreError: SQLite failed (nothing of this batch is stored).
            TypeError: an element is not a TelemetryMsg or AlertMsg (nothing stored).
        """
        _check_types(msgs)
        telemetry = [
            (m.msg_id, m.gateway, m.device, m.household, m.ts, json.dumps(m.values))
            for m in msgs if isinstance(m, TelemetryMsg)
        ]
        refused: list[AlertMsg] = []
        with self._locked("write") as db:
            db.execute("BEGIN IMMEDIATE")  # identity reads and inserts in one write lock
            try:
                db.executemany("INSERT OR IGNORE INTO telemetry VALUES (?,?,?,?,?,?)", telemetry)
                for m in msgs:
                    if not isinstance(m, AlertMsg):
                        continue
                    known = self._identity(db, m.gateway, m.alert_id)
                    mine = (m.household, m.device, m.kind)
                    if known is not None and known != mine:
                        refused.append(m)
                        continue
                    db.execute("INSERT OR IGNORE INTO alerts VALUES (?,?,?,?,?,?,?,?,?,?)",
                               (m.msg_id, m.alert_id, m.gateway, m.household, m.device, m.kind,
                                m.state, m.ts, m.start, m.model_dump_json()))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        for m in refused:
            log.warning("store %s refused alert message %r of gateway %r: alert_id %r is stored "
                        "with another identity (household, device, kind) than %r",
                        self.path, m.msg_id, m.gateway, m.alert_id, (m.household, m.device, m.kind))
        return refused

    @staticmethod
    def _identity(db: sqlite3.Connection, gateway: str, alert_id: str) -> tuple[str, str, str] | None:
        row = db.execute("SELECT household, device, kind FROM alerts WHERE gateway = ? AND alert_id = ?"
                         " ORDER BY rowid LIMIT 1", (gateway, alert_id)).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def alert_identity(self, gateway: str, alert_id: str) -> tuple[str, str, str] | None:
        """(household, device, kind) of the first stored message of ``gateway``'s
        ``alert_id``, or None when none is stored.

        Raises:
            StoreError: SQLite failed.
        """
        with self._locked("reading an alert's identity") as db:
            return self._identity(db, gateway, alert_id)

    def alerts(self, kind: str | None = None, state: str | None = None) -> list[AlertMsg]:
        """Every stored alert message, optionally of one ``kind`` and/or ``state``.

        Ordered by ``start``, then message time ``ts``, then ``msg_id`` (so ``open``
        comes before ``closed`` of the same alert).

        Raises:
            StoreError: SQLite failed.
        """
        query = "SELECT msg FROM alerts WHERE (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR state = ?2)"
        query += " ORDER BY start, ts, msg_id"
        with self._locked("reading alerts") as db:
            rows = db.execute(query, (kind, state)).fetchall()
        return [AlertMsg.model_validate_json(r[0]) for r in rows]

    def latest_alerts(self) -> list[AlertMsg]:
        """For each alert (gateway and ``alert_id``) its latest message, ordered by start.

        "Latest" is the greatest ``ts``; on a tie ``closed`` wins over ``open``.  alert_id
        is unique per gateway only, so two gateways' equal ids are different alerts.

        Raises:
            StoreError: SQLite failed.
        """
        query = """
            SELECT msg FROM (
                SELECT msg, start, ts, msg_id, ROW_NUMBER() OVER (
                    PARTITION BY gateway, alert_id
                    ORDER BY ts DESC, state = 'closed' DESC, msg_id DESC) AS n
                FROM alerts)
            WHERE n = 1 ORDER BY start, ts, msg_id
        """
        with self._locked("reading latest alerts") as db:
            rows = db.execute(query).fetchall()
        return [AlertMsg.model_validate_json(r[0]) for r in rows]

    def telemetry_count(self, device: str | None = None) -> int:
        """Number of stored telemetry messages, of all devices or of ``device``.

        Raises:
            StoreError: SQLite failed.
        """
        with self._locked("counting telemetry") as db:
            (n,) = db.execute("SELECT COUNT(*) FROM telemetry WHERE ?1 IS NULL OR device = ?1",
                              (device,)).fetchone()
        return int(n)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"


# --------------------------------------------------------------------------------------
# InfluxDB / VictoriaMetrics


#: Points per HTTP request: InfluxDB recommends 5000 lines per write; our lines are short.
INFLUX_BATCH_SIZE = 5000
#: Real seconds per HTTP request before it counts as failed.
INFLUX_TIMEOUT_S = 10.0
#: HTTP attempts per request after the first, after 0, 0.5 and 1 s: rides out a dropped
#: connection or a 503 from a busy server; longer outages are the ingest's retry loop's job.
INFLUX_RETRIES = 3


class InfluxStore:
    """Line protocol writes to InfluxDB 2 or VictoriaMetrics.

    Points (timestamp precision: milliseconds, from the message ``ts``)::

        telemetry,gateway=G,device=D[,household=H] <quantity>=<float>,...   ts
        alert,gateway=G,household=H,device=D,kind=K,state=S,alert_id=A
              start=<s>,confidence=<0..1>[,end=<s>][,energy_kwh=][,peak_w=]  ts

    Everything needed to find an alert is a tag because VictoriaMetrics drops string
    fields; ``profile`` and ``detail`` are not stored (use :class:`SqliteStore` for them).
    Tag values are schema-validated names and ids (no spaces, quotes, commas or ``=``), and
    influxdb-client's :class:`Point` escapes them anyway.

    The same message written twice gives the same series and timestamp: InfluxDB
    overwrites the point; VictoriaMetrics keeps one sample when run with
    ``-dedup.minScrapeInterval=1ms`` (as .ci/services.sh does).  Two telemetry
    messages of one device within the same millisecond overwrite each other.

    No alert identity check here (it would need a query per alert): only the ingest's
    memory of the alert_ids it has seen keeps an alert's identity fixed.

    Writes are synchronous, chunked by ``batch_size``; failed HTTP requests are retried
    :data:`INFLUX_RETRIES` times (writes are idempotent, so retrying a POST is safe).
    influxdb-client is imported on first use: its import takes ~0.4 s that SQLite-only
    processes need not pay.

    Args:
        url: server base URL, e.g. ``http://127.0.0.1:8428``.
        token: API token (VictoriaMetrics ignores it).
        org: organisation (VictoriaMetrics ignores it).
        bucket: bucket (VictoriaMetrics ignores it).
        batch_size: points per HTTP request.
    """

    def __init__(self, url: str, token: str, org: str, bucket: str, *,
                 batch_size: int = INFLUX_BATCH_SIZE) -> None:
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS
        from urllib3.util.retry import Retry

        if batch_size < 1:
            raise ValueError(f"InfluxStore batch_size must be >= 1, got {batch_size}")
        self.url, self.org, self.bucket, self.batch_size = url, org, bucket, batch_size
        retries = Retry(total=INFLUX_RETRIES, backoff_factor=0.25,
                        status_forcelist=(429, 500, 502, 503, 504),
                        allowed_methods=frozenset({"POST"}), raise_on_status=False)
        self._client = InfluxDBClient(url=url, token=token, org=org,
                                      timeout=int(INFLUX_TIMEOUT_S * 1000), retries=retries)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    @staticmethod
    def point(msg: TelemetryMsg | AlertMsg) -> Point:
        """The point that stores ``msg`` (public for tests and tools).

        Raises:
            TypeError: ``msg`` is not a TelemetryMsg or AlertMsg.
        """
        from influxdb_client import Point, WritePrecision

        if isinstance(msg, TelemetryMsg):
            p = Point("telemetry").tag("gateway", msg.gateway).tag("device", msg.device)
            if msg.household is not None:
                p.tag("household", msg.household)
            for quantity, value in msg.values.items():
                p.field(quantity, float(value))
        elif isinstance(msg, AlertMsg):
            p = (Point("alert").tag("gateway", msg.gateway).tag("household", msg.household)
                 .tag("device", msg.device).tag("kind", msg.kind).tag("state", msg.state)
                 .tag("alert_id", msg.alert_id)
                 .field("start", float(msg.start)).field("confidence", float(msg.confidence)))
            for name in ("end", "energy_kwh", "peak_w"):
                value = getattr(msg, name)
                if value is not None:
                    p.field(name, float(value))
        else:
            raise TypeError(f"store accepts TelemetryMsg or AlertMsg, got {type(msg).__name__}")
        return p.time(round(msg.ts * 1000), WritePrecision.MS)

    def write(self, msgs: Sequence[TelemetryMsg | AlertMsg]) -> None:
        """Write ``msgs`` in chunks of ``batch_size`` points.

        Raises:
            StoreError: a request failed after retries (earlier chunks may be stored;
                writing the batch again is safe).
            TypeError: an element is not a TelemetryMsg or AlertMsg (nothing written).
        """
        from influxdb_client import WritePrecision

        _check_types(msgs)
        points = [self.point(m) for m in msgs]
        for i in range(0, len(points), self.batch_size):
            chunk = points[i:i + self.batch_size]
            try:
                self._write_api.write(bucket=self.bucket, org=self.org, record=chunk,
                                      write_precision=WritePrecision.MS)
            except Exception as exc:  # ApiException, urllib3 errors, OSError
                raise StoreError(
                    f"InfluxDB write of {len(chunk)} points to {self.url} bucket "
                    f"{self.bucket!r} failed: {exc}"
                ) from exc

    def close(self) -> None:
        """Close the HTTP client."""
        self._write_api.close()
        self._client.close()

    def __repr__(self) -> str:
        return f"InfluxStore({self.url!r}, bucket={self.bucket!r})"


# --------------------------------------------------------------------------------------


def _redact(url: str) -> str:
    """``url`` with the value of a ``token`` query parameter replaced by ``***``."""
    parts = urlsplit(url)
    if "token=" not in parts.query:
        return url
    query = "&".join(
        f"{k}=***" if k == "token" else f"{k}={v}"
        for k, _, v in (item.partition("=") for item in parts.query.split("&"))
    )
    return parts._replace(query=query).geturl()


def open_store(url: str) -> Store:
    """The store a URL names (schemes in the module docstring).

    Raises:
        ValueError: unknown scheme or malformed URL; the message quotes the URL with
            any token redacted.
        StoreError: the SQLite file cannot be opened.
    """
    parts = urlsplit(url)
    shown = _redact(url)
    if parts.scheme == "sqlite":
        prefix = "sqlite:///"
        if not url.startswith(prefix) or len(url) == len(prefix):
            raise ValueError(f"store URL {shown!r}: expected sqlite:///PATH (sqlite:////ABS/PATH)")
        return SqliteStore(url[len(prefix):])
    if parts.scheme in ("influxdb", "influxdbs"):
        bucket = parts.path.strip("/")
        params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if not parts.hostname or not bucket or "/" in bucket:
            raise ValueError(f"store URL {shown!r}: expected {parts.scheme}://HOST:PORT/BUCKET?org=ORG&token=TOKEN")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"store URL {shown!r}: bad port") from exc
        http = "https" if parts.scheme == "influxdbs" else "http"
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        base = f"{http}://{host}" + (f":{port}" if port else "")
        return InfluxStore(base, params.get("token", ""), params.get("org", ""), bucket)
    raise ValueError(f"store URL {shown!r}: unknown scheme {parts.scheme!r} (use sqlite:// or influxdb://)")
