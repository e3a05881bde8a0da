"""Charging-pile sessions, utilisation, and pile-aware suppression of home-charging alerts.

Pure functions and small state machines: stdlib only, no I/O.  Inputs are pile polls:
either :class:`PortSample` (built from a Modbus pile reading by :func:`port_samples`, value
names of ``drivers/profiles/ebike_pile.toml``: ``port_state.N``, ``active_power.N``,
``energy_import.N``, ``fault_*.N``) or any *PortReading-like* object with ``port``,
``state``, ``power_w`` and optionally ``energy_kwh`` (:class:`drivers.pile.PortReading`,
which the Dianchuan driver returns).  Port states are the strings of
:class:`drivers.pile.PortState` (``idle``, ``charging``, ``disabled``, ``fault``; the
numeric codes 1..4 of FC-050 are accepted too).

* :class:`PileTracker` turns successive polls of one pile into :class:`PortSession`
  (start, end, kWh, fault flags seen, end reason).  Energy comes from the port's
  cumulative counter when the pile has one, else from the session energy the pile
  reports, else from integrating the power.  A counter that drops for one poll is a bad
  read (field-vectors.md C-05: keep the last good value, never rebase on it); only a drop
  confirmed over ``reset_confirm_polls`` polls is a reset.
* :func:`utilisation` / :func:`compound_utilisation`: share of port-hours in use over a
  period, for the operator.
* :func:`suppress_home_charging`: a household's detected home charging that overlaps the
  household's own pile session is suppressed or downgraded, with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: Port state codes (FC-050) -> state names (drivers.reading.PORT_STATES, drivers.pile.PortState).
PORT_STATES = {1: "idle", 2: "charging", 3: "disabled", 4: "fault"}
#: End reasons this module gives (values of drivers.pile.EndReason).
END_PORT_FAULT, END_OVER_POWER, END_UNKNOWN = "port_fault", "over_power", "unknown"


def _iso(t: float | None) -> str:
    if t is None:
        return "?"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%MZ")


def _state(value: Any) -> str:
    if isinstance(value, str):
        name = value.lower()
    else:
        try:
            name = PORT_STATES[int(value)]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"unknown port state {value!r}") from None
    if name not in PORT_STATES.values():
        raise ValueError(f"unknown port state {value!r}")
    return name


@dataclass(frozen=True, slots=True)
class PortSample:
    """One port at one poll.

    Attributes:
        port: port number, 1-based.
        state: ``idle``, ``charging``, ``disabled`` or ``fault``.
        power_w: port power, W, or None when not read.
        counter_kwh: the port's cumulative energy counter (``energy_import.N``), kWh.
        session_kwh: session energy as the pile reports it (PortReading.energy_kwh), kWh.
        faults: fault flag names set now, without the port suffix (``fault_over_power``).
    """

    port: int
    state: str
    power_w: float | None = None
    counter_kwh: float | None = None
    session_kwh: float | None = None
    faults: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not isinstance(self.port, int) or self.port < 1:
            raise ValueError(f"port must be an int >= 1, got {self.port!r}")
        object.__setattr__(self, "state", _state(self.state))


def port_samples(values: Mapping[str, float]) -> list[PortSample]:
    """The ports of one Modbus pile reading (value names of ``ebike_pile.toml``).

    A port is reported when its ``port_state.N`` is present.  Pile-level values (no
    channel) are ignored here.

    Raises:
        ValueError: a port state code outside 1..4.
    """
    ports: dict[int, dict[str, Any]] = {}
    for name, value in values.items():
        base, _, channel = name.partition(".")
        if not channel.isdigit():
            continue
        entry = ports.setdefault(int(channel), {"faults": []})
        if base == "port_state":
            entry["state"] = value
        elif base == "active_power":
            entry["power_w"] = float(value)
        elif base == "energy_import":
            entry["counter_kwh"] = float(value)
        elif base.startswith("fault_") and value:
            entry["faults"].append(base)
    return [
        PortSample(port, e["state"], e.get("power_w"), e.get("counter_kwh"), None, tuple(sorted(e["faults"])))
        for port, e in sorted(ports.items()) if "state" in e
    ]


def as_port_sample(reading: Any) -> PortSample:
    """A :class:`PortSample` from a PortReading-like object (``port``, ``state``,
    ``power_w``, optional ``energy_kwh``, ``counter_kwh``, ``faults``)."""
    if isinstance(reading, PortSample):
        return reading
    return PortSample(
        int(reading.port), str(getattr(reading.state, "value", reading.state)),
        getattr(reading, "power_w", None), getattr(reading, "counter_kwh", None),
        getattr(reading, "energy_kwh", None), tuple(getattr(reading, "faults", ()) or ()),
    )


@dataclass(frozen=True, slots=True)
class PortSession:
    """One charging session on one port (finished, or running when ``end`` is None).

    Attributes:
        pile, port: where.
        start: first poll that saw the port charging, UTC epoch s (the real start lies
            up to one poll earlier).
        end: first poll that saw it not charging, UTC epoch s; None while running.
        last_charging: last poll that saw it charging, UTC epoch s (``end - last_charging``
            bounds when it really ended).
        energy_kwh: energy delivered, kWh (None when nothing measured it).
        energy_source: ``counter``, ``reported``, ``integrated`` or ``none``.
        peak_w: highest port power seen, W (None when not read).
        faults: fault flags seen during the session or at its end, sorted.
        end_reason: ``over_power``, ``port_fault``, ``unknown``; ``""`` while running.
        counter_resets: confirmed counter resets inside the session.
        bad_reads: counter readings rejected as bad reads (C-05).
        user: user or card id when the pile reports one (None otherwise).
    """

    pile: str
    port: int
    start: float
    end: float | None
    last_charging: float
    energy_kwh: float | None
    energy_source: str
    peak_w: float | None
    faults: tuple[str, ...] = ()
    end_reason: str = ""
    counter_resets: int = 0
    bad_reads: int = 0
    user: str | None = None

    @property
    def duration_s(self) -> float | None:
        return None if self.end is None else self.end - self.start


@dataclass(frozen=True, slots=True)
class PileSettings:
    """Constants of :class:`PileTracker`.

    Attributes:
        max_port_power_w: largest believable port power, W: a counter step above
            ``max_port_power_w * dt`` is a bad read.  Chosen: twice the 500 W maximum set
            on the captured 10-port board (FC-051 0x0C/0x08 settings); e-bike chargers draw
            120-240 W at the wall (domain-facts.md §2).
        reset_confirm_polls: polls a counter drop must persist (and rise among themselves)
            before it counts (C-05: a single-sample drop is a bad read).  Chosen: 3.  A
            confirmed drop whose first value fits the energy of one interval is a restart
            from 0 (what the counter shows was counted after it); a larger one is a
            correction, and counting goes on from the new value.  Either way nothing is
            booked twice; what ran between the last good value and a restart is lost.
        counter_resolution_kwh: the counter's step (ebike_pile.toml: 0.001 kWh), tolerated
            as jitter.
        max_gap_s: longest gap between polls over which power is integrated, s (chosen:
            5 min; longer gaps are not integrated and the session keeps what it has).
    """

    max_port_power_w: float = 1000.0
    reset_confirm_polls: int = 3
    counter_resolution_kwh: float = 0.001
    max_gap_s: float = 300.0


@dataclass(slots=True)
class _Counter:
    """A port's energy counter with bad-read and reset handling (C-05)."""

    last_good: float | None = None
    last_t: float | None = None
    suspects: list[tuple[float, float]] = field(default_factory=list)  # (t, value) below last_good
    bad_reads: int = 0
    resets: int = 0

    def feed(self, t: float, value: float, s: PileSettings) -> float:
        """Energy counted since the previous good value, kWh (0 for a rejected read)."""
        if self.last_good is None:
            self.last_good, self.last_t = value, t
            return 0.0
        dt = max(t - (self.last_t if self.last_t is not None else t), 0.0)
        plausible = s.max_port_power_w * dt / 3.6e6 + 2 * s.counter_resolution_kwh
        if value >= self.last_good - s.counter_resolution_kwh:
            if self.suspects:  # the drop was a bad read: back on the old count
                self.bad_reads += len(self.suspects)
                self.suspects.clear()
            step = max(value - self.last_good, 0.0)
            if step > plausible:  # an upward glitch: keep the last good value
                self.bad_reads += 1
                return 0.0
            self.last_good, self.last_t = max(value, self.last_good), t
            return step
        self.suspects.append((t, value))
        if len(self.suspects) < s.reset_confirm_polls:
            return 0.0
        # a confirmed drop; the readings since must rise among themselves
        values = [v for _, v in self.suspects]
        if any(b < a - s.counter_resolution_kwh for a, b in zip(values, values[1:])):
            self.bad_reads += len(self.suspects) - 1
            self.suspects = self.suspects[-1:]
            return 0.0
        first_t, first = self.suspects[0]
        gap = max(first_t - (self.last_t if self.last_t is not None else first_t), 0.0)
        self.suspects.clear()
        self.resets += 1
        self.last_good, self.last_t = value, t
        if first <= s.max_port_power_w * gap / 3.6e6 + 2 * s.counter_resolution_kwh or first <= 0.0:
            return value  # restarted from 0: everything it shows was counted after the reset
        return max(value - first, 0.0)  # moved back (a correction): count from the new base


