"""Labelled corpora for ``flylead evaluate``: what each detector is given, and the truth.

Four kinds of data, each as one household's series per :class:`Series`:

* ``sim``: the demo scenario (:func:`simulators.scenario.demo_scenario`) for each seed,
  every household polled by the poll model (:func:`simulators.polling.poll`: 60 s, +-5 s,
  1 % lost; one generator ``default_rng(seed)`` shared by the households in order, as in
  tests/test_detector.py).  Households are renamed ``s<seed>/<household>`` so that the
  seeds, which share their dates, never match each other's sessions.
* ``uci``: the real UCI household (:mod:`simulators.replay`, the bundled file whole, 4 days
  6.6 h at one reading a minute) as ``replicas`` households ``u01``, ``u02``, ...; each has
  modelled charging sessions (:func:`simulators.loads.inject_sessions`) at seeded night-time
  starts (:func:`night_starts`) and its own poll draws.  The bundled file holds only those
  4.3 days (the UCI data set has four years, the project carries this slice), so the
  replicas share their background and differ in sessions and polls.
* ``uci-neg``: the same replicas with no session injected, polled with the same draws: the
  false alarms on a real household without an e-bike.
* the same at 15 minutes (``interval_s``): interval energy (:func:`simulators.sampling.
  interval_energy`: kWh in each local-clock-aligned interval, ending at the timestamp) of the
  trace itself, as a utility exports it (no polls).

Everything is deterministic for given arguments.  No I/O beyond the bundled data file.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from simulators.loads import PROFILES, inject_sessions
from simulators.polling import poll
from simulators.replay import _bundled, uci_trace
from simulators.trace import LoadTrace, TrueSession

__all__ = ["CORPORA", "NIGHT_WINDOW_H", "Corpus", "Series", "corpora", "night_starts", "sim_corpus", "uci_corpus",
           "uci_replay"]

#: Local window of the seeded session starts (h): 19:00-23:30, as the demo scenario's plan
#: (domain-facts.md section 2: charging mostly at night).
NIGHT_WINDOW_H = (19.0, 23.5)
#: Longest modelled session (s): lead-acid up to 8 h + 2.5 h + 2 h (simulators.loads), with
#: margin; a start is drawn only when a session this long still ends inside the trace.
MAX_SESSION_S = 13 * 3600.0


@dataclass(frozen=True, slots=True)
class Series:
    """One household's data as a detector sees it.

    Attributes:
        household: unique id within the corpus.
        t: shape (n,), float64, UTC epoch s: poll times (``power``) or interval ends
            (``interval``), strictly increasing.
        values: shape (n,), float64: W (``power``) or kWh in the interval ending at ``t``
            (``interval``).
        start, end: UTC epoch s, the observed span (household-days and -weeks).
    """

    household: str
    t: np.ndarray
    values: np.ndarray
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Corpus:
    """A labelled corpus.

    Attributes:
        name: e.g. ``"sim"``, ``"uci15"``.
        kind: ``"power"`` (polled W) or ``"interval"`` (kWh per interval).
        interval_s: interval length (s) for ``interval``, else None.
        tz: IANA zone of the households.
        series: one per household.
        truth: every true session, households as in ``series``.
        note: what the corpus is, one line.
    """

    name: str
    kind: str
    interval_s: float | None
    tz: str
    series: list[Series]
    truth: list[TrueSession]
    note: str

    @property
    def spans(self) -> dict[str, tuple[float, float]]:
        """household -> (start, end), UTC epoch s."""
        return {s.household: (s.start, s.end) for s in self.series}


def _series(household: str, trace: LoadTrace, rng: np.random.Generator | None,
            interval_s: float | None, tz: str) -> Series:
    if interval_s is None:
        t, p = poll(trace, rng)
        return Series(household, t, p, trace.start, trace.end)
    from simulators.sampling import interval_energy

    t_end, e = interval_energy(trace, interval_s, tz=tz)
    if t_end.size == 0:
        raise ValueError(f"{household}: trace shorter than one {interval_s:g} s interval")
    return Series(household, t_end, e, float(t_end[0] - interval_s), float(t_end[-1]))


def sim_corpus(seeds: Iterable[int], *, interval_s: float | None = None, hours: float = 48.0,
               name: str | None = None, draws: int = 1) -> Corpus:
    """The demo scenario for each seed, polled (or as interval energy when ``interval_s``).

    A detector's figures on one poll draw depend on which instants the polls hit (the same
    homes polled again score differently), so polled power can be drawn ``draws`` times:
    draw 0 with ``default_rng(seed)`` shared by the households in order (the detector
    tests' draw), draw ``d`` >= 1 with ``default_rng([seed, d])``.  Interval energy has no
    poll draw; ``draws`` is ignored for it.

    Args:
        seeds: scenario seeds; each gives 8 households (h08 the real UCI household).
        interval_s: None for polled power, else the interval (s) of interval energy.
        hours: scenario length (h).
        name: corpus name (default ``sim`` or ``sim15`` for 900 s).
        draws: poll draws per seed, >= 1.

    Returns:
        The corpus; households ``s<seed>/h01`` .. ``s<seed>/h08`` (draw 0) and
        ``s<seed>.<d>/h01`` .. (draw ``d``), each draw with its own copy of the truth.

    Raises:
        ValueError: ``draws`` < 1.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws!r}")
    from simulators.scenario import demo_scenario

    series: list[Series] = []
    truth: list[TrueSession] = []
    tz = "Asia/Shanghai"
    seeds = list(seeds)
    draws = 1 if interval_s is not None else draws
    for seed in seeds:
        sc = demo_scenario(seed=seed, hours=hours)
        tz = sc.tz
        for d in range(draws):
            rng = np.random.default_rng(seed if d == 0 else [seed, d])
            tag = f"s{seed}" if d == 0 else f"s{seed}.{d}"
            for trace in sc.traces:
                series.append(_series(f"{tag}/{trace.household}", trace, rng, interval_s, sc.tz))
            truth += [replace(s, household=f"{tag}/{s.household}") for s in sc.truth]
    label = "" if interval_s is None else f"{interval_s / 60:g}"
    what = (f"60 s polls +-5 s, 1 % lost, {draws} poll draw{'s' if draws > 1 else ''}" if interval_s is None
            else f"{interval_s / 60:g}-min interval energy")
    seed_text = f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else str(seeds)
    return Corpus(name or f"sim{label}", "power" if interval_s is None else "interval", interval_s, tz,
                  series, truth, f"demo scenario seeds {seed_text}, 8 households x {hours:g} h, {what}")


