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
from simulators.loads import APPLIANCES, household_trace, inject_sessions
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


#: Appliances whose switch-on can pass for a charger's (brief: lamps 20-150 W, TVs and
#: computers 60-200 W; the charger 96-240 W; the ``tv`` model holds TVs and computers), with
#: the smallest rise in one 10 s sample that is a switch-on (W): a lamp's block is flat and
#: at least 20 W; a TV or computer draws at least 60 W and its wobble (5-10 %, AR(1))
#: moves it under 30 W a sample.
LOOK_ALIKES = {"lighting": 15.0, "tv": 40.0}


def look_alike_switch_ons(seed: int = 1, start: float | None = None, hours: float = 48.0,
                          tz: str = "Asia/Shanghai", *, window_s: tuple[float, float] = (1800.0, 7200.0),
                          tolerance: tuple[float, float] = (0.10, 5.0)
                          ) -> list[tuple[TrueSession, list[tuple[float, str, float]]]]:
    """For each true session of :func:`demo_scenario`, the lamps, TVs and computers that
    switched on more than ``window_s[0]`` and at most ``window_s[1]`` from the charger, with
    a step of the same size (within ``tolerance``: share of the charger's step plus W).

    In active power alone such a switch-on and the charger's are symmetric: while both loads
    stay on until the taper, nothing in the meter's power says which one started the
    session.  The count bounds what a detector reading active power can score on the
    corpus: the session match needs the start within 30 min (the default ``window_s[0]``),
    so a detector that takes such a look-alike misses the session.  Computed from the scenario's
    own appliance models (each drawn from its own seeded stream), not from a detector.

    Args:
        seed, start, hours, tz: as :func:`demo_scenario`.
        window_s: (nearest, farthest) distance (s) from the charger's switch-on at which a
            look-alike counts, 0 <= nearest < farthest.
        tolerance: (share, W) of the charger's step within which a step is the same size.

    Returns:
        ``(session, look_alikes)`` for every true session, in the scenario's truth order;
        each look-alike ``(UTC epoch s of its switch-on, appliance, its power W)``.  The
        charger's step is its mean power over its first 30 s.

    Raises:
        ValueError: ``hours`` not positive, ``window_s`` not 0 <= nearest < farthest.
    """
    if not 0 <= window_s[0] < window_s[1]:
        raise ValueError(f"window_s must be (nearest, farthest) with 0 <= nearest < farthest, got {window_s!r}")
    sc = demo_scenario(seed, start, hours, tz)
    out = []
    for trace in sc.traces:
        truth = [x for x in sc.truth if x.household == trace.household]
        if not truth:
            continue
        house_seed = seed * 100 + int(trace.household[1:])
        # the chargers alone: the same draws as the scenario's, on a zero background
        empty = LoadTrace(trace.household, trace.start, trace.step_s, np.zeros(trace.power_w.size))
        charger, _ = inject_sessions(empty, [(x.start, x.profile) for x in truth], house_seed)
        ons: list[tuple[float, str, float]] = []
        for app, min_w in LOOK_ALIKES.items():
            comp, _ = household_trace(trace.household, sc.start, hours, house_seed, tz=tz, appliances={app})
            p = comp.power_w
            n = max(1, round(30.0 / comp.step_s))
            ons += [(comp.start + k * comp.step_s, app, float(p[k:k + n].mean() - p[k - 1]))
                    for k in np.flatnonzero(np.diff(p) >= min_w) + 1]
        for x in truth:
            k = trace.index(x.start)
            n = max(1, round(30.0 / trace.step_s))
            step = float(charger.power_w[k:k + n].mean())
            tol = tolerance[0] * step + tolerance[1]
            out.append((x, [o for o in ons if window_s[0] < abs(o[0] - x.start) <= window_s[1]
                            and abs(o[2] - step) <= tol]))
    return out