@dataclass(slots=True)
class _Open:
    start: float
    last_charging: float
    base_counter_energy: float = 0.0  # counter energy accumulated inside the session
    counter_seen: bool = False
    reported: float | None = None
    integrated: float = 0.0
    integrated_seen: bool = False
    last_power: tuple[float, float] | None = None
    peak_w: float | None = None
    faults: set[str] = field(default_factory=set)
    resets_at_start: int = 0
    bad_at_start: int = 0


class PileTracker:
    """Sessions of every port of one pile from successive polls.

    Args:
        pile: device name of the pile, e.g. ``"pile-b3"``.
        settings: :class:`PileSettings`.
    """

    def __init__(self, pile: str, settings: PileSettings | None = None) -> None:
        if not pile:
            raise ValueError("PileTracker needs a pile name")
        self.pile = pile
        self.settings = settings or PileSettings()
        self._counters: dict[int, _Counter] = {}
        self._open: dict[int, _Open] = {}
        self._last_t: dict[int, float] = {}
        #: (t, port, flags) of fault flags seen on a port outside any session.
        self.port_faults: list[tuple[float, int, tuple[str, ...]]] = []

    def update_values(self, t: float, values: Mapping[str, float]) -> list[PortSession]:
        """One Modbus poll (a reading's values); returns the sessions that ended."""
        return self.update(t, port_samples(values))

    def update(self, t: float, samples: Iterable[Any]) -> list[PortSession]:
        """One poll at ``t`` (UTC epoch s) of some or all ports.

        Args:
            samples: :class:`PortSample` or PortReading-like objects; a port absent from
                them is a missed reading of that port (nothing changes).

        Returns:
            the sessions that ended at this poll, port order.
        """
        ended = []
        for sample in sorted((as_port_sample(x) for x in samples), key=lambda x: x.port):
            done = self._port(t, sample)
            if done is not None:
                ended.append(done)
        return ended

    def open_sessions(self) -> list[PortSession]:
        """Sessions running now (``end`` None), with their energy so far."""
        return [self._session(port, o, None, "") for port, o in sorted(self._open.items())]

    def _port(self, t: float, x: PortSample) -> PortSession | None:
        s = self.settings
        counter = self._counters.setdefault(x.port, _Counter())
        counted = 0.0 if x.counter_kwh is None else counter.feed(t, x.counter_kwh, s)
        o = self._open.get(x.port)
        last_t = self._last_t.get(x.port)
        self._last_t[x.port] = t
        charging = x.state == "charging"
        if o is None and not charging:
            if x.faults:
                self.port_faults.append((t, x.port, x.faults))
            return None
        if o is None:
            # the counter step since the previous (idle) poll is this session's beginning
            o = self._open[x.port] = _Open(start=t, last_charging=t,
                                           resets_at_start=counter.resets, bad_at_start=counter.bad_reads)
            if last_t is not None and t - last_t <= s.max_gap_s:
                o.base_counter_energy = counted
            o.counter_seen = x.counter_kwh is not None
        else:
            o.base_counter_energy += counted
            o.counter_seen = o.counter_seen or x.counter_kwh is not None
        o.faults.update(x.faults)
        if x.session_kwh is not None and math.isfinite(x.session_kwh):
            o.reported = x.session_kwh
        power = x.power_w if charging else 0.0
        if power is not None and math.isfinite(power):
            if charging:
                o.peak_w = power if o.peak_w is None else max(o.peak_w, power)
            if o.last_power is not None and 0 <= t - o.last_power[0] <= s.max_gap_s:
                o.integrated += (o.last_power[1] + power) / 2 * (t - o.last_power[0]) / 3.6e6
                o.integrated_seen = True
            o.last_power = (t, power)
        if charging:
            o.last_charging = t
            return None
        del self._open[x.port]
        if "fault_over_power" in o.faults:
            reason = END_OVER_POWER
        elif x.state == "fault":
            reason = END_PORT_FAULT
        else:
            reason = END_UNKNOWN
        return self._session(x.port, o, t, reason)

    def _session(self, port: int, o: _Open, end: float | None, reason: str) -> PortSession:
        counter = self._counters.get(port, _Counter())
        if o.counter_seen:
            energy, source = o.base_counter_energy, "counter"
        elif o.reported is not None:
            energy, source = o.reported, "reported"
        elif o.integrated_seen:
            energy, source = o.integrated, "integrated"
        else:
            energy, source = None, "none"
        return PortSession(
            pile=self.pile, port=port, start=o.start, end=end, last_charging=o.last_charging,
            energy_kwh=None if energy is None else round(energy, 6), energy_source=source,
            peak_w=o.peak_w, faults=tuple(sorted(o.faults)), end_reason=reason,
            counter_resets=counter.resets - o.resets_at_start,
            bad_reads=counter.bad_reads - o.bad_at_start,
        )