def night_starts(start: float, end: float, rng: np.random.Generator, *, tz: str = "Asia/Shanghai",
                 chance: float = 0.75, window_h: tuple[float, float] = NIGHT_WINDOW_H,
                 max_session_s: float = MAX_SESSION_S) -> list[tuple[float, str]]:
    """Seeded charging starts, at most one an evening, for :func:`inject_sessions`.

    For every local evening whose whole window ``window_h`` lies inside ``[start, end -
    max_session_s]``, three draws are made in order: whether the household charges that
    evening (probability ``chance``), the start hour (uniform in ``window_h``), the profile
    (lead-acid or lithium, 1:1).  Evenings too close to either end are skipped without
    drawing.  Starts are rounded down to the minute.

    Args:
        start, end: UTC epoch s of the trace.
        rng: source of the draws.
        tz: IANA zone of the household.
        chance: probability of charging on an evening, 0..1.
        window_h: (earliest, latest) local start hour.
        max_session_s: room left after a start (s).

    Returns:
        ``(start, profile)`` pairs, sorted.
    """
    zone = ZoneInfo(tz)
    day = datetime.fromtimestamp(start, zone).date()
    last = datetime.fromtimestamp(end, zone).date()
    out = []
    while day <= last:
        midnight = datetime.combine(day, time(0), zone)
        lo = (midnight + timedelta(hours=window_h[0])).timestamp()
        hi = (midnight + timedelta(hours=window_h[1])).timestamp()
        day += timedelta(days=1)
        if lo < start or hi + max_session_s > end:
            continue
        charge = rng.random() < chance
        at = rng.uniform(lo, hi)
        profile = PROFILES[int(rng.integers(0, 2))]
        if charge:
            out.append((math.floor(at / 60.0) * 60.0, profile))
    return out


