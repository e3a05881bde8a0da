"""Cable hazards from electrical-fire detectors and household meters: a pure rule engine.

No I/O and no clock: everything is driven by ``(t, values)`` per device and poll, where
``t`` is UTC epoch s and ``values`` maps value names (:func:`drivers.reading.quantity_unit`:
``residual_current`` mA, ``cable_temperature.N`` °C, ``alarm_*``/``fault_*`` flags 0/1,
``current`` A) to numbers.  Missing names are missing readings.  The rules and their
timing are documented in docs/hazards.md; the short version:

* :class:`ThresholdRule`: a value at or above a *setting*, held for ``sustain_s``, raises;
  a value below ``setting - hysteresis`` for ``clear_s`` clears.  Between the two edges
  nothing changes, so noise narrower than the hysteresis band neither resets a pending
  raise nor starts a clear (no flapping).  With polls every ``P`` s an alarm is raised at
  most ``sustain_s + P`` after a sustained crossing; :class:`HazardMonitor` refuses fire
  rules whose ``sustain_s + P`` exceeds the 30 s of GB 14287.2/.3 (domain-facts.md §4).
* :class:`RisingLeakageRule`: residual current climbing (least-squares slope over 30 min,
  with steps between polls taken out, so an appliance switching does not count) while a
  charging session runs at night: the signature of an outdoor lead in rain.
* :class:`FlagRule`: the device's own ``alarm_*`` and ``fault_*`` flags.
* :class:`OfflineRule`: ``misses`` failed polls in a row *and* ``after_s`` without a good
  reading.
* overload: ``current`` near (and above) the household breaker's rating for a time.

:class:`AlarmBook` keeps one open alert per (device, hazard): a hazard's rules are its
*levels* (1 warning, 2 alarm, 3 second level), so a rising-leakage warning that becomes a
residual-current alarm, or a cable that passes the second temperature level, escalates
the same alert.  Alarm levels of the fire detector *latch*: the alert is resolved only
once the condition has cleared **and** someone acknowledged it (domain-facts.md §4:
alarms latch until reset).  Warnings, overload, faults and offline resolve on their own.

:class:`HazardMonitor` ties it together per device; it returns :class:`HazardEvent`
(``opened``, ``escalated``, ``acknowledged``, ``latched``, ``resolved``) for the agent to
turn into :class:`agent.schema.AlertMsg`.

Time convention on discrete polls: a run starts at the first sample that meets its
condition (``since``) and completes at the first sample ``t`` with
``t - since >= sustain_s`` (or ``clear_s``).  A gap between good samples longer than
``max_gap_s`` breaks a run in progress: it starts again at the next sample, since
nothing is known about the value in between.  So does a clock stepped back (NTP).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

# -- constants and their sources ---------------------------------------------------------------

#: GB 14287.2-2014 / GB 14287.3-2014: a detector alarms within 30 s (domain-facts.md §4).
#: The budget of every fire rule: ``sustain_s + poll period <= GB_ALARM_WITHIN_S``.
GB_ALARM_WITHIN_S = 30.0
#: GB 14287.2/.3: the alarm value lies within 5 % of the setting (domain-facts.md §4).
#: Used as the hysteresis band: a value inside it is the setting within the standard's
#: tolerance, so it neither starts nor stops anything on its own.
GB_SETTING_TOLERANCE = 0.05
#: Residual-current alarm settings on products, mA (domain-facts.md §4).
RESIDUAL_SETTING_RANGE_MA = (20.0, 1000.0)
#: Default residual-current setting, mA: design guidance 300-500 mA (domain-facts.md §4),
#: the low end, and >= 2x the 100-200 mA natural leakage as FC-055 asks.
RESIDUAL_DEFAULT_MA = 300.0
#: Natural leakage of a household circuit, mA (domain-facts.md §4); the simulator's baseline.
NATURAL_LEAKAGE_MA = (100.0, 200.0)
#: Cable-temperature alarm settings on products, °C (domain-facts.md §4).
TEMPERATURE_SETTING_RANGE_C = (55.0, 140.0)
#: Default cable-temperature setting, °C (domain-facts.md §4, "default 85 °C on one product").
TEMPERATURE_DEFAULT_C = 85.0
#: Poll period the fire rules are budgeted for, s (the brief: polls every <= 5 s).
POLL_PERIOD_S = 5.0
#: Sustain time of the fire alarms, s.  Chosen: 20 s + one 5 s poll = 25 s, and a single
#: missed poll on top still lands at 30 s, inside GB 14287's budget.
SUSTAIN_S = 20.0
#: Clear time of the fire alarms, s.  Chosen: a minute (12 polls) below the band before the
#: condition counts as gone; the alert still waits for an acknowledgement (latch).
CLEAR_S = 60.0
#: A run survives a gap between good samples up to this many poll periods.  Chosen: one
#: missed poll (a gap of 2 periods) plus jitter.
MAX_GAP_POLLS = 2.5
#: Second temperature level above the setting, °C.  Chosen: 20 °C above the alarm (105 °C at
#: the default) is far past the 70 °C continuous rating of PVC-insulated cable (IEC 60227,
#: general practice, not in domain-facts) and inside the 55-140 °C product range.
SECOND_LEVEL_DELTA_C = 20.0
#: Local hours that count as night: the same as detectors.charging (domain-facts.md §2: most
#: e-bike fires start while charging, mostly at night).
NIGHT_HOURS = (18.0, 7.0)
#: Failed polls in a row and seconds without a good reading before a device is offline.
#: Chosen: 3 so that one or two timeouts (noise while a charger runs, domain-facts.md §5) do
#: not alarm; 30 s because a detector silent for longer than GB 14287's 30 s budget can no
#: longer get an alarm out in time.
OFFLINE_MISSES = 3
OFFLINE_AFTER_S = 30.0
#: Overload: "near the rating" is 90 % of the breaker rating held 10 min (chosen: cables heat
#: over minutes, so a kettle or a motor start does not count), "over the rating" is
#: 1.13 x rating held 60 s: the conventional non-tripping current of IEC 60898-1 breakers,
#: which they may carry for an hour, so the breaker will not protect the cable (not in
#: domain-facts; verify for the breakers in use).
OVERLOAD_NEAR_FRACTION = 0.9
OVERLOAD_NEAR_S = 600.0
OVERLOAD_OVER_FRACTION = 1.13
OVERLOAD_OVER_S = 60.0
OVERLOAD_CLEAR_S = 300.0

#: Alert levels.
WARNING, ALARM, CRITICAL = 1, 2, 3
SEVERITY = {WARNING: "warning", ALARM: "alarm", CRITICAL: "critical"}
#: What :class:`HazardEvent.action` can be.
ACTIONS = ("opened", "escalated", "acknowledged", "latched", "resolved")
#: Hazard -> AlertMsg ``kind`` (agent/schema.py).  The schema has no device-fault kind; a
#: faulted detector is not monitoring, which is closest to ``device_offline``.
KINDS = {
    "residual_current": "residual_current",
    "cable_temperature": "cable_temperature",
    "overload": "overload",
    "device_offline": "device_offline",
    "device_fault": "device_offline",
}
#: Confidence per rule: measured crossings and device flags 1.0; the rising-leakage warning
#: is an inference from a trend (chosen 0.7).
CONFIDENCE = {"rising_leakage": 0.7}


def _iso(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _finite(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# -- the debounced run every rule uses --------------------------------------------------------

_INACTIVE, _PENDING, _ACTIVE, _CLEARING = "inactive", "pending", "active", "clearing"


class _Run:
    """Sustain/clear state machine over samples.

    ``enter`` starts a pending raise; ``hold`` keeps a pending raise or an active condition
    (``enter`` implies ``hold``).  Raise after ``hold`` for ``sustain_s`` since the first
    ``enter``; clear after ``not hold`` for ``clear_s``.
    """

    __slots__ = ("sustain_s", "clear_s", "max_gap_s", "state", "since", "last_t")

    def __init__(self, sustain_s: float, clear_s: float, max_gap_s: float) -> None:
        for name, value in (("sustain_s", sustain_s), ("clear_s", clear_s)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        if not max_gap_s > 0:
            raise ValueError(f"max_gap_s must be > 0, got {max_gap_s!r}")
        self.sustain_s = float(sustain_s)
        self.clear_s = float(clear_s)
        self.max_gap_s = float(max_gap_s)
        self.state = _INACTIVE
        self.since: float | None = None  # start of the current pending or clearing run
        self.last_t: float | None = None

    @property
    def active(self) -> bool:
        return self.state in (_ACTIVE, _CLEARING)

    def step(self, t: float, enter: bool, hold: bool) -> str | None:
        """One sample; returns ``"raise"``, ``"clear"`` or None."""
        hold = hold or enter
        if self.last_t is not None and not 0 <= t - self.last_t <= self.max_gap_s:
            # a long gap (nothing known in between) or a clock stepped back: runs restart
            if self.state == _PENDING:
                self.state = _INACTIVE
            elif self.state == _CLEARING:
                self.state = _ACTIVE
        self.last_t = t
        if self.state == _INACTIVE:
            if not enter:
                return None
            self.state, self.since = _PENDING, t
        if self.state == _PENDING:
            if not hold:
                self.state = _INACTIVE
                return None
            if t - self.since >= self.sustain_s:
                self.state = _ACTIVE
                return "raise"
            return None
        if self.state == _ACTIVE:
            if hold:
                return None
            self.state, self.since = _CLEARING, t
        # clearing
        if hold:
            self.state = _ACTIVE
            return None
        if t - self.since >= self.clear_s:
            self.state = _INACTIVE
            return "clear"
        return None


@dataclass(frozen=True, slots=True)
class Transition:
    """A rule's condition started or ended.

    Attributes:
        kind: ``"raise"`` or ``"clear"``.
        t: the sample that completed it, UTC epoch s.
        since: first sample of the run (the first at/above the setting for a raise, the
            first below the band for a clear), UTC epoch s.
        value: the rule's value at ``t`` (mA, °C, A, s; None for flags).
        reason: why, as text.
    """

    kind: str
    t: float
    since: float
    value: float | None
    reason: str


# -- rules ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThresholdSettings:
    """One threshold.

    Attributes:
        setting: raise at values >= setting (unit of the quantity).
        hysteresis: clear only below ``setting - hysteresis``; a pending raise survives
            values down to that edge; >= 0.
        sustain_s: the value must hold this long before a raise, s.
        clear_s: the value must stay below the band this long before a clear, s.
        max_gap_s: a longer gap between good samples restarts a pending raise or clear, s.

    Raises:
        ValueError: a non-finite setting, negative hysteresis or times.
    """

    setting: float
    hysteresis: float
    sustain_s: float = SUSTAIN_S
    clear_s: float = CLEAR_S
    max_gap_s: float = MAX_GAP_POLLS * POLL_PERIOD_S

    def __post_init__(self) -> None:
        if not math.isfinite(self.setting):
            raise ValueError(f"setting must be finite, got {self.setting!r}")
        if not (math.isfinite(self.hysteresis) and self.hysteresis >= 0):
            raise ValueError(f"hysteresis must be finite and >= 0, got {self.hysteresis!r}")
        _Run(self.sustain_s, self.clear_s, self.max_gap_s)  # validates the times


class ThresholdRule:
    """A value at or above a setting, with hysteresis, sustain and clear times.

    Args:
        settings: :class:`ThresholdSettings`.
        name: value name for messages, e.g. ``"residual_current"``.
        unit: unit for messages, e.g. ``"mA"``.
    """

    def __init__(self, settings: ThresholdSettings, *, name: str = "value", unit: str = "") -> None:
        self.settings = settings
        self.name = name
        self.unit = unit
        self._run = _Run(settings.sustain_s, settings.clear_s, settings.max_gap_s)
        self.value: float | None = None

    @property
    def active(self) -> bool:
        """The condition is raised (and not yet cleared)."""
        return self._run.active

    @property
    def setting(self) -> float:
        return self.settings.setting

    def retune(self, setting: float, hysteresis: float) -> None:
        """Change the setting (e.g. the device's own setting register changed); the run in
        progress is kept and judged against the new edges from the next sample on."""
        s = self.settings
        self.settings = ThresholdSettings(setting, hysteresis, s.sustain_s, s.clear_s, s.max_gap_s)

    def update(self, t: float, value: float | None) -> Transition | None:
        """One poll: ``value`` in the rule's unit, or None when it is missing (no change).

        Returns:
            a :class:`Transition` when the condition is raised or cleared at ``t``.
        """
        value = _finite(value)
        if value is None:
            return None
        self.value = value
        s = self.settings
        low = s.setting - s.hysteresis
        edge = self._run.step(t, value >= s.setting, value >= low)
        if edge is None:
            return None
        since = self._run.since
        u = f" {self.unit}" if self.unit else ""
        if edge == "raise":
            reason = (f"{self.name} {value:g}{u} reached the setting {s.setting:g}{u} at "
                      f"{_iso(since)} and held above {low:g}{u} for {t - since:g} s")
        else:
            reason = (f"{self.name} below {low:g}{u} (setting {s.setting:g}{u} - hysteresis "
                      f"{s.hysteresis:g}{u}) since {_iso(since)}, {t - since:g} s; now {value:g}{u}")
        return Transition(edge, t, since, value, reason)


@dataclass(frozen=True, slots=True)
class RisingLeakageSettings:
    """The rising-leakage warning.

    Attributes:
        window_s: slope window, s.  The brief's 30 min: rain wets an outdoor lead over tens
            of minutes.
        min_slope_ma_per_h: least-squares slope that counts as climbing, mA/h.  Chosen:
            100 mA/h is a 50 mA climb in the window, half the gap between the top of
            natural leakage (200 mA) and the default setting (300 mA).
        step_ma: a jump between consecutive samples larger than this is a step (filter
            capacitors of an appliance switched in or out, a lead plugged in), not wetting:
            it is taken out of the series before the slope.  Chosen: 20 mA, about 5 sigma of
            the poll-to-poll noise of a 3 mA detector, while a step needs 33 mA to fake
            100 mA/h over the window on its own (least-squares slope of a centred step of
            height h over W is 1.5 h / W) and rain climbs well under 1 mA per 5 s poll.
        hold_fraction: once raised, the warning holds while the slope stays above this
            fraction of ``min_slope_ma_per_h`` (chosen 0.5: hysteresis on the slope).
        min_coverage: samples must span this share of the window before the slope is
            judged; otherwise nothing changes.
        sustain_s: the condition must hold this long, s (chosen: the slope already averages
            30 min; 60 s guards against one sample at the window's edge).
        clear_s: not climbing (or no charging) this long clears the warning, s (chosen
            10 min).
        night_only: raise only at night (the issue: "while a charging session runs at night").
        night_hours: local (start, end) hours of night.
    """

    window_s: float = 1800.0
    min_slope_ma_per_h: float = 100.0
    step_ma: float = 20.0
    hold_fraction: float = 0.5
    min_coverage: float = 0.9
    sustain_s: float = 60.0
    clear_s: float = 600.0
    night_only: bool = True
    night_hours: tuple[float, float] = NIGHT_HOURS

    def __post_init__(self) -> None:
        if not self.window_s > 0 or not self.min_slope_ma_per_h > 0 or not self.step_ma > 0:
            raise ValueError("window_s, min_slope_ma_per_h and step_ma must be > 0")
        for name in ("hold_fraction", "min_coverage"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)!r}")


def is_night(t: float, tz: ZoneInfo, hours: tuple[float, float] = NIGHT_HOURS) -> bool:
    """Whether UTC epoch ``t`` falls in the local night ``hours`` (start, end; may wrap)."""
    local = datetime.fromtimestamp(t, UTC).astimezone(tz)
    h = local.hour + local.minute / 60.0 + local.second / 3600.0
    a, b = hours
    return (a <= h < b) if a <= b else (h >= a or h < b)


class _Window:
    """Samples of the last ``span_s``: prefix sums give the least-squares slope and the mean
    of any time range in O(log n).  Times are kept relative to ``ref`` (rebased whenever the
    lists are compacted), so the sums stay small and exact enough."""

    __slots__ = ("span_s", "t", "p_v", "p_t", "p_tt", "p_tv", "head", "ref")

    def __init__(self, span_s: float) -> None:
        self.span_s = span_s
        self.clear()

    def clear(self) -> None:
        self.t: list[float] = []
        self.p_v, self.p_t, self.p_tt, self.p_tv = [0.0], [0.0], [0.0], [0.0]
        self.head = 0
        self.ref = 0.0

    def __len__(self) -> int:
        return len(self.t) - self.head

    def first(self) -> float:
        return self.t[self.head] + self.ref

    def last(self) -> float:
        return self.t[-1] + self.ref

    def add(self, t: float, v: float) -> None:
        if not self.t:
            self.ref = t
        x = t - self.ref
        self.t.append(x)
        self.p_v.append(self.p_v[-1] + v)
        self.p_t.append(self.p_t[-1] + x)
        self.p_tt.append(self.p_tt[-1] + x * x)
        self.p_tv.append(self.p_tv[-1] + x * v)
        while self.t[self.head] < x - self.span_s:
            self.head += 1
        if self.head > 256 and 2 * self.head > len(self.t):
            self._compact()

    def _compact(self) -> None:
        """Drop the samples before ``head`` and rebase the times on the first kept one."""
        h = self.head
        xs = self.t[h:]
        vs = [self.p_v[i + 1] - self.p_v[i] for i in range(h, len(self.t))]
        ref = self.ref + xs[0]
        self.clear()
        for x, v in zip(xs, vs):
            self.add(ref + x - xs[0], v)

    def mean(self, lo: float, hi: float, include_hi: bool) -> tuple[float, int]:
        """Mean and count of the values with lo <= t < hi (t <= hi with ``include_hi``)."""
        a = bisect.bisect_left(self.t, lo - self.ref, self.head)
        b = (bisect.bisect_right if include_hi else bisect.bisect_left)(self.t, hi - self.ref, self.head)
        n = b - a
        return ((self.p_v[b] - self.p_v[a]) / n if n else math.nan), n

    def slope(self) -> float | None:
        """Least-squares slope over the window, value units per second."""
        a, b = self.head, len(self.t)
        n = b - a
        s1, s2 = self.p_t[b] - self.p_t[a], self.p_tt[b] - self.p_tt[a]
        sv, stv = self.p_v[b] - self.p_v[a], self.p_tv[b] - self.p_tv[a]
        denom = n * s2 - s1 * s1
        if n < 2 or denom <= 1e-9 * n * s2:
            return None
        return (n * stv - s1 * sv) / denom


class RisingLeakageRule:
    """Residual current climbing while a charging session runs at night.

    The series is *de-stepped*: a jump between consecutive samples above ``step_ma`` is
    subtracted from every later sample, so the slope sees gradual change only.

    Args:
        settings: :class:`RisingLeakageSettings`.
        tz: IANA zone for night-time when :meth:`update` is not told.
        max_gap_s: as :class:`ThresholdSettings`.
    """

    def __init__(self, settings: RisingLeakageSettings | None = None, *, tz: str | ZoneInfo = "Asia/Shanghai",
                 max_gap_s: float = MAX_GAP_POLLS * POLL_PERIOD_S) -> None:
        self.settings = settings or RisingLeakageSettings()
        s = self.settings
        self._zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
        self._run = _Run(s.sustain_s, s.clear_s, max_gap_s)
        self._window = _Window(s.window_s)
        self._last: float | None = None  # last sample, mA
        self._offset = 0.0  # sum of the steps taken out, mA
        #: last slope judged, mA/h (None while the window is too thin or not judged)
        self.slope_ma_per_h: float | None = None

    @property
    def active(self) -> bool:
        return self._run.active

    def _judge(self, t: float) -> tuple[bool, bool, float] | None:
        s = self.settings
        w = self._window
        if len(w) < 3 or t - w.first() < s.min_coverage * s.window_s:
            return None
        slope = w.slope()
        if slope is None:
            return None
        slope *= 3600.0
        return slope >= s.min_slope_ma_per_h, slope >= s.hold_fraction * s.min_slope_ma_per_h, slope

    def update(self, t: float, residual_ma: float | None, charging_active: bool | None,
               night: bool | None = None) -> Transition | None:
        """One poll.

        Args:
            t: UTC epoch s.
            residual_ma: residual current, mA, or None when missing (no change).
            charging_active: a charging session of the household runs now (None: unknown,
                taken as no).
            night: ``t`` is night-time locally; None: from the rule's zone
                (:func:`is_night`).

        Without charging the warning can neither raise nor hold, so the slope is only
        judged while charging; with too few samples in the window nothing changes.
        """
        value = _finite(residual_ma)
        if value is None:
            return None
        s = self.settings
        w = self._window
        if len(w) and t < w.last():
            w.clear()  # the clock stepped back: start the window again
            self._last = None
        if self._last is not None and abs(value - self._last) > s.step_ma:
            self._offset += value - self._last  # a step: taken out of the series
        self._last = value
        w.add(t, value - self._offset)
        charging = bool(charging_active)
        slope = None
        if charging:
            judged = self._judge(t)
            self.slope_ma_per_h = None if judged is None else judged[2]
            if judged is None:
                return None
            climbing, holding, slope = judged
            if climbing and s.night_only and not self._run.active:
                climbing = is_night(t, self._zone, s.night_hours) if night is None else bool(night)
            edge = self._run.step(t, climbing, holding)
        else:
            self.slope_ma_per_h = None
            edge = self._run.step(t, False, False)
        if edge is None:
            return None
        since = self._run.since
        if edge == "raise":
            reason = (f"residual current climbing {slope:.0f} mA/h over the last "
                      f"{s.window_s / 60:g} min (now {value:g} mA) while a charging session runs "
                      f"at night, since {_iso(since)}: the signature of an outdoor lead in rain")
        else:
            why = "charging ended" if not charging else f"slope down to {slope:.0f} mA/h"
            reason = (f"residual current no longer climbing ({why}) since {_iso(since)}, "
                      f"{t - since:g} s; now {value:g} mA")
        return Transition(edge, t, since, value, reason)


class FlagRule:
    """Device flags (``alarm_*``, ``fault_*``): on while any of the selected flags is 1.

    Args:
        select: the flag names that count, or a predicate on names.
        label: what the flags mean, for messages (e.g. ``"fault"``).
        sustain_s, clear_s: as :class:`ThresholdSettings` (default 0: the device has
            debounced its own flags).
        max_gap_s: as :class:`ThresholdSettings`.
    """

    def __init__(self, select: Iterable[str] | Callable[[str], bool], *, label: str, sustain_s: float = 0.0,
                 clear_s: float = 0.0, max_gap_s: float = MAX_GAP_POLLS * POLL_PERIOD_S) -> None:
        if callable(select):
            self._names: tuple[str, ...] | None = None
            self._select = select
        else:
            self._names = tuple(select)
            self._select = self._names.__contains__
        self.label = label
        self._run = _Run(sustain_s, clear_s, max_gap_s)
        self.on: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self._run.active

    def update(self, t: float, values: Mapping[str, float]) -> Transition | None:
        """One poll: the reading's values (selected flags all absent: no change)."""
        if self._names is not None:
            flags = {k: values[k] for k in self._names if k in values}
        else:
            flags = {k: v for k, v in values.items() if self._select(k)}
        seen = False
        on = []
        for k, v in flags.items():
            x = _finite(v)
            if x is not None:
                seen = True
                if x != 0.0:
                    on.append(k)
        if not seen:
            return None
        if on:
            self.on = tuple(sorted(on))
        edge = self._run.step(t, bool(on), bool(on))
        if edge is None:
            return None
        since = self._run.since
        if edge == "raise":
            reason = f"device {self.label} flag(s) set since {_iso(since)}: {', '.join(self.on)}"
        else:
            reason = f"device {self.label} flag(s) reset since {_iso(since)}: {', '.join(self.on)}"
        return Transition(edge, t, since, None, reason)


@dataclass(frozen=True, slots=True)
class OfflineSettings:
    """Device offline: ``misses`` failed polls in a row **and** ``after_s`` s since the last
    good reading (or the first attempt), checked at each poll attempt (constants above)."""

    misses: int = OFFLINE_MISSES
    after_s: float = OFFLINE_AFTER_S

    def __post_init__(self) -> None:
        if self.misses < 1 or not self.after_s >= 0:
            raise ValueError("misses must be >= 1 and after_s >= 0")


class OfflineRule:
    """A device that stops answering.  Args: :class:`OfflineSettings`."""

    def __init__(self, settings: OfflineSettings | None = None) -> None:
        self.settings = settings or OfflineSettings()
        self.active = False
        self.misses = 0
        self.last_ok: float | None = None
        self.first_miss: float | None = None
        self._first_attempt: float | None = None

    def poll(self, t: float, ok: bool) -> Transition | None:
        """One poll attempt at ``t``: ``ok`` when it gave a reading."""
        if self._first_attempt is None:
            self._first_attempt = t
        if ok:
            misses, first_miss, ref = self.misses, self.first_miss, self.last_ok
            self.misses, self.first_miss, self.last_ok = 0, None, t
            if not self.active:
                return None
            self.active = False
            silent = t - (ref if ref is not None else self._first_attempt)
            return Transition("clear", t, t, silent,
                              f"answered again at {_iso(t)} after {misses} missed polls since "
                              f"{_iso(first_miss)} ({silent:g} s without a reading)")
        self.misses += 1
        if self.first_miss is None:
            self.first_miss = t
        ref = self.last_ok if self.last_ok is not None else self._first_attempt
        silent = t - ref
        if self.active or self.misses < self.settings.misses or silent < self.settings.after_s:
            return None
        self.active = True
        since = "the first attempt" if self.last_ok is None else f"the last reading at {_iso(ref)}"
        return Transition("raise", t, self.first_miss, silent,
                          f"no answer to {self.misses} polls in a row, {silent:g} s since {since}")


# -- alerts ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HazardEvent:
    """Something the desk should hear about one alert.

    Attributes:
        action: ``opened`` (new alert), ``escalated`` (a higher level raised: re-notify),
            ``acknowledged`` (someone acknowledged; the condition still holds),
            ``latched`` (the condition cleared but the alert waits for an acknowledgement),
            ``resolved`` (closed: ``reason`` says when and why).
        alert_id: ``{device}:{hazard}:{int(start)}``; the agent prefixes its gateway id.
        device, household: where (household None when the device has none).
        hazard: ``residual_current``, ``cable_temperature.N``, ``overload``,
            ``device_fault``, ``device_offline``.
        kind: the AlertMsg kind (:data:`KINDS`).
        t: when this event happened, UTC epoch s.
        start: when the alert opened, UTC epoch s.
        end: resolution time (``resolved`` only), UTC epoch s.
        level, severity: the alert's highest level so far (1 warning, 2 alarm, 3 critical).
        rule: the rule behind this event (``rising_leakage``, ``threshold``,
            ``second_level``, ``device_flag``, ``fault_flags``, ``internal_fault``,
            ``near_rating``, ``over_rating``, ``offline``, or ``acknowledge``).
        value, unit: the hazard's value at ``t`` (mA, °C, A; s without a reading for
            ``device_offline``; None for flags).
        setting: the threshold of the rule (same unit), if any.
        peak: highest value of the hazard's quantity while the alert was open.
        crossed_at: first sample of the run that raised the alert's current level.
        latched: the alert reached a latching level (needs an acknowledgement).
        acknowledged_by, acknowledged_at: who and when, once acknowledged.
        confidence: 0..1 (:data:`CONFIDENCE`).
        reason: the evidence as text.
    """

    action: str
    alert_id: str
    device: str
    household: str | None
    hazard: str
    kind: str
    t: float
    start: float
    end: float | None
    level: int
    severity: str
    rule: str
    value: float | None
    unit: str
    setting: float | None
    peak: float | None
    crossed_at: float | None
    latched: bool
    acknowledged_by: str | None
    acknowledged_at: float | None
    confidence: float
    reason: str

    @property
    def state(self) -> str:
        """AlertMsg ``state``: ``closed`` once resolved, else ``open``."""
        return "closed" if self.action == "resolved" else "open"

    def detail(self, limit: int = 500) -> str:
        """The evidence as one line for AlertMsg ``detail`` (at most ``limit`` characters)."""
        u = f" {self.unit}" if self.unit else ""
        parts = [f"{self.action}", f"hazard={self.hazard}", f"level={self.severity}", f"rule={self.rule}"]
        if self.value is not None:
            parts.append(f"value={self.value:.4g}{u}")
        if self.setting is not None:
            parts.append(f"setting={self.setting:.4g}{u}")
        if self.peak is not None:
            parts.append(f"peak={self.peak:.4g}{u}")
        if self.acknowledged_by is not None:
            parts.append(f"ack={self.acknowledged_by}@{_iso(self.acknowledged_at)}")
        parts.append(self.reason)
        text = "; ".join(parts)
        return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(slots=True)
class OpenAlert:
    """The book's record of one open alert (read it, do not change it)."""

    alert_id: str
    device: str
    household: str | None
    hazard: str
    kind: str
    start: float
    level: int
    rule: str
    unit: str
    setting: float | None
    crossed_at: float | None
    latched: bool
    confidence: float
    peak: float | None = None
    condition: bool = True
    cleared_at: float | None = None
    clear_reason: str = ""
    clear_value: float | None = None
    acknowledged_by: str | None = None
    acknowledged_at: float | None = None
    ack_note: str = ""
    recurrences: int = 0


class AlarmBook:
    """One open alert per (device, hazard), with escalation, latch and resolution."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], OpenAlert] = {}

    def get(self, device: str, hazard: str) -> OpenAlert | None:
        return self._open.get((device, hazard))

    def open_alerts(self) -> list[OpenAlert]:
        """The open alerts, oldest first."""
        return sorted(self._open.values(), key=lambda a: (a.start, a.device, a.hazard))

    def _event(self, a: OpenAlert, action: str, t: float, *, rule: str | None = None,
               value: float | None = None, setting: float | None = None, reason: str = "",
               end: float | None = None) -> HazardEvent:
        return HazardEvent(
            action=action, alert_id=a.alert_id, device=a.device, household=a.household,
            hazard=a.hazard, kind=a.kind, t=t, start=a.start, end=end, level=a.level,
            severity=SEVERITY[a.level], rule=rule or a.rule, value=value, unit=a.unit,
            setting=a.setting if setting is None else setting, peak=a.peak,
            crossed_at=a.crossed_at, latched=a.latched, acknowledged_by=a.acknowledged_by,
            acknowledged_at=a.acknowledged_at, confidence=a.confidence, reason=reason,
        )

    def raise_level(self, t: float, *, device: str, household: str | None, hazard: str,
                    level: int, rule: str, unit: str, value: float | None,
                    setting: float | None, crossed_at: float | None, latch: bool,
                    reason: str) -> HazardEvent | None:
        """A rule of ``hazard`` raised at ``level``: open, escalate, or note a recurrence.

        Returns:
            ``opened`` or ``escalated``, or None when the alert is open at this level or
            higher already (a condition back while latched is counted in ``recurrences``).
        """
        base = hazard.split(".", 1)[0]
        confidence = CONFIDENCE.get(rule, 1.0)
        a = self._open.get((device, hazard))
        if a is None:
            a = OpenAlert(
                alert_id=f"{device}:{hazard}:{int(t)}", device=device, household=household,
                hazard=hazard, kind=KINDS[base], start=t, level=level, rule=rule, unit=unit,
                setting=setting, crossed_at=crossed_at, latched=latch, confidence=confidence,
                peak=value if unit not in ("", "s") else None,
            )
            self._open[(device, hazard)] = a
            return self._event(a, "opened", t, value=value, reason=reason)
        if not a.condition:
            a.condition, a.cleared_at, a.clear_reason, a.clear_value = True, None, "", None
            a.recurrences += 1
        if level <= a.level:
            return None
        a.level, a.rule, a.setting, a.crossed_at = level, rule, setting, crossed_at
        a.latched = a.latched or latch
        a.confidence = max(a.confidence, confidence)
        return self._event(a, "escalated", t, value=value, reason=reason)

    def note(self, device: str, hazard: str, value: float | None) -> None:
        """Track the peak of the hazard's quantity while its alert is open."""
        a = self._open.get((device, hazard))
        if a is not None and value is not None:
            a.peak = value if a.peak is None else max(a.peak, value)

    def clear(self, t: float, *, device: str, hazard: str, reason: str,
              value: float | None = None) -> HazardEvent | None:
        """Every rule of ``hazard`` has cleared at ``t``.

        Returns:
            ``resolved`` (not latched, or acknowledged already), ``latched`` (waits for an
            acknowledgement), or None when no alert is open.
        """
        a = self._open.get((device, hazard))
        if a is None or not a.condition:
            return None
        a.condition, a.cleared_at, a.clear_reason, a.clear_value = False, t, reason, value
        if not a.latched or a.acknowledged_at is not None:
            return self._resolve(a, t)
        return self._event(a, "latched", t, value=value, reason=f"condition cleared ({reason}); "
                                                                "latched until acknowledged")

    def acknowledge(self, t: float, *, device: str, hazard: str, by: str,
                    note: str = "") -> HazardEvent | None:
        """Someone acknowledged the alert of (device, hazard) at ``t``.

        Args:
            note: free text kept with the acknowledgement and repeated in the reasons
                (e.g. where it came from: "desk case 12, rectified ...").

        Returns:
            ``resolved`` when its condition has cleared already, else ``acknowledged``;
            None when no alert is open or it was acknowledged before.

        Raises:
            ValueError: ``by`` is empty.
        """
        if not by:
            raise ValueError("acknowledge needs who acknowledged (by)")
        a = self._open.get((device, hazard))
        if a is None or a.acknowledged_at is not None:
            return None
        a.acknowledged_by, a.acknowledged_at, a.ack_note = by, t, note
        if not a.condition:
            return self._resolve(a, t)
        extra = f" ({note})" if note else ""
        return self._event(a, "acknowledged", t, rule="acknowledge",
                           reason=f"acknowledged by {by} at {_iso(t)}{extra}; condition still present, "
                                  "resolves once it clears")

    def _resolve(self, a: OpenAlert, t: float) -> HazardEvent:
        del self._open[(a.device, a.hazard)]
        why = f"cleared at {_iso(a.cleared_at)}: {a.clear_reason}"
        if a.latched:
            why += f"; acknowledged by {a.acknowledged_by} at {_iso(a.acknowledged_at)}"
            if a.ack_note:
                why += f" ({a.ack_note})"
        return self._event(a, "resolved", t, value=a.clear_value, reason=f"resolved at {_iso(t)}; {why}", end=t)


# -- the monitor ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FireSettings:
    """The electrical-fire detector rules of one device.

    Attributes:
        residual_setting_ma: residual-current setting, mA, 20..1000; None follows the
            device's ``residual_current_setting`` register when it reads within that range,
            else :data:`RESIDUAL_DEFAULT_MA`.
        temperature_setting_c: cable-temperature setting, °C, 55..140; None follows
            ``temperature_setting`` likewise, else :data:`TEMPERATURE_DEFAULT_C`.
        hysteresis_fraction: hysteresis as a share of the setting (GB 5 % tolerance).
        sustain_s, clear_s: of both alarms (see the constants).
        second_level_delta_c: second temperature level above the setting, °C (None: none).
        device_flags: the device's own ``alarm_*`` flags raise the alarm at once (the
            device has done its own timing; it latches them until reset on the device).
        rising: the rising-leakage warning, or None for none.
    """

    residual_setting_ma: float | None = None
    temperature_setting_c: float | None = None
    hysteresis_fraction: float = GB_SETTING_TOLERANCE
    sustain_s: float = SUSTAIN_S
    clear_s: float = CLEAR_S
    second_level_delta_c: float | None = SECOND_LEVEL_DELTA_C
    device_flags: bool = True
    rising: RisingLeakageSettings | None = field(default_factory=RisingLeakageSettings)

    def __post_init__(self) -> None:
        _check_range("residual_setting_ma", self.residual_setting_ma, RESIDUAL_SETTING_RANGE_MA)
        _check_range("temperature_setting_c", self.temperature_setting_c, TEMPERATURE_SETTING_RANGE_C)
        if not 0 <= self.hysteresis_fraction < 1:
            raise ValueError("hysteresis_fraction must be in [0, 1)")


@dataclass(frozen=True, slots=True)
class OverloadSettings:
    """Household overload on a meter's ``current`` (A); constants above.

    Attributes:
        breaker_rating_a: rated current of the breaker protecting the circuit, A.
        near_fraction, near_sustain_s: level 1 (warning).
        over_fraction, over_sustain_s: level 2 (alarm); None disables it.
        hysteresis_fraction, clear_s: as for the fire rules.
    """

    breaker_rating_a: float
    near_fraction: float = OVERLOAD_NEAR_FRACTION
    near_sustain_s: float = OVERLOAD_NEAR_S
    over_fraction: float | None = OVERLOAD_OVER_FRACTION
    over_sustain_s: float = OVERLOAD_OVER_S
    hysteresis_fraction: float = GB_SETTING_TOLERANCE
    clear_s: float = OVERLOAD_CLEAR_S

    def __post_init__(self) -> None:
        if not (math.isfinite(self.breaker_rating_a) and self.breaker_rating_a > 0):
            raise ValueError(f"breaker_rating_a must be > 0, got {self.breaker_rating_a!r}")
        if not 0 < self.near_fraction:
            raise ValueError("near_fraction must be > 0")


def _check_range(name: str, value: float | None, bounds: tuple[float, float]) -> None:
    if value is not None and not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"{name} must be within {bounds[0]:g}..{bounds[1]:g}, got {value!r}")


@dataclass(slots=True)
class _Level:
    level: int
    rule_name: str
    unit: str
    latch: bool
    feed: Callable[[float, Mapping[str, float], bool | None], Transition | None]
    setting: Callable[[], float | None]
    active: Callable[[], bool]


@dataclass(slots=True)
class _Hazard:
    name: str
    quantity: str | None
    levels: list[_Level]


@dataclass(slots=True)
class _Device:
    name: str
    household: str | None
    poll_period_s: float
    max_gap_s: float
    fire: FireSettings | None
    offline: OfflineRule
    hazards: dict[str, _Hazard]
    residual: ThresholdRule | None = None
    temperature_setting: float = TEMPERATURE_DEFAULT_C
    temperatures: dict[int, tuple[ThresholdRule, ThresholdRule | None]] = field(default_factory=dict)


class HazardMonitor:
    """Every hazard rule of every device, and the alerts they keep.

    Per poll of a device call :meth:`observe` (a good reading) or :meth:`missed` (a failed
    poll); an acknowledgement from the desk goes to :meth:`acknowledge`.  Each returns the
    :class:`HazardEvent` to publish, in order.

    Args:
        tz: IANA zone of the compound (night-time is local).
    """

    def __init__(self, *, tz: str = "Asia/Shanghai") -> None:
        self._zone = ZoneInfo(tz)
        self.book = AlarmBook()
        self._devices: dict[str, _Device] = {}

    # -- configuration ---------------------------------------------------------------------

    def add_device(
        self,
        device: str,
        *,
        household: str | None = None,
        poll_period_s: float = POLL_PERIOD_S,
        fire: FireSettings | None = None,
        overload: OverloadSettings | None = None,
        faults: bool = True,
        offline: OfflineSettings | None = None,
        max_gap_s: float | None = None,
    ) -> None:
        """Watch ``device``.

        Args:
            device: device name (as in readings).
            household: household the alerts are about (None: the device stands alone).
            poll_period_s: the device's poll period, s (the timing budget is checked with it).
            fire: electrical-fire detector rules (residual current, cable temperature per
                channel ``cable_temperature.N`` seen, rising leakage), or None.
            overload: overload on ``current``, or None.
            faults: ``fault_*`` flags raise ``device_fault`` (pass False for piles, whose
                port faults belong to their sessions, :mod:`detectors.piles`).
            offline: offline rule settings (default :class:`OfflineSettings`).
            max_gap_s: longest gap a run survives, s (default 2.5 poll periods).

        Raises:
            ValueError: the device is known already, a bad period, or fire rules whose
                ``sustain_s + poll_period_s`` exceed GB 14287's 30 s.
        """
        if device in self._devices:
            raise ValueError(f"device {device!r} added twice")
        if not (math.isfinite(poll_period_s) and poll_period_s > 0):
            raise ValueError(f"{device}: poll_period_s must be > 0, got {poll_period_s!r}")
        gap = MAX_GAP_POLLS * poll_period_s if max_gap_s is None else float(max_gap_s)
        if fire is not None and fire.sustain_s + poll_period_s > GB_ALARM_WITHIN_S:
            raise ValueError(
                f"{device}: sustain_s {fire.sustain_s:g} + poll period {poll_period_s:g} s "
                f"exceeds the {GB_ALARM_WITHIN_S:g} s alarm budget of GB 14287.2/.3"
            )
        dev = _Device(device, household, poll_period_s, gap, fire, OfflineRule(offline), {})
        if fire is not None:
            dev.temperature_setting = fire.temperature_setting_c or TEMPERATURE_DEFAULT_C
            self._add_residual(dev, fire)
        if overload is not None:
            self._add_overload(dev, overload)
        if faults:
            sensor = FlagRule(lambda k: k.startswith("fault_") and k != "fault_internal",
                              label="fault", max_gap_s=gap)
            internal = FlagRule(("fault_internal",), label="internal fault", max_gap_s=gap)
            dev.hazards["device_fault"] = _Hazard("device_fault", None, [
                _level(WARNING, "fault_flags", "", False, lambda t, v, c, r=sensor: r.update(t, v), None, sensor),
                _level(ALARM, "internal_fault", "", False, lambda t, v, c, r=internal: r.update(t, v), None, internal),
            ])
        self._devices[device] = dev

    def _add_residual(self, dev: _Device, fire: FireSettings) -> None:
        setting = fire.residual_setting_ma or RESIDUAL_DEFAULT_MA
        rule = ThresholdRule(
            ThresholdSettings(setting, setting * fire.hysteresis_fraction, fire.sustain_s, fire.clear_s, dev.max_gap_s),
            name="residual_current", unit="mA")
        dev.residual = rule
        levels = [_level(ALARM, "threshold", "mA", True,
                         lambda t, v, c, r=rule: r.update(t, v.get("residual_current")),
                         lambda r=rule: r.setting, rule)]
        if fire.rising is not None:
            rising = RisingLeakageRule(fire.rising, tz=self._zone, max_gap_s=dev.max_gap_s)
            levels.insert(0, _level(
                WARNING, "rising_leakage", "mA", False,
                lambda t, v, c, r=rising: r.update(t, v.get("residual_current"), c),
                None, rising))
        if fire.device_flags:
            flag = FlagRule(("alarm_residual_current",), label="alarm", max_gap_s=dev.max_gap_s)
            levels.append(_level(ALARM, "device_flag", "mA", True,
                                 lambda t, v, c, r=flag: r.update(t, v), lambda r=rule: r.setting, flag))
        dev.hazards["residual_current"] = _Hazard("residual_current", "residual_current", levels)

    def _add_temperature(self, dev: _Device, channel: int) -> None:
        fire = dev.fire
        assert fire is not None
        setting = dev.temperature_setting
        name = f"cable_temperature.{channel}"
        alarm = ThresholdRule(
            ThresholdSettings(setting, setting * fire.hysteresis_fraction, fire.sustain_s, fire.clear_s, dev.max_gap_s),
            name=name, unit="°C")
        levels = [_level(ALARM, "threshold", "°C", True,
                         lambda t, v, c, r=alarm, n=name: r.update(t, v.get(n)), lambda r=alarm: r.setting, alarm)]
        second = None
        if fire.second_level_delta_c is not None:
            s2 = setting + fire.second_level_delta_c
            second = ThresholdRule(
                ThresholdSettings(s2, s2 * fire.hysteresis_fraction, fire.sustain_s, fire.clear_s, dev.max_gap_s),
                name=f"{name} (second level)", unit="°C")
            levels.append(_level(CRITICAL, "second_level", "°C", True,
                                 lambda t, v, c, r=second, n=name: r.update(t, v.get(n)),
                                 lambda r=second: r.setting, second))
        if fire.device_flags:
            flag_name = f"alarm_{name}"
            flag = FlagRule((flag_name,), label="alarm", max_gap_s=dev.max_gap_s)
            levels.append(_level(ALARM, "device_flag", "°C", True,
                                 lambda t, v, c, r=flag: r.update(t, v), lambda r=alarm: r.setting, flag))
        dev.temperatures[channel] = (alarm, second)
        dev.hazards[name] = _Hazard(name, name, levels)

    def _add_overload(self, dev: _Device, o: OverloadSettings) -> None:
        levels = []
        for level, rule_name, fraction, sustain in (
            (WARNING, "near_rating", o.near_fraction, o.near_sustain_s),
            (ALARM, "over_rating", o.over_fraction, o.over_sustain_s),
        ):
            if fraction is None:
                continue
            s = fraction * o.breaker_rating_a
            rule = ThresholdRule(ThresholdSettings(s, s * o.hysteresis_fraction, sustain, o.clear_s, dev.max_gap_s),
                                 name="current", unit="A")
            levels.append(_level(level, rule_name, "A", False,
                                 lambda t, v, c, r=rule: r.update(t, v.get("current")),
                                 lambda r=rule: r.setting, rule))
        dev.hazards["overload"] = _Hazard("overload", "current", levels)

    # -- per poll --------------------------------------------------------------------------

    def observe(self, device: str, t: float, values: Mapping[str, float], *,
                charging_active: bool | None = None) -> list[HazardEvent]:
        """A good reading of ``device`` at ``t`` (UTC epoch s).

        Args:
            values: the reading's values (a missing name is a missing reading of it).
            charging_active: a charging session of the device's household runs now (from
                the household's charging detector or its pile session); None: unknown.

        Raises:
            KeyError: unknown device (see :meth:`add_device`).
        """
        dev = self._device(device)
        events: list[HazardEvent] = []
        transition = dev.offline.poll(t, True)
        if transition is not None:
            events += self._apply(dev, "device_offline", None, transition)
        if dev.fire is not None:
            self._follow_settings(dev, values)
            for name in values:
                base, _, channel = name.partition(".")
                if base in ("cable_temperature", "alarm_cable_temperature") and channel.isdigit():
                    if int(channel) not in dev.temperatures:
                        self._add_temperature(dev, int(channel))
        for hazard in dev.hazards.values():
            transitions = []
            for lv in hazard.levels:
                tr = lv.feed(t, values, charging_active)
                if tr is not None:
                    transitions.append((lv, tr))
            if hazard.quantity is not None:
                self.book.note(device, hazard.name, _finite(values.get(hazard.quantity)))
            for lv, tr in sorted(transitions, key=lambda x: x[0].level):
                events += self._apply(dev, hazard.name, lv, tr, hazard)
        return events

    def missed(self, device: str, t: float) -> list[HazardEvent]:
        """A failed poll of ``device`` at ``t`` (timeout, exception reply, bad frame).

        Raises:
            KeyError: unknown device.
        """
        dev = self._device(device)
        transition = dev.offline.poll(t, False)
        return [] if transition is None else self._apply(dev, "device_offline", None, transition)

    def acknowledge(self, t: float, by: str, *, device: str, hazard: str,
                    note: str = "") -> list[HazardEvent]:
        """Someone (``by``) acknowledged the alert of (device, hazard) at ``t``.

        ``note`` (free text) is kept with the acknowledgement and shown in the reasons.

        Returns:
            ``[resolved]`` when the condition has cleared already, ``[acknowledged]`` when
            it still holds, ``[]`` when no such alert is open or it was acknowledged.
        """
        event = self.book.acknowledge(t, device=device, hazard=hazard, by=by, note=note)
        return [] if event is None else [event]

    def open_alerts(self) -> list[OpenAlert]:
        """Alerts open now, oldest first."""
        return self.book.open_alerts()

    # -- internals -------------------------------------------------------------------------

    def _device(self, device: str) -> _Device:
        try:
            return self._devices[device]
        except KeyError:
            raise KeyError(f"unknown device {device!r}: call add_device first") from None

    def _follow_settings(self, dev: _Device, values: Mapping[str, float]) -> None:
        """Follow the device's own setting registers where the settings leave it open."""
        fire = dev.fire
        assert fire is not None
        h = fire.hysteresis_fraction
        if fire.residual_setting_ma is None and dev.residual is not None:
            s = _finite(values.get("residual_current_setting"))
            lo, hi = RESIDUAL_SETTING_RANGE_MA
            if s is not None and lo <= s <= hi and s != dev.residual.setting:
                dev.residual.retune(s, s * h)
        if fire.temperature_setting_c is None:
            s = _finite(values.get("temperature_setting"))
            lo, hi = TEMPERATURE_SETTING_RANGE_C
            if s is not None and lo <= s <= hi and s != dev.temperature_setting:
                dev.temperature_setting = s
                for alarm, second in dev.temperatures.values():
                    alarm.retune(s, s * h)
                    if second is not None and fire.second_level_delta_c is not None:
                        s2 = s + fire.second_level_delta_c
                        second.retune(s2, s2 * h)

    def _apply(self, dev: _Device, hazard: str, lv: _Level | None, tr: Transition,
               spec: _Hazard | None = None) -> list[HazardEvent]:
        if hazard == "device_offline":
            if tr.kind == "raise":
                ev = self.book.raise_level(
                    tr.t, device=dev.name, household=dev.household, hazard=hazard, level=ALARM,
                    rule="offline", unit="s", value=tr.value, setting=dev.offline.settings.after_s,
                    crossed_at=tr.since, latch=False, reason=tr.reason)
            else:
                ev = self.book.clear(tr.t, device=dev.name, hazard=hazard, reason=tr.reason, value=tr.value)
            return [] if ev is None else [ev]
        assert lv is not None and spec is not None
        if tr.kind == "raise":
            ev = self.book.raise_level(
                tr.t, device=dev.name, household=dev.household, hazard=hazard, level=lv.level,
                rule=lv.rule_name, unit=lv.unit, value=tr.value, setting=lv.setting(),
                crossed_at=tr.since, latch=lv.latch, reason=tr.reason)
            return [] if ev is None else [ev]
        if any(other.active() for other in spec.levels):
            return []  # another level of the hazard still holds
        ev = self.book.clear(tr.t, device=dev.name, hazard=hazard, reason=tr.reason, value=tr.value)
        return [] if ev is None else [ev]


def _level(level: int, rule_name: str, unit: str, latch: bool,
           feed: Callable[[float, Mapping[str, float], bool | None], Transition | None],
           setting: Callable[[], float | None] | None, rule: object) -> _Level:
    return _Level(level, rule_name, unit, latch, feed, setting or (lambda: None),
                  lambda r=rule: bool(r.active))  # type: ignore[attr-defined]


__all__ = [
    "ACTIONS",
    "KINDS",
    "AlarmBook",
    "FireSettings",
    "FlagRule",
    "HazardEvent",
    "HazardMonitor",
    "OfflineRule",
    "OfflineSettings",
    "OpenAlert",
    "OverloadSettings",
    "RisingLeakageRule",
    "RisingLeakageSettings",
    "ThresholdRule",
    "ThresholdSettings",
    "Transition",
    "is_night",
]