# -- utilisation -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Utilisation:
    """Use of a set of ports over a period.

    Attributes:
        start, end: the period, UTC epoch s.
        ports: number of ports.
        port_hours: ports x period, h.
        in_use_hours: port-hours with a session running, h.
        share: ``in_use_hours / port_hours`` (0..1).
        sessions: sessions overlapping the period.
        energy_kwh: energy of the sessions that ended inside the period (known energies).
        per_pile: pile -> its own share.
    """

    start: float
    end: float
    ports: int
    port_hours: float
    in_use_hours: float
    share: float
    sessions: int
    energy_kwh: float
    per_pile: dict[str, float]


def utilisation(sessions: Iterable[Any], ports: Mapping[str, int], start: float, end: float, *,
                now: float | None = None) -> Utilisation:
    """Share of port-hours in use over [start, end).

    Args:
        sessions: :class:`PortSession` or :class:`drivers.pile.PileSession` (``pile``,
            ``port``, ``start``, ``end``, ``energy_kwh``); sessions of piles not in
            ``ports`` are ignored; a session with an unknown start counts as a session but
            not as hours; a running one (``end`` None) runs until ``now`` (default ``end``).
        ports: pile -> its number of ports.

    Raises:
        ValueError: ``end <= start`` or a pile with no ports.
    """
    if not end > start:
        raise ValueError(f"utilisation period must have end > start ({start}, {end})")
    if any(n < 1 for n in ports.values()):
        raise ValueError("every pile needs at least one port")
    until = end if now is None else min(now, end)
    hours_per_pile = {pile: 0.0 for pile in ports}
    count, energy = 0, 0.0
    for x in sessions:
        if x.pile not in ports or x.port > ports[x.pile]:
            continue
        s_end = until if x.end is None else x.end
        if x.start is not None:
            overlap = min(s_end, end) - max(x.start, start)
            if overlap <= 0:
                continue
            hours_per_pile[x.pile] += overlap / 3600.0
        elif not start <= s_end < end:
            continue
        count += 1
        if x.end is not None and start <= x.end < end and x.energy_kwh is not None:
            energy += x.energy_kwh
    period_h = (end - start) / 3600.0
    n = sum(ports.values())
    in_use = sum(hours_per_pile.values())
    return Utilisation(
        start=start, end=end, ports=n, port_hours=n * period_h, in_use_hours=in_use,
        share=in_use / (n * period_h), sessions=count, energy_kwh=round(energy, 6),
        per_pile={p: h / (ports[p] * period_h) for p, h in hours_per_pile.items()},
    )


