"""Household load and e-bike charger models: labelled traces for the detector.

No public data set has a labelled e-bike charger class, so labelled data is built by adding
modelled charging sessions to household load (domain-facts.md section 2).  This module
holds both halves:

* charger models, :func:`lead_acid_session` and :func:`lithium_session`, wall power on a
  regular grid;
* a synthetic household, :func:`household_trace`, whose appliances include the
  look-alikes a detector must reject: fridge compressor cycles, hours-long flat lighting and
  TV blocks, cooking and an electric water heater;
* :func:`inject_sessions`, which adds charging sessions to any :class:`LoadTrace` (for
  instance the replayed real household of :mod:`simulators.replay`) and returns the truth.

Everything is deterministic for a given seed (``numpy.random.Generator``).  Appliance
powers and durations not taken from domain-facts.md are marked "chosen" with the reason.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from simulators.trace import LoadTrace, TrueSession

PROFILES = ("lead_acid", "lithium")

#: Appliances :func:`household_trace` can include.  ``water_heater`` is present in about
#: half of the households when ``appliances`` is not given.
APPLIANCES = frozenset({"standby", "fridge", "lighting", "cooking", "tv", "water_heater"})

_H = 3600.0


# -- chargers ---------------------------------------------------------------------------------


def _grid_len(duration_s: float, step_s: float) -> int:
    if not duration_s > 0 or not step_s > 0:
        raise ValueError(f"duration_s and step_s must be > 0, got {duration_s!r}, {step_s!r}")
    return max(1, math.ceil(duration_s / step_s))


def _switch_mode_noise(p: np.ndarray, step_s: float, rng: np.random.Generator) -> np.ndarray:
    """Add the wobble of a switch-mode charger to a clean power curve (W).

    Chosen: 1 % white noise (mains voltage and load variation) plus a 1.5 % ripple with a
    period of 6-12 min (thermal cycling of the supply and its fan); zero stays zero.
    """
    t = np.arange(p.size) * step_s
    period = rng.uniform(360.0, 720.0)
    ripple = 0.015 * np.sin(2 * math.pi * t / period + rng.uniform(0, 2 * math.pi))
    noisy = p * (1.0 + ripple + 0.01 * rng.standard_normal(p.size))
    return np.where(p > 0, np.maximum(noisy, 0.0), 0.0)


def lead_acid_session(
    duration_s: float,
    step_s: float,
    rng: np.random.Generator,
    *,
    stage1_w: float | None = None,
    stage1_rise: float = 0.08,
    stage2_w: float | None = None,
    stage2_s: float | None = None,
    float_w: float | None = None,
    float_s: float | None = None,
) -> np.ndarray:
    """Wall power of a three-stage lead-acid charger, from switch-on to unplugging.

    Stage 1 (constant current) is a plateau of ``stage1_w`` that rises by ``stage1_rise`` as
    the pack voltage climbs; stage 2 (constant voltage) decays exponentially from the end of
    stage 1 towards ``stage2_w`` (time constant a quarter of ``stage2_s``); then the charger
    drops to a float of ``float_w`` for ``float_s`` and is unplugged.  ``duration_s`` covers
    all three stages: stage 1 lasts ``duration_s - stage2_s - float_s``; when that would be
    under 30 min, stage 2 and float are shortened in proportion so that stage 1 lasts 30 min
    (or the whole session, when ``duration_s`` is under 30 min).

    Parameters left ``None`` are drawn from ``rng``; their ranges come from domain-facts.md
    section 2 (48 V packs: about 110 W at the wall in stage 1 on chargers rated 120-180 W,
    about 60 W in stage 2, about 2 h of float; 36 V example floats at 50 mA):

    * ``stage1_w`` 110-180 W;
    * ``stage2_w`` 45-65 W ("about 60 W in stage 2");
    * ``stage2_s`` 1-2.5 h (chosen: CV time of a 6-8 h charge before float begins);
    * ``float_w`` 5-15 W (chosen: 41.4 V x 50 mA = 2 W to the pack plus the charger's own
      no-load draw);
    * ``float_s`` 1-2 h ("about 2 h float").

    With 6-10 h sessions that gives the 0.5-1.2 kWh of a 48 V 20 Ah pack (about 1.07 kWh).

    Args:
        duration_s: switch-on to unplugging (s), > 0.
        step_s: grid spacing (s), > 0.
        rng: source of the drawn parameters and the noise.

    Returns:
        Shape (ceil(duration_s / step_s),), float64, W, finite and >= 0.

    Raises:
        ValueError: a duration, step or power is not positive.
    """
    n = _grid_len(duration_s, step_s)
    p1 = rng.uniform(110.0, 180.0) if stage1_w is None else stage1_w
    p2 = rng.uniform(45.0, 65.0) if stage2_w is None else stage2_w
    d2 = rng.uniform(1.0, 2.5) * _H if stage2_s is None else stage2_s
    pf = rng.uniform(5.0, 15.0) if float_w is None else float_w
    df = rng.uniform(1.0, 2.0) * _H if float_s is None else float_s
    if min(p1, p2, pf, d2, df) <= 0:
        raise ValueError("stage powers and durations must be > 0")
    d1 = duration_s - d2 - df
    if d1 < 0.5 * _H:
        d1 = min(0.5 * _H, duration_s)
        shrink = (duration_s - d1) / (d2 + df)
        d2, df = d2 * shrink, df * shrink
    t = np.arange(n) * step_s
    p = np.full(n, pf)
    stage1 = t < d1
    p[stage1] = p1 * (1.0 + stage1_rise * t[stage1] / d1)
    p1_end = p1 * (1.0 + stage1_rise)
    stage2 = (t >= d1) & (t < d1 + d2)
    tau = max(d2 / 4.0, step_s)
    p[stage2] = p2 + (p1_end - p2) * np.exp(-(t[stage2] - d1) / tau)
    return _switch_mode_noise(p, step_s, rng)


def lithium_session(
    duration_s: float,
    step_s: float,
    rng: np.random.Generator,
    *,
    cc_w: float | None = None,
    taper_s: float | None = None,
    cutoff: float = 0.05,
) -> np.ndarray:
    """Wall power of a lithium CC-CV charger, from switch-on until it stops drawing.

    A constant-current plateau of ``cc_w`` rising 4 % as the pack voltage climbs, then a
    constant-voltage taper decaying exponentially for ``taper_s`` down to ``cutoff`` x the
    plateau, where the charger terminates and draws 0 W (no float).  When ``duration_s`` is
    shorter than ``taper_s`` the whole session is taper.

    Parameters left ``None`` are drawn from ``rng``; domain-facts.md section 2: 2-5 A output,
    96-240 W at 48 V, a measured 4 A charger peaked at 185 W, tapered, then drew 0 W:

    * ``cc_w`` 96-240 W;
    * ``taper_s`` 0.5-1.5 h (chosen: CV phase of a 0.2-0.5 C charge; the time constant,
      a third of it, keeps the decay under about 16 W/min);
    * ``cutoff`` 0.05 (chosen: the usual C/20 termination current).

    Args:
        duration_s: switch-on to termination (s), > 0.
        step_s: grid spacing (s), > 0.
        rng: source of the drawn parameters and the noise.

    Returns:
        Shape (ceil(duration_s / step_s),), float64, W, finite and >= 0; the last sample is
        the last one drawing power.

    Raises:
        ValueError: a duration, step or power is not positive, or ``cutoff`` not in (0, 1).
    """
    n = _grid_len(duration_s, step_s)
    pc = rng.uniform(96.0, 240.0) if cc_w is None else cc_w
    dt = rng.uniform(0.5, 1.5) * _H if taper_s is None else taper_s
    if pc <= 0 or dt <= 0 or not 0 < cutoff < 1:
        raise ValueError("cc_w and taper_s must be > 0 and cutoff in (0, 1)")
    d1 = max(duration_s - dt, 0.0)
    t = np.arange(n) * step_s
    tau = dt / -math.log(cutoff)
    p = np.where(
        t < d1,
        pc * (1.0 + 0.04 * t / max(d1, step_s)),
        pc * 1.04 * np.exp(-(t - d1) / tau),
    )
    return _switch_mode_noise(p, step_s, rng)


def _draw_session(profile: str, step_s: float, rng: np.random.Generator) -> np.ndarray:
    """One charging session with an energy typical of its chemistry (W on the grid).

    Target energy at the wall, domain-facts.md section 2 (0.2-1.5 kWh a session; 48 V 20 Ah
    lead-acid about 1.07 kWh): lead-acid 0.55-1.15 kWh, lithium 0.3-1.3 kWh (chosen: keeps
    every session above an hour).  The stage-1 / CC duration is solved for that target.
    """
    if profile == "lead_acid":
        p1, p2 = rng.uniform(110.0, 180.0), rng.uniform(45.0, 65.0)
        d2, pf, df = rng.uniform(1.0, 2.5) * _H, rng.uniform(5.0, 15.0), rng.uniform(1.0, 2.0) * _H
        target_wh = rng.uniform(550.0, 1150.0)
        stage2_wh = (p2 * d2 + (p1 * 1.08 - p2) * d2 / 4.0) / _H
        d1 = np.clip((target_wh - stage2_wh - pf * df / _H) / (p1 * 1.04) * _H, 1.0 * _H, 8.0 * _H)
        return lead_acid_session(d1 + d2 + df, step_s, rng, stage1_w=p1, stage2_w=p2,
                                 stage2_s=d2, float_w=pf, float_s=df)
    if profile == "lithium":
        pc, dt = rng.uniform(96.0, 240.0), rng.uniform(0.5, 1.5) * _H
        target_wh = rng.uniform(300.0, 1300.0)
        taper_wh = pc * 1.04 * dt / 3.0 * 0.95 / _H
        d1 = np.clip((target_wh - taper_wh) / (pc * 1.02) * _H, 0.5 * _H, 8.0 * _H)
        return lithium_session(d1 + dt, step_s, rng, cc_w=pc, taper_s=dt)
    raise ValueError(f"unknown charger profile {profile!r}; expected one of {PROFILES}")


def inject_sessions(
    trace: LoadTrace, sessions: Sequence[tuple[float, str]], seed: int
) -> tuple[LoadTrace, list[TrueSession]]:
    """Add modelled charging sessions to a trace; return the new trace and the truth.

    Each session is drawn by its chemistry's model on the trace's own grid (10 s or the 60 s
    of a replay) and added from the sample covering its start.  A session running past the
    end of the trace is cut there (the owner unplugged it).  Session ``k`` draws from its own
    stream, ``default_rng([seed, k])``, so the same seed gives the same sessions on any
    background.

    Args:
        trace: the background; not modified.
        sessions: ``(start, profile)`` pairs, start in UTC epoch s inside the trace,
            profile ``"lead_acid"`` or ``"lithium"``.
        seed: seed of the session draws.

    Returns:
        A new :class:`LoadTrace` (same grid, voltage and power factor) and one
        :class:`TrueSession` per session, sorted by start: start is the sample time the
        charger switched on, end the time it stopped drawing, energy and peak computed from
        the injected samples.

    Raises:
        ValueError: unknown profile, or a start outside the trace.
    """
    power = trace.power_w.copy()
    truth: list[TrueSession] = []
    for k, (start, profile) in enumerate(sessions):
        if not trace.start <= start < trace.end:
            raise ValueError(f"{trace.household}: session start {start} outside the trace")
        charger = _draw_session(profile, trace.step_s, np.random.default_rng([seed, k]))
        i0 = trace.index(start)
        charger = charger[: power.size - i0]
        power[i0 : i0 + charger.size] += charger
        drawing = np.flatnonzero(charger > 0)
        t0 = trace.start + i0 * trace.step_s
        truth.append(TrueSession(
            household=trace.household,
            start=t0,
            end=t0 + float(drawing[-1] + 1) * trace.step_s,
            energy_kwh=float(charger.sum() * trace.step_s / 3.6e6),
            peak_w=float(charger.max()),
            profile=profile,
        ))
    truth.sort(key=lambda s: s.start)
    out = LoadTrace(trace.household, trace.start, trace.step_s, power,
                    voltage_v=trace.voltage_v, power_factor=trace.power_factor)
    return out, truth


# -- household background -----------------------------------------------------------------


class _Grid:
    """Sample times of a trace and helpers to place local-time events on it."""

    def __init__(self, start: float, n: int, step_s: float, tz: str) -> None:
        self.start, self.n, self.step_s = start, n, step_s
        self.zone = ZoneInfo(tz)

    def local_days(self) -> list[datetime]:
        """Local midnights of every day overlapping the trace, plus the one before."""
        first = datetime.fromtimestamp(self.start, self.zone).date() - timedelta(days=1)
        last = datetime.fromtimestamp(self.start + self.n * self.step_s, self.zone).date()
        days = (last - first).days + 1
        return [datetime.combine(first + timedelta(days=d), datetime.min.time(), self.zone)
                for d in range(days)]

    def at(self, day: datetime, hour: float) -> float:
        """UTC epoch s of local ``hour`` (may exceed 24) on local ``day``."""
        return (day + timedelta(hours=hour)).astimezone(UTC).timestamp()

    def span(self, t_on: float, t_off: float) -> slice:
        """Samples whose start lies in [t_on, t_off), clamped to the trace."""
        i0 = math.ceil((t_on - self.start) / self.step_s)
        i1 = math.ceil((t_off - self.start) / self.step_s)
        return slice(min(max(i0, 0), self.n), min(max(i1, 0), self.n))


def _standby(g: _Grid, rng: np.random.Generator) -> np.ndarray:
    """Always-on base: 30-120 W (brief: router, standby devices), an Ornstein-Uhlenbeck drift
    of 4 W with a 2 h time constant and 2-4 W of white noise (chosen: meter and small loads)."""
    base = rng.uniform(30.0, 120.0)
    a = math.exp(-g.step_s / (2 * _H))
    shocks = rng.standard_normal(g.n) * 4.0 * math.sqrt(1 - a * a)
    drift = np.empty(g.n)
    level = rng.standard_normal() * 4.0
    for i, s in enumerate(shocks):
        level = a * level + s
        drift[i] = level
    return base + drift + rng.uniform(2.0, 4.0) * rng.standard_normal(g.n)


def _fridge(g: _Grid, rng: np.random.Generator) -> np.ndarray:
    """Compressor cycles: 80-150 W on for 10-30 min, off for 20-50 min (brief).  Power sags
    10 % over an on period and the first sample carries a start surge (chosen: typical
    compressor behaviour)."""
    p = np.zeros(g.n)
    on_w = rng.uniform(80.0, 150.0)
    t = g.start - rng.uniform(0.0, 50 * 60.0)
    while t < g.start + g.n * g.step_s:
        on_s, off_s = rng.uniform(600.0, 1800.0), rng.uniform(1200.0, 3000.0)
        sl = g.span(t, t + on_s)
        k = sl.stop - sl.start
        if k > 0:
            p[sl] = on_w * rng.uniform(0.95, 1.05) * np.linspace(1.0, 0.9, k)
            p[sl.start] *= 1.6
        t += on_s + off_s
    return p


def _block(p: np.ndarray, g: _Grid, t_on: float, t_off: float, watts: float | np.ndarray) -> None:
    sl = g.span(t_on, t_off)
    if sl.stop > sl.start:
        p[sl] += watts if np.isscalar(watts) else watts[: sl.stop - sl.start]


def _lighting(g: _Grid, rng: np.random.Generator) -> np.ndarray:
    """Evening lighting: 1-3 rooms, each a flat 20-150 W block (brief) switched on at
    17:30-19:30 local and off at 21:00-24:00; in half of the homes every light still on goes
    off together at bedtime (one combined step).  Some mornings one room 06:30-07:30."""
    p = np.zeros(g.n)
    rooms = [rng.uniform(20.0, 150.0) for _ in range(rng.integers(1, 4))]
    together = rng.random() < 0.5
    for day in g.local_days():
        bedtime = rng.uniform(22.0, 24.0)
        for watts in rooms:
            on = rng.uniform(17.5, 19.5)
            off = bedtime if together else rng.uniform(21.0, 24.0)
            _block(p, g, g.at(day, on), g.at(day, off), watts)
        if rng.random() < 0.5:
            on = rng.uniform(6.5, 7.5)
            _block(p, g, g.at(day, on), g.at(day, on + rng.uniform(0.3, 1.0)), rooms[0])
    return p


def _wobbly(n: int, watts: float, rel: float, rng: np.random.Generator) -> np.ndarray:
    """A load whose power wanders by about ``rel`` around ``watts`` (AR(1), 0.9 per sample)."""
    x = np.empty(n)
    level = 0.0
    for i, s in enumerate(rng.standard_normal(n)):
        level = 0.9 * level + s * math.sqrt(1 - 0.81)
        x[i] = level
    return watts * np.maximum(1.0 + rel * x, 0.3)


def _tv(g: _Grid, rng: np.random.Generator) -> np.ndarray:
    """TV 60-200 W from 19:00-20:30 to 22:00-24:00 local, its power following the picture
    (5 % wander, chosen: LCD backlight dimming); in half of the homes a computer 60-200 W from 20:00-21:00 to 23:00-01:00
    (brief: TV/computer 60-200 W in the evening; 10 % wander, chosen: CPU load)."""
    p = np.zeros(g.n)
    tv_w, pc_w = rng.uniform(60.0, 200.0), rng.uniform(60.0, 200.0)
    has_pc = rng.random() < 0.5
    for day in g.local_days():
        on, off = rng.uniform(19.0, 20.5), rng.uniform(22.0, 24.0)
        n = int((off - on) * _H / g.step_s) + 2
        _block(p, g, g.at(day, on), g.at(day, off), _wobbly(n, tv_w, 0.05, rng))
        if has_pc:
            on, off = rng.uniform(20.0, 21.0), rng.uniform(23.0, 25.0)
            n = int((off - on) * _H / g.step_s) + 2
            _block(p, g, g.at(day, on), g.at(day, off), _wobbly(n, pc_w, 0.1, rng))
    return p


def _cycling(n: int, watts: float, step_s: float, rng: np.random.Generator) -> np.ndarray:
    """A heater under power control: full power with 20-60 s off gaps (duty about 70 %)."""
    t = np.arange(n) * step_s
    period = rng.uniform(60.0, 120.0)
    return np.where((t % period) < 0.7 * period, watts, 0.0)


def _cooking(g: _Grid, rng: np.random.Generator) -> np.ndarray:
    """Rice cooker 650-750 W for 30-40 min before dinner (17:00-18:30 local) on 80 % of days,
    at lunch on 30 %; induction hob 1-2 kW for 10-30 min, cycling, at 18:00-19:30 on 70 %
    of days and at breakfast on 40 %; kettle 1.8-2.2 kW for 3-5 min in the morning on 60 %
    (brief: rice cooker about 700 W 30-40 min, induction 1-2 kW; kettle chosen)."""
    p = np.zeros(g.n)
    for day in g.local_days():
        for chance, lo, hi in ((0.8, 17.0, 18.5), (0.3, 11.0, 11.75)):
            if rng.random() < chance:
                on = rng.uniform(lo, hi)
                _block(p, g, g.at(day, on), g.at(day, on + rng.uniform(0.5, 0.67)),
                       rng.uniform(650.0, 750.0))
        for chance, lo, hi in ((0.7, 18.0, 19.5), (0.4, 6.5, 7.5)):
            if rng.random() < chance:
                on, dur = rng.uniform(lo, hi), rng.uniform(10.0, 30.0) / 60.0
                n = int(dur * _H / g.step_s) + 2
                _block(p, g, g.at(day, on), g.at(day, on + dur),
                       _cycling(n, rng.uniform(1000.0, 2000.0), g.step_s, rng))
        if rng.random() < 0.6:
            on = rng.uniform(6.5, 8.0)
            _block(p, g, g.at(day, on), g.at(day, on + rng.uniform(0.05, 0.083)),
                   rng.uniform(1800.0, 2200.0))
    return p


def _water_heater(g: _Grid, rng: np.random.Generator) -> np.ndarray:
    """Electric water heater 1.5-3 kW heating for 30-90 min after the evening showers
    (20:00-23:00 local) and on 50 % of mornings (06:00-08:00) (brief)."""
    p = np.zeros(g.n)
    watts = rng.uniform(1500.0, 3000.0)
    for day in g.local_days():
        for chance, lo, hi in ((1.0, 20.0, 23.0), (0.5, 6.0, 8.0)):
            if rng.random() < chance:
                on = rng.uniform(lo, hi)
                _block(p, g, g.at(day, on), g.at(day, on + rng.uniform(0.5, 1.5)), watts)
    return p


_RENDER = {
    "standby": _standby,
    "fridge": _fridge,
    "lighting": _lighting,
    "cooking": _cooking,
    "tv": _tv,
    "water_heater": _water_heater,
}


def household_trace(
    household: str,
    start: float,
    hours: float,
    seed: int,
    *,
    step_s: float = 10.0,
    tz: str = "Asia/Shanghai",
    sessions: Sequence[tuple[float, str]] = (),
    appliances: Collection[str] | None = None,
) -> tuple[LoadTrace, list[TrueSession]]:
    """A synthetic household's load, with optional e-bike charging sessions added.

    Appliances (each documented on its model): standby base, fridge, evening lighting,
    cooking, TV/computer and, in about half of the homes, an electric water heater.  Daily
    patterns follow local time in ``tz``.  Each appliance draws from its own stream seeded by
    ``(seed, crc32(household), appliance)``, so two households with the same seed differ and
    removing one appliance leaves the others unchanged.  Sessions are added by
    :func:`inject_sessions` with ``seed``.

    Args:
        household: household id (also a seed component).
        start: UTC epoch s of sample 0.
        hours: length (h), > 0.
        seed: seed; the same arguments give the same trace.
        step_s: grid spacing (s), > 0; default 10 s (chosen: fine enough for any poll rate).
        tz: IANA zone of the home.
        sessions: ``(start, profile)`` charging sessions to add (see :func:`inject_sessions`).
        appliances: subset of :data:`APPLIANCES` to include; ``None`` for the household's
            own set (everything, water heater with probability 1/2).

    Returns:
        The trace (``power_w`` shape (ceil(hours * 3600 / step_s),), float64, W, >= 0) and
        the true sessions.

    Raises:
        ValueError: ``hours`` or ``step_s`` not positive, unknown appliance or profile, a
            session outside the trace.
    """
    if not hours > 0 or not step_s > 0:
        raise ValueError(f"hours and step_s must be > 0, got {hours!r}, {step_s!r}")
    house_key = zlib.crc32(household.encode())
    if appliances is None:
        has_heater = np.random.default_rng([seed, house_key]).random() < 0.5
        appliances = APPLIANCES if has_heater else APPLIANCES - {"water_heater"}
    unknown = set(appliances) - APPLIANCES
    if unknown:
        raise ValueError(f"unknown appliances {sorted(unknown)}; expected some of {sorted(APPLIANCES)}")
    g = _Grid(float(start), math.ceil(hours * _H / step_s), float(step_s), tz)
    power = np.zeros(g.n)
    for k, name in enumerate(sorted(_RENDER)):
        if name in appliances:
            power += _RENDER[name](g, np.random.default_rng([seed, house_key, k + 1]))
    trace = LoadTrace(household, g.start, g.step_s, np.maximum(power, 0.0))
    return inject_sessions(trace, sessions, seed)