def uci_replay(household: str, *, tz: str = "Asia/Shanghai", year: int = 2026) -> LoadTrace:
    """The bundled UCI file whole, from its first reading to its last (no wrap), replayed on
    the same local calendar dates of ``year`` in ``tz`` (16 Dec 17:24 to 20 Dec 23:59)."""
    minute_of_day, power, _ = _bundled()
    first = int(minute_of_day[0])
    local = datetime(year, 12, 16, first // 60, first % 60, tzinfo=ZoneInfo(tz))
    return uci_trace(household, local.timestamp(), power.size / 60.0, tz=tz)


def uci_corpus(replicas: int = 20, *, seed: int = 1, inject: bool = True,
               interval_s: float | None = None, tz: str = "Asia/Shanghai",
               window_h: tuple[float, float] = NIGHT_WINDOW_H, name: str | None = None) -> Corpus:
    """The real UCI household, ``replicas`` times, with or without injected sessions.

    Replica ``r`` (1-based, household ``u<r:02d>``) draws its starts from
    ``default_rng([seed, r, 1])`` (:func:`night_starts`), its sessions with seed
    ``seed * 1000 + r`` (:func:`inject_sessions`) and its polls from
    ``default_rng([seed, r, 2])``; with ``inject=False`` the starts are drawn and dropped, so
    the polls are the same as with injection.

    Args:
        replicas: number of replicas, >= 1.
        seed: seed of the draws.
        inject: add the sessions (``uci``) or not (``uci-neg``).
        interval_s: None for polled power, else the interval (s) of interval energy.
        tz: IANA zone the household is replayed in.
        window_h: local hours the session starts are drawn in (:func:`night_starts`).
        name: corpus name (default ``uci``, ``uci15``, ``uci-neg``, ``uci15-neg``).

    Returns:
        The corpus.

    Raises:
        ValueError: ``replicas`` < 1.
    """
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas!r}")
    series: list[Series] = []
    truth: list[TrueSession] = []
    for r in range(1, replicas + 1):
        household = f"u{r:02d}"
        trace = uci_replay(household, tz=tz)
        starts = night_starts(trace.start, trace.end, np.random.default_rng([seed, r, 1]), tz=tz,
                              window_h=window_h)
        if inject:
            trace, true = inject_sessions(trace, starts, seed * 1000 + r)
            truth += true
        series.append(_series(household, trace, np.random.default_rng([seed, r, 2]), interval_s, tz))
    label = "" if interval_s is None else f"{interval_s / 60:g}"
    what = "60 s polls +-5 s, 1 % lost" if interval_s is None else f"{interval_s / 60:g}-min interval energy"
    days = _bundled()[1].size / 1440
    return Corpus(
        name or f"uci{label}{'' if inject else '-neg'}", "power" if interval_s is None else "interval",
        interval_s, tz, series, sorted(truth, key=lambda s: (s.start, s.household)),
        f"real UCI household ({days:.2f} days) x {replicas} replicas, "
        + (f"modelled sessions injected, starts {_hhmm(window_h[0])}-{_hhmm(window_h[1])} local (p=0.75 a night)"
           if inject else "nothing injected")
        + f", {what}")


def _hhmm(hour: float) -> str:
    return f"{int(hour) % 24:02d}:{round(hour % 1 * 60):02d}"


def corpora(names: Sequence[str], *, seeds: Iterable[int] = range(1, 21), replicas: int = 20,
            uci_seed: int = 1, uci_window_h: tuple[float, float] = NIGHT_WINDOW_H,
            interval_s: float = 900.0, draws: int = 1) -> list[Corpus]:
    """The named corpora (``sim``, ``sim15``, ``uci``, ``uci15``, ``uci-neg``,
    ``uci15-neg``) in the order given; ``15`` stands for ``interval_s``; the UCI ones with
    :func:`uci_corpus` (``replicas``, ``uci_seed``, ``uci_window_h``); ``draws`` poll draws
    of ``sim`` (:func:`sim_corpus`).

    Raises:
        ValueError: an unknown name.
    """
    seeds = list(seeds)
    out = []
    for n in names:
        base, interval = (n.replace("15", ""), interval_s) if "15" in n else (n, None)
        if base == "sim":
            out.append(sim_corpus(seeds, interval_s=interval, name=n, draws=draws))
        elif base in ("uci", "uci-neg"):
            out.append(uci_corpus(replicas, seed=uci_seed, inject=base == "uci",
                                  interval_s=interval, window_h=uci_window_h, name=n))
        else:
            raise ValueError(f"unknown corpus {n!r}; expected some of {', '.join(CORPORA)}")
    return out


#: Corpus names :func:`corpora` knows, in the default order.
CORPORA = ("sim", "sim15", "uci", "uci15", "uci-neg", "uci15-neg")