def compound_utilisation(sessions: Iterable[Any], compounds: Mapping[str, Mapping[str, int]],
                         start: float, end: float, *, now: float | None = None) -> dict[str, Utilisation]:
    """:func:`utilisation` per compound (compound -> {pile: ports})."""
    sessions = list(sessions)
    return {c: utilisation(sessions, piles, start, end, now=now) for c, piles in compounds.items()}


# -- suppression of home-charging alerts ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PileLink:
    """A household linked to a pile user in configuration.

    Attributes:
        household: household id.
        pile: pile device name.
        port: the household's port (a rented or assigned port), or None.
        user: the household's card/user id when the pile reports one, or None.
        At least one of ``port`` and ``user`` is needed: "any port of a 10-port pile"
        would match the neighbours' sessions.

    Raises:
        ValueError: neither ``port`` nor ``user``.
    """

    household: str
    pile: str
    port: int | None = None
    user: str | None = None

    def __post_init__(self) -> None:
        if self.port is None and not self.user:
            raise ValueError(f"pile link of {self.household} to {self.pile} needs a port or a user")

    def matches(self, session: Any) -> bool:
        if session.pile != self.pile:
            return False
        if self.port is not None and session.port != self.port:
            return False
        return self.user is None or getattr(session, "user", None) == self.user


