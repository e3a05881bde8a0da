"""Charging-pile utilisation for operators, from the pile telemetry the ingest stored.

The agent publishes each pile poll as telemetry (``port_state.N``, ``active_power.N``,
``energy_import.N``, ``fault_*.N``; drivers/profiles/ebike_pile.toml), and the ingest writes
it to the store.  Here the stored polls are read back, replayed through
:class:`detectors.piles.PileTracker` (the same session rules the agent runs: counter
glitches, resets, end reasons) and summed with :func:`detectors.piles.utilisation` /
:func:`~detectors.piles.compound_utilisation` per compound, pile and port:

* sessions overlapping the period, kWh of the sessions that ended in it, busy hours
  (port-hours with a session running) and utilisation = busy hours / port-hours;
* a pile's ports are the ``port_state.N`` it reported; a compound is the registry's compound
  listing the pile's gateway (``(gateway G)`` without a registry or when none lists it);
* polls from :data:`LOOKBACK_S` before the period are replayed too, so a session that was
  running when the period began counts from the period's start; a session still running at
  the last stored poll counts until that poll.

Stores: the SQLite store file (opened read-only) and VictoriaMetrics through its
``/api/v1/export`` API (what :class:`broker.store.InfluxStore` writes to in the tests).
InfluxDB 2 has no such API: reading from it is refused with a clear error.

The session edges are as fine as the stored telemetry: with ``telemetry_every = N`` in the
agent configuration a session starts and ends to N polls.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from broker.store import StoreError
from detectors.piles import PileTracker, PortSession, compound_utilisation, utilisation

__all__ = [
    "LOOKBACK_S",
    "CompoundUse",
    "PileUse",
    "PortUse",
    "pile_polls_sqlite",
    "pile_polls_victoria",
    "pile_utilisation",
]

#: Seconds of polls replayed before the period, so sessions already running at its start
#: are seen.  Chosen: 12 h, longer than a lead-acid charge (8-10 h, domain-facts.md §2).
LOOKBACK_S = 12 * 3600.0
#: Value names of a pile poll (drivers/profiles/ebike_pile.toml) that sessions are made from.
_PILE_PREFIXES = ("port_state.", "active_power.", "energy_import.", "fault_")
#: Real seconds for one HTTP request to VictoriaMetrics.
HTTP_TIMEOUT_S = 30.0

#: (gateway, pile device) -> [(t UTC epoch s, values)] in time order
Polls = dict[tuple[str, str], list[tuple[float, dict[str, float]]]]


def _pile_values(values: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if k.startswith(_PILE_PREFIXES) and "." in k}


def pile_polls_sqlite(store_path: str | Path, start: float, end: float) -> Polls:
    """Pile polls in [start, end) from the SQLite store file (read-only).

    A device is a pile when its telemetry has ``port_state.N`` values.

    Raises:
        StoreError: the file is missing or not a flylead store (the message names it).
    """
    path = Path(store_path)
    if not path.exists():
        raise StoreError(f"store {path} does not exist")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        try:
            rows = db.execute(
                "SELECT gateway, device, ts, values_json FROM telemetry WHERE ts >= ? AND ts < ?"
                " AND values_json LIKE '%\"port\\_state.%' ESCAPE '\\' ORDER BY ts, msg_id",
                (start, end)).fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read pile telemetry from {path}: {exc}") from exc
    polls: Polls = defaultdict(list)
    for gateway, device, ts, values_json in rows:
        values = _pile_values(json.loads(values_json))
        if values:
            polls[(gateway, device)].append((float(ts), values))
    return dict(polls)


def pile_polls_victoria(base_url: str, start: float, end: float) -> Polls:
    """Pile polls in [start, end) from VictoriaMetrics (``/api/v1/export`` of the
    ``telemetry_*`` series that :class:`broker.store.InfluxStore` writes).

    Raises:
        StoreError: the server cannot be reached, or has no export API (InfluxDB 2).
    """
    selector = '{__name__=~"telemetry_(port_state|active_power|energy_import|fault_.*)\\\\..+"}'
    query = urllib.parse.urlencode({"match[]": selector, "start": f"{start:.3f}", "end": f"{end - 0.001:.3f}"})
    url = f"{base_url.rstrip('/')}/api/v1/export?{query}"
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as r:
            text = r.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        raise StoreError(f"{base_url}: /api/v1/export answered HTTP {exc.code}: reading pile telemetry "
                         "back needs the SQLite store or VictoriaMetrics (InfluxDB 2 has no export API)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"cannot read pile telemetry from {base_url}: {exc}") from exc
    by_poll: dict[tuple[str, str], dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            series = json.loads(line)
            metric = series["metric"]
            name = metric["__name__"].removeprefix("telemetry_")
            key = (metric["gateway"], metric["device"])
            for ms, value in zip(series["timestamps"], series["values"], strict=True):
                by_poll[key][int(ms)][name] = float(value)
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{base_url}: unexpected export line {line[:200]!r}: {exc}") from None
    polls: Polls = {}
    for key, samples in by_poll.items():
        polls[key] = [(ms / 1000.0, values) for ms, values in sorted(samples.items())
                      if any(k.startswith("port_state.") for k in values)]
    return polls


def read_pile_polls(store: str, start: float, end: float) -> Polls:
    """Pile polls from a store URL (``sqlite:///PATH``, a plain path, ``influxdb://`` or
    ``influxdbs://HOST:PORT/BUCKET?...`` of a VictoriaMetrics).

    Raises:
        StoreError: the store cannot be read.
        ValueError: the URL is not one of these.
    """
    if store.startswith("sqlite:///"):
        return pile_polls_sqlite(store[len("sqlite:///"):], start, end)
    parts = urllib.parse.urlsplit(store)
    if parts.scheme in ("influxdb", "influxdbs"):
        if not parts.hostname:
            raise ValueError(f"store URL {parts.scheme}://...: no host")
        http = "https" if parts.scheme == "influxdbs" else "http"
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return pile_polls_victoria(f"{http}://{host}" + (f":{parts.port}" if parts.port else ""), start, end)
    if "://" in store:
        raise ValueError(f"store {store.split('://')[0]}://...: use sqlite:///PATH or influxdb://HOST:PORT/BUCKET")
    return pile_polls_sqlite(store, start, end)


# -- utilisation ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PortUse:
    """One port over the period: sessions, kWh (ended in the period), busy h, share 0..1."""

    port: int
    sessions: int
    energy_kwh: float
    busy_hours: float
    share: float


@dataclass(frozen=True, slots=True)
class PileUse:
    """One pile: ``ports`` ports, totals as :class:`PortUse`, per port in ``per_port``."""

    gateway: str
    pile: str
    ports: int
    sessions: int
    energy_kwh: float
    busy_hours: float
    port_hours: float
    share: float
    per_port: list[PortUse] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CompoundUse:
    """One compound (``village`` from the registry, None without one): totals and piles."""

    compound: str
    name: str
    village: str | None
    ports: int
    sessions: int
    energy_kwh: float
    busy_hours: float
    port_hours: float
    share: float
    piles: list[PileUse] = field(default_factory=list)


def sessions_from_polls(polls: Polls) -> tuple[list[PortSession], dict[str, int], float | None]:
    """Replay polls through :class:`PileTracker` per pile.

    Returns:
        (sessions, ended and still running, keyed ``gateway/pile``; ports per pile key;
        the last poll time, or None without polls).
    """
    sessions: list[PortSession] = []
    ports: dict[str, int] = {}
    last: float | None = None
    for (gateway, device), samples in sorted(polls.items()):
        key = f"{gateway}/{device}"
        tracker = PileTracker(key)
        seen: set[int] = set()
        for t, values in samples:
            seen.update(int(k.split(".", 1)[1]) for k in values if k.startswith("port_state."))
            try:
                sessions.extend(tracker.update_values(t, values))
            except ValueError:  # a port state outside 1..4: that poll is not a pile poll
                continue
            last = t if last is None else max(last, t)
        sessions.extend(tracker.open_sessions())
        if seen:
            ports[key] = max(seen)
    return sessions, ports, last


def pile_utilisation(polls: Polls, start: float, end: float, registry: Any | None = None) -> list[CompoundUse]:
    """Utilisation per compound, pile and port over [start, end) (UTC epoch s).

    Args:
        polls: pile polls from :data:`LOOKBACK_S` before ``start`` to ``end``
            (:func:`read_pile_polls`).
        registry: :class:`broker.desk.registry.Registry` naming the compounds and their
            villages; None: one compound per gateway.

    Returns:
        compounds by id, piles by gateway and name, ports by number.

    Raises:
        ValueError: ``end <= start``.
    """
    if not end > start:
        raise ValueError(f"utilisation period must have end > start, got {start} .. {end}")
    sessions, ports, last = sessions_from_polls(polls)
    now = end if last is None else min(end, last)
    where: dict[str, tuple[str, str, str | None]] = {}
    for key in ports:
        gateway = key.split("/", 1)[0]
        found = None
        if registry is not None:
            found = next((c for c in registry.compounds.values() if gateway in c.gateways), None)
        where[key] = (found.id, found.name, found.village) if found else (f"(gateway {gateway})",
                                                                           f"(gateway {gateway})", None)
    compounds: dict[str, dict[str, int]] = defaultdict(dict)
    for key, n in ports.items():
        compounds[where[key][0]][key] = n
    totals = compound_utilisation(sessions, compounds, start, end, now=now)
    out = []
    for cid in sorted(compounds):
        piles = []
        for key in sorted(compounds[cid]):
            n = ports[key]
            own = [s for s in sessions if s.pile == key]
            u = utilisation(own, {key: n}, start, end, now=now)
            per_port = []
            for port in range(1, n + 1):
                pu = utilisation([replace(s, port=1) for s in own if s.port == port], {key: 1}, start, end, now=now)
                per_port.append(PortUse(port, pu.sessions, pu.energy_kwh, round(pu.in_use_hours, 6),
                                        round(pu.share, 6)))
            gateway, pile = key.split("/", 1)
            piles.append(PileUse(gateway, pile, n, u.sessions, u.energy_kwh, round(u.in_use_hours, 6),
                                 round(u.port_hours, 6), round(u.share, 6), per_port))
        t = totals[cid]
        _, name, village = where[next(iter(compounds[cid]))]
        out.append(CompoundUse(cid, name, village, t.ports, t.sessions, t.energy_kwh, round(t.in_use_hours, 6),
                               round(t.port_hours, 6), round(t.share, 6), piles))
    return out


def rows(compounds: Iterable[CompoundUse]) -> list[dict[str, Any]]:
    """Flat rows (compound, pile and port levels) for CSV and tables: ``level``,
    ``compound``, ``village``, ``gateway``, ``pile``, ``port``, ``ports``, ``sessions``,
    ``energy_kwh``, ``busy_hours``, ``utilisation_pct``."""
    out = []
    for c in compounds:
        out.append(dict(level="compound", compound=c.compound, village=c.village or "", gateway="", pile="",
                        port="", ports=c.ports, sessions=c.sessions, energy_kwh=round(c.energy_kwh, 3),
                        busy_hours=round(c.busy_hours, 2), utilisation_pct=round(100 * c.share, 1)))
        for p in c.piles:
            out.append(dict(level="pile", compound=c.compound, village=c.village or "", gateway=p.gateway,
                            pile=p.pile, port="", ports=p.ports, sessions=p.sessions,
                            energy_kwh=round(p.energy_kwh, 3), busy_hours=round(p.busy_hours, 2),
                            utilisation_pct=round(100 * p.share, 1)))
            for q in p.per_port:
                out.append(dict(level="port", compound=c.compound, village=c.village or "", gateway=p.gateway,
                                pile=p.pile, port=q.port, ports=1, sessions=q.sessions,
                                energy_kwh=round(q.energy_kwh, 3), busy_hours=round(q.busy_hours, 2),
                                utilisation_pct=round(100 * q.share, 1)))
    return out
