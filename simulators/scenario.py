"""The demo scenario: eight households of one compound, two nights, with ground truth.

``h01``-``h07`` are synthetic (:func:`simulators.loads.household_trace`); ``h08`` is the
real UCI household (:func:`simulators.replay.uci_trace`) with no charging added, a real
negative.  E-bike charging happens in four homes on different nights, including one session
starting early in the evening on top of cooking, lighting and TV.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from flylead.clock import parse_iso
from simulators.loads import APPLIANCES, household_trace
from simulators.replay import uci_trace
from simulators.trace import LoadTrace, Scenario, TrueSession

#: 2026-11-27 12:00 in Shanghai: 48 h from here span two nights.
DEFAULT_START = parse_iso("2026-11-27T04:00:00Z")

#: Homes with an electric water heater (chosen: three of seven, the hard negative).
_WATER_HEATERS = ("h01", "h03", "h06")

#: Planned charging: (household, evening index, local hour, profile).  Evening 0 is the
#: first local 19:00 at or after the start.  Start hours get +-30 min of seeded jitter,
#: kept within 19:00-23:30 (domain-facts.md section 2: charging mostly at night).
_PLAN = (
    ("h02", 0, 21.0, "lead_acid"),
    ("h06", 0, 19.5, "lead_acid"),
    ("h07", 0, 23.0, "lithium"),
    ("h02", 1, 22.5, "lead_acid"),
    ("h05", 1, 20.75, "lithium"),
)


def _session_starts(household: str, start: float, end: float, tz: str,
                    rng: np.random.Generator) -> list[tuple[float, str]]:
    zone = ZoneInfo(tz)
    local = datetime.fromtimestamp(start, zone)
    first = local.date() if local.time() <= time(19, 0) else local.date() + timedelta(days=1)
    out = []
    for name, evening, hour, profile in _PLAN:
        jitter = rng.uniform(-0.5, 0.5)
        if name != household:
            continue
        hour = min(max(hour + jitter, 19.0), 23.5)
        day = datetime.combine(first + timedelta(days=evening), time(0), zone)
        t = (day + timedelta(hours=hour)).timestamp()
        if start <= t < end:
            out.append((t, profile))
    return out


def _synthetic(household: str, start: float, hours: float, seed: int, tz: str,
               sessions: list[tuple[float, str]]) -> tuple[LoadTrace, list[TrueSession]]:
    """A synthetic home; sessions the scenario's end would cut short are left out."""
    appliances = APPLIANCES if household in _WATER_HEATERS else APPLIANCES - {"water_heater"}
    while True:
        trace, truth = household_trace(household, start, hours, seed, tz=tz,
                                       sessions=sessions, appliances=appliances)
        cut = [s for s in truth if s.end >= trace.end]
        if not cut:
            return trace, truth
        sessions = [s for s in sessions if all(abs(s[0] - c.start) >= trace.step_s for c in cut)]


def demo_scenario(seed: int = 1, start: float | None = None, hours: float = 48.0,
                  tz: str = "Asia/Shanghai") -> Scenario:
    """Eight households with ground truth for the demo, the tests and the benchmarks.

    Households ``h01``-``h07`` are synthetic (10 s grid, seed ``seed * 100 + i``; water
    heaters in h01, h03, h06); ``h08`` replays the real UCI household (60 s grid, no
    charging).  Charging, when the period covers it (default: all five sessions):
    h02 lead-acid on evenings 0 and 1, h06 lead-acid at about 19:30 on evening 0 (over
    cooking, lighting and TV), h07 lithium on evening 0, h05 lithium on evening 1.  A session
    that would start outside the period or still be running at its end is left out, so every
    true session ends inside the scenario.

    Args:
        seed: seed of everything random; the same arguments give the same scenario.
        start: UTC epoch s; default :data:`DEFAULT_START` (12:00 in Shanghai).
        hours: length (h), > 0.
        tz: IANA zone of the compound.

    Returns:
        The :class:`Scenario`, truth sorted by start.

    Raises:
        ValueError: ``hours`` not positive.
    """
    if not hours > 0:
        raise ValueError(f"hours must be > 0, got {hours!r}")
    t0 = DEFAULT_START if start is None else float(start)
    t1 = t0 + hours * 3600.0
    traces: list[LoadTrace] = []
    truth: list[TrueSession] = []
    for i in range(1, 8):
        household = f"h{i:02d}"
        plan_rng = np.random.default_rng([seed, 7919])
        sessions = _session_starts(household, t0, t1, tz, plan_rng)
        trace, true = _synthetic(household, t0, hours, seed * 100 + i, tz, sessions)
        traces.append(trace)
        truth.extend(true)
    traces.append(uci_trace("h08", t0, hours, tz=tz))
    truth.sort(key=lambda s: (s.start, s.household))
    return Scenario(start=t0, end=t1, traces=traces, truth=truth, tz=tz)