@dataclass(frozen=True, slots=True)
class SuppressionSettings:
    """Constants of :func:`suppress_home_charging`.

    Attributes:
        tolerance_s: each pile session is widened by this much on both sides before the
            overlap is measured (chosen 5 min: a pile session's ends are known to a poll,
            the home detector's to a minute or a few, domain-facts.md §2 edges).
        suppress_fraction: overlap share of the home session at or above which the alert
            is suppressed (chosen 0.75: the household's e-bike was at the pile for most of
            what the home meter calls charging, so the home detection is something else).
        downgrade_min_s: a smaller overlap of at least this long downgrades (chosen 10 min:
            the battery may have come home after the pile, or there is a second e-bike).
        downgrade_factor: confidence multiplier the agent applies on a downgrade (chosen 0.5).
    """

    tolerance_s: float = 300.0
    suppress_fraction: float = 0.75
    downgrade_min_s: float = 600.0
    downgrade_factor: float = 0.5


@dataclass(frozen=True, slots=True)
class SuppressionDecision:
    """What to do with a home-charging alert.

    Attributes:
        action: ``suppress``, ``downgrade`` or ``keep``.
        reason: why, as text for the alert's ``detail``.
        overlap_s: seconds of the home session covered by linked pile sessions.
        overlap_fraction: ``overlap_s`` / home session length (0..1).
        sessions: the linked pile sessions that overlap.
        confidence_factor: multiply the alert's confidence by this (1, the downgrade
            factor, or 0 for suppress).
    """

    action: str
    reason: str
    overlap_s: float = 0.0
    overlap_fraction: float = 0.0
    sessions: tuple[Any, ...] = ()
    confidence_factor: float = 1.0


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, cur_a, cur_b = 0.0, None, None
    for a, b in sorted(intervals):
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None:
        total += cur_b - cur_a
    return total


def suppress_home_charging(
    session_start: float,
    session_end: float,
    household: str,
    links: Iterable[PileLink],
    pile_sessions: Iterable[Any],
    settings: SuppressionSettings | None = None,
) -> SuppressionDecision:
    """Decide on a home-charging alert of ``household`` over [session_start, session_end].

    Args:
        session_start, session_end: the detected home session, UTC epoch s (for one still
            running pass the current time as the end).
        household: household id.
        links: the configuration's :class:`PileLink` list (all households).
        pile_sessions: recent pile sessions (:class:`PortSession`, running ones with
            ``end`` None, or :class:`drivers.pile.PileSession`; a session with an unknown
            start is ignored).

    Returns:
        :class:`SuppressionDecision`.

    Raises:
        ValueError: ``session_end`` before ``session_start``.
    """
    s = settings or SuppressionSettings()
    if not session_end >= session_start:
        raise ValueError(f"home session ends before it starts ({session_start}, {session_end})")
    mine = [link for link in links if link.household == household]
    home = f"{_iso(session_start)}-{_iso(session_end)}"
    if not mine:
        return SuppressionDecision("keep", f"kept: household {household} has no pile link")
    where = ", ".join(f"{ln.pile}" + (f" port {ln.port}" if ln.port is not None else "")
                      + (f" user {ln.user}" if ln.user else "") for ln in mine)
    hits, spans = [], []
    for x in pile_sessions:
        if x.start is None or not any(link.matches(x) for link in mine):
            continue
        end = session_end if x.end is None else x.end
        a, b = max(x.start - s.tolerance_s, session_start), min(end + s.tolerance_s, session_end)
        if b > a:
            hits.append(x)
            spans.append((a, b))
    length = session_end - session_start
    overlap = _union_length(spans)
    fraction = overlap / length if length > 0 else (1.0 if hits else 0.0)
    if not hits:
        return SuppressionDecision("keep", f"kept: no session of linked {where} overlaps the home "
                                           f"detection {home}")
    pile_text = "; ".join(
        f"{x.pile} port {x.port} {_iso(x.start)}-{_iso(x.end) if x.end is not None else 'running'}"
        + (f" {x.energy_kwh:.2f} kWh" if getattr(x, "energy_kwh", None) is not None else "")
        for x in sorted(hits, key=lambda x: x.start)
    )
    common = dict(overlap_s=overlap, overlap_fraction=fraction, sessions=tuple(hits))
    if fraction >= s.suppress_fraction:
        return SuppressionDecision(
            "suppress",
            f"suppressed: the household's linked pile session ({pile_text}) covers "
            f"{fraction:.0%} of the home detection {home}: its e-bike was charging at the pile",
            confidence_factor=0.0, **common)
    if overlap >= s.downgrade_min_s:
        return SuppressionDecision(
            "downgrade",
            f"downgraded: the household's linked pile session ({pile_text}) overlaps "
            f"{fraction:.0%} ({overlap / 3600:.1f} h) of the home detection {home}: the battery "
            f"may have come home from the pile, or a second e-bike charges at home",
            confidence_factor=s.downgrade_factor, **common)
    return SuppressionDecision(
        "keep", f"kept: linked pile session ({pile_text}) overlaps only {overlap / 60:.0f} min of "
                f"the home detection {home}", **common)


__all__ = [
    "PileLink",
    "PileSettings",
    "PileTracker",
    "PortSample",
    "PortSession",
    "SuppressionDecision",
    "SuppressionSettings",
    "Utilisation",
    "as_port_sample",
    "compound_utilisation",
    "port_samples",
    "suppress_home_charging",
    "utilisation",
]
