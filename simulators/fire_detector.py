"""A simulated electrical-fire detector (1 residual-current + 4 cable-temperature channels)
with hazard scenarios and their ground truth.

The values follow ``drivers/profiles/fire_detector.toml`` (names of
:func:`drivers.reading.quantity_unit`), so :class:`simulators.meter.MeterServer` serves
them over the real Modbus map::

    trace = fire_scenario(start, seed=1)
    server = MeterServer({4: trace.values}, profile={4: "fire_detector"}, clock=clock)
    ...
    server.set_fault(4, "silent" if trace.is_silent(clock.now()) else None)   # silences

Values live on a regular grid (``step_s``, default 5 s, the poll period the fire rules
are budgeted for) and are held between grid points; they are quantised to the register
resolution (residual current 1 mA, temperature 0.1 °C) so a value read over Modbus equals
the trace's value.  NaN is "not available" (the profile's sentinel): a temperature sensor
that is not fitted or has a fault.

Scenarios (:class:`FireDetectorSim` methods; numbers from domain-facts.md §4 unless noted):

* baseline: natural leakage 100-200 mA (default 150 mA, a slow ±10 mA daily wander and
  3 mA noise, chosen), cables at ambient + a little;
* ``rain_on_outdoor_lead``: during a (night) charging session an outdoor extension lead
  gets wet: leakage climbs as ``A (1 - exp(-dt / tau))`` (A 250 mA, tau 40 min: chosen
  so it crosses the 300 mA default about 37 min after the rain starts) and falls back
  when the lead is unplugged at the session's end;
* ``overloaded_extension_lead``: a heavy load on a lead heats the circuit's cable as a
  first-order system toward ambient + ``rise_c`` (95 °C, tau 15 min: chosen so it passes
  85 °C after ~16 min and the second level 105 °C after ~31 min), cooling the same way;
* ``sensor_fault``: a ``fault_*`` flag set (and the sensor's value not available);
* ``silence``: the device stops answering (the server's ``"silent"`` fault).

Ground truth (:class:`HazardTruth`) is computed from the served values: a threshold
hazard starts at the first grid sample at or above the setting and ends at the first
sample below ``setting - 5 %`` (GB 14287's tolerance, as the rule engine's hysteresis);
``model_start`` is when the noise-free model crosses the setting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from simulators.trace import LoadTrace

#: Settings of the served detector (domain-facts.md §4 defaults).
RESIDUAL_SETTING_MA = 300.0
TEMPERATURE_SETTING_C = 85.0
#: GB 14287.2/.3 tolerance of the alarm value (domain-facts.md §4), the truth's clear band.
TOLERANCE = 0.05
#: Second temperature level above the setting, °C (as detectors.hazards.SECOND_LEVEL_DELTA_C).
SECOND_LEVEL_DELTA_C = 20.0
#: Temperature channels of the profile (FC-055, ARCM300-J1: 4 + 1).
CHANNELS = 4


@dataclass(frozen=True, slots=True)
class HazardTruth:
    """One true hazard.

    Attributes:
        kind: AlertMsg kind (``residual_current``, ``cable_temperature``, ``overload``,
            ``device_offline``).
        hazard: detectors.hazards hazard (``residual_current``, ``cable_temperature.N``,
            ``overload``, ``device_fault``, ``device_offline``).
        level: ``warning``, ``alarm`` or ``critical`` (second temperature level).
        device, household: where.
        scenario: what caused it (``rain_on_outdoor_lead``, ``overloaded_extension_lead``,
            ``sensor_fault``, ``silence``, ``extra_load``).
        cause_start: when the cause began (rain, load, fault, silence), UTC epoch s.
        start: first served sample at/above the setting (fault, silence: first affected
            sample), UTC epoch s.
        end: first served sample back below the band (fault, silence: first unaffected
            sample), or None when still on at the trace's end.
        model_start: noise-free crossing of the setting, UTC epoch s (= start without noise).
        setting: the threshold (mA, °C, A), None for faults and silence.
        peak: highest served value while on.
    """

    kind: str
    hazard: str
    level: str
    device: str
    household: str | None
    scenario: str
    cause_start: float
    start: float
    end: float | None
    model_start: float
    setting: float | None = None
    peak: float | None = None


@dataclass(slots=True)
class FireDetectorTrace:
    """A detector's values on a grid (build with :class:`FireDetectorSim`).

    Attributes:
        device, household: names.
        start: UTC epoch s of sample 0; step_s: grid spacing, s.
        residual_ma: shape (n,), mA (integers), NaN = not available.
        temperature_c: shape (CHANNELS, n), °C (0.1 steps), NaN = not available.
        flags: flag name (``alarm_*``, ``fault_*``) -> shape (n,) bool.
        silent: shape (n,) bool: the device does not answer.
        charging: shape (n,) bool: a charging session of the household runs (the rule
            engine's ``charging_active`` input).
        residual_setting_ma, temperature_setting_c: the device's setting registers.
        truth: the hazards, by start.
    """

    device: str
    household: str | None
    start: float
    step_s: float
    residual_ma: np.ndarray
    temperature_c: np.ndarray
    flags: dict[str, np.ndarray]
    silent: np.ndarray
    charging: np.ndarray
    residual_setting_ma: float = RESIDUAL_SETTING_MA
    temperature_setting_c: float = TEMPERATURE_SETTING_C
    truth: list[HazardTruth] = field(default_factory=list)

    @property
    def end(self) -> float:
        return self.start + self.residual_ma.size * self.step_s

    def times(self) -> np.ndarray:
        """Grid times, UTC epoch s, shape (n,)."""
        return self.start + np.arange(self.residual_ma.size) * self.step_s

    def index(self, t: float) -> int:
        """Sample holding at ``t`` (clamped to the trace)."""
        i = int(math.floor((t - self.start) / self.step_s + 1e-9))
        return min(max(i, 0), self.residual_ma.size - 1)

    def values(self, t: float) -> dict[str, float | str | int]:
        """The device's values at ``t``: a ``MeterServer`` value source."""
        i = self.index(t)
        out: dict[str, float | str | int] = {"residual_current": float(self.residual_ma[i])}
        for ch in range(CHANNELS):
            out[f"cable_temperature.{ch + 1}"] = float(self.temperature_c[ch, i])
        for name, arr in self.flags.items():
            out[name] = 1.0 if arr[i] else 0.0
        out["residual_current_setting"] = self.residual_setting_ma
        out["temperature_setting"] = self.temperature_setting_c
        out["model"] = "FD-R1T4"
        out["serial_number"] = 12345678
        return out

    def reading(self, t: float) -> dict[str, float]:
        """What a driver would return at ``t``: measurement values without NaN and
        without the identification entries (for driving the rule engine directly)."""
        return {k: float(v) for k, v in self.values(t).items()
                if k not in ("model", "serial_number") and not (isinstance(v, float) and math.isnan(v))}

    def is_silent(self, t: float) -> bool:
        return bool(self.silent[self.index(t)])

    def charging_at(self, t: float) -> bool:
        return bool(self.charging[self.index(t)])


def _flag_names() -> list[str]:
    return (["alarm_residual_current"] + [f"alarm_cable_temperature.{c}" for c in range(1, CHANNELS + 1)]
            + ["fault_residual_sensor"] + [f"fault_temperature_sensor.{c}" for c in range(1, CHANNELS + 1)]
            + ["fault_internal"])


class FireDetectorSim:
    """Builds a :class:`FireDetectorTrace`: a baseline, then scenarios, then :meth:`build`.

    Args:
        device: device name; household: its household (or None).
        start: UTC epoch s; hours: length, h.
        step_s: grid spacing, s (default 5: the fire rules' poll period).
        seed: seed of the noise.
        baseline_ma: natural leakage, mA (domain-facts.md §4: 100-200).
        noise_ma: residual-current noise (standard deviation), mA.
        ambient_c: cable temperature without load, °C; noise_c its noise, °C.
        fitted: temperature channels with a sensor (others read not available).
        residual_setting_ma, temperature_setting_c: the device's settings (§4 defaults).
        device_alarm_delay_s: the device raises (and latches, until the trace's end: flylead
            does not reset) its own ``alarm_*`` flags after a value has been at/above the
            setting this long; None (default) leaves the flags 0 so the rule engine's own
            timing is what is tested.

    Raises:
        ValueError: non-positive hours or step, a baseline outside 0..1000 mA.
    """

    def __init__(self, device: str = "fd-1", *, household: str | None = None, start: float,
                 hours: float = 24.0, step_s: float = 5.0, seed: int = 1, baseline_ma: float = 150.0,
                 noise_ma: float = 3.0, ambient_c: float = 22.0, noise_c: float = 0.2,
                 fitted: Sequence[int] = (1, 2, 3, 4), residual_setting_ma: float = RESIDUAL_SETTING_MA,
                 temperature_setting_c: float = TEMPERATURE_SETTING_C,
                 device_alarm_delay_s: float | None = None) -> None:
        if not hours > 0 or not step_s > 0:
            raise ValueError("hours and step_s must be > 0")
        if not 0 <= baseline_ma <= 1000:
            raise ValueError(f"baseline_ma must be within 0..1000, got {baseline_ma!r}")
        self.device, self.household = device, household
        self.start, self.step_s = float(start), float(step_s)
        n = int(round(hours * 3600.0 / step_s))
        self._t = self.start + np.arange(n) * self.step_s
        rng = np.random.default_rng([seed, 14287])
        # slow wander: leakage follows humidity and connected equipment over the day (chosen)
        phase = rng.uniform(0, 2 * math.pi)
        self._res_model = baseline_ma + 10.0 * np.sin(2 * math.pi * (self._t - self.start) / 86400.0 + phase)
        self._res_noise = noise_ma * rng.standard_normal(n)
        self._temp_model = np.full((CHANNELS, n), float(ambient_c))
        self._temp_noise = noise_c * rng.standard_normal((CHANNELS, n))
        self._fitted = {int(c) for c in fitted}
        self._faults: dict[str, np.ndarray] = {name: np.zeros(n, bool) for name in _flag_names()
                                               if name.startswith("fault_")}
        self._silent = np.zeros(n, bool)
        self._charging = np.zeros(n, bool)
        self._causes: list[tuple[str, str, float, float]] = []  # (scenario, hazard, start, end)
        self.residual_setting_ma = float(residual_setting_ma)
        self.temperature_setting_c = float(temperature_setting_c)
        self.device_alarm_delay_s = device_alarm_delay_s

    def _mask(self, start: float, end: float) -> np.ndarray:
        return (self._t >= start) & (self._t < end)

    def charging_session(self, start: float, end: float) -> None:
        """A charging session of the household runs over [start, end) (no hazard by itself)."""
        self._charging |= self._mask(start, end)

    def rain_on_outdoor_lead(self, charge_start: float, charge_end: float, rain_start: float, *,
                             rise_ma: float = 250.0, tau_s: float = 2400.0) -> None:
        """Rain wets the outdoor lead of a charging session: leakage climbs from
        ``max(rain_start, charge_start)`` until the lead is unplugged at ``charge_end``."""
        if not charge_end > charge_start or not tau_s > 0:
            raise ValueError("charge_end must be after charge_start and tau_s > 0")
        self.charging_session(charge_start, charge_end)
        wet = max(rain_start, charge_start)
        m = self._mask(wet, charge_end)
        self._res_model[m] += rise_ma * (1.0 - np.exp(-(self._t[m] - wet) / tau_s))
        self._causes.append(("rain_on_outdoor_lead", "residual_current", wet, charge_end))

    def overloaded_extension_lead(self, load_start: float, load_end: float, *, channel: int = 1,
                                  rise_c: float = 95.0, tau_s: float = 900.0) -> None:
        """A heavy load on an extension lead heats the circuit's cable on ``channel``."""
        if not 1 <= channel <= CHANNELS or not load_end > load_start or not tau_s > 0:
            raise ValueError("bad channel, load window or tau_s")
        t = self._t
        heat = np.where(t >= load_start, 1.0 - np.exp(-(np.minimum(t, load_end) - load_start) / tau_s), 0.0)
        cool = np.where(t > load_end, np.exp(-(t - load_end) / tau_s), 1.0)
        self._temp_model[channel - 1] += rise_c * heat * cool
        self._causes.append(("overloaded_extension_lead", f"cable_temperature.{channel}", load_start, load_end))

    def sensor_fault(self, start: float, end: float, *, flag: str = "fault_temperature_sensor.3") -> None:
        """A fault flag set over [start, end); a faulted temperature sensor reads not available."""
        if flag not in self._faults:
            raise ValueError(f"unknown fault flag {flag!r}; expected one of {sorted(self._faults)}")
        self._faults[flag] |= self._mask(start, end)
        self._causes.append(("sensor_fault", "device_fault", start, end))

    def silence(self, start: float, end: float) -> None:
        """The device does not answer over [start, end)."""
        self._silent |= self._mask(start, end)
        self._causes.append(("silence", "device_offline", start, end))

    # -- build ------------------------------------------------------------------------------

    def build(self) -> FireDetectorTrace:
        """Quantise, set flags, compute the ground truth."""
        res = np.clip(np.round(self._res_model + self._res_noise), 0, 65534)
        if self._faults["fault_residual_sensor"].any():
            res = np.where(self._faults["fault_residual_sensor"], np.nan, res)
        temp = np.round((self._temp_model + self._temp_noise) * 10.0) / 10.0
        for ch in range(CHANNELS):
            if ch + 1 not in self._fitted:
                temp[ch] = np.nan
            fault = self._faults[f"fault_temperature_sensor.{ch + 1}"]
            temp[ch] = np.where(fault, np.nan, temp[ch])
        flags = {name: arr.copy() for name, arr in self._faults.items()}
        delay = self.device_alarm_delay_s
        flags["alarm_residual_current"] = self._device_alarm(res, self.residual_setting_ma, delay)
        for ch in range(CHANNELS):
            flags[f"alarm_cable_temperature.{ch + 1}"] = self._device_alarm(temp[ch], self.temperature_setting_c, delay)
        trace = FireDetectorTrace(
            device=self.device, household=self.household, start=self.start, step_s=self.step_s,
            residual_ma=res, temperature_c=temp, flags=flags, silent=self._silent.copy(),
            charging=self._charging.copy(), residual_setting_ma=self.residual_setting_ma,
            temperature_setting_c=self.temperature_setting_c,
        )
        trace.truth = sorted(self._truth(res, temp), key=lambda x: (x.start, x.hazard))
        return trace

    def _device_alarm(self, x: np.ndarray, setting: float, delay: float | None) -> np.ndarray:
        out = np.zeros(x.size, bool)
        if delay is None:
            return out
        need = max(int(math.ceil(delay / self.step_s)), 0)
        run = 0
        for i, v in enumerate(x):
            run = run + 1 if v >= setting else 0  # NaN compares False
            if run > need:
                out[i:] = True  # latched until reset on the device
                break
        return out

    def _segments(self, x: np.ndarray, on: float, off: float) -> list[tuple[int, int | None]]:
        """Schmitt segments: on at x >= on, off at x < off (NaN holds the state)."""
        segs, start = [], None
        for i, v in enumerate(x):
            if math.isnan(v):
                continue
            if start is None and v >= on:
                start = i
            elif start is not None and v < off:
                segs.append((start, i))
                start = None
        if start is not None:
            segs.append((start, None))
        return segs

    def _truth(self, res: np.ndarray, temp: np.ndarray) -> list[HazardTruth]:
        t = self._t
        out = []

        def cause(hazard: str, i: int) -> tuple[str, float]:
            for scenario, h, a, b in self._causes:
                if h == hazard and a <= t[i] <= b + 6 * 3600:
                    return scenario, a
            return "baseline", float(t[i])

        def add(kind, hazard, level, x, model, setting):
            for a, b in self._segments(x, setting, setting * (1 - TOLERANCE)):
                scenario, cause_start = cause(hazard, a)
                crossing = np.nonzero((model >= setting) & (t >= cause_start))[0]
                model_start = float(t[crossing[0]]) if crossing.size else float(t[a])
                seg = x[a:b]
                out.append(HazardTruth(
                    kind, hazard, level, self.device, self.household, scenario, cause_start,
                    float(t[a]), None if b is None else float(t[b]), model_start, setting,
                    float(np.nanmax(seg)),
                ))

        add("residual_current", "residual_current", "alarm", res, self._res_model, self.residual_setting_ma)
        for ch in range(CHANNELS):
            if ch + 1 not in self._fitted:
                continue
            name = f"cable_temperature.{ch + 1}"
            add("cable_temperature", name, "alarm", temp[ch], self._temp_model[ch], self.temperature_setting_c)
            add("cable_temperature", name, "critical", temp[ch], self._temp_model[ch],
                self.temperature_setting_c + SECOND_LEVEL_DELTA_C)
        for scenario, hazard, a, b in self._causes:
            if scenario == "rain_on_outdoor_lead":
                out.append(HazardTruth("residual_current", "residual_current", "warning", self.device,
                                       self.household, scenario, a, a, b, a))
            elif scenario in ("sensor_fault", "silence"):
                m = self._mask(a, b)
                idx = np.nonzero(m)[0]
                if idx.size == 0:
                    continue
                end = float(t[idx[-1] + 1]) if idx[-1] + 1 < t.size else None
                kind = "device_offline"
                out.append(HazardTruth(kind, hazard, "alarm", self.device, self.household, scenario,
                                       a, float(t[idx[0]]), end, float(t[idx[0]])))
        return out


def _local(day0: datetime, days: int, hour: float) -> float:
    return (day0 + timedelta(days=days, hours=hour)).timestamp()


def fire_scenario(start: float, hours: float = 48.0, *, seed: int = 1, device: str = "fd-h03",
                  household: str | None = "h03", charging: Sequence[tuple[float, float]] | None = None,
                  tz: str = "Asia/Shanghai", device_alarm_delay_s: float | None = None) -> FireDetectorTrace:
    """The demo's detector: every scenario once, on local times of the compound.

    Day 0 is the local date of ``start``.  Times are local; an event outside the period is
    left out:

    * silence: day 0 16:00-16:30 (the detector's supply switched off for half an hour);
    * rain on an outdoor lead: during the first charging session of ``charging`` (default
      day 0 21:00 - day 1 05:00), rain 40 min after it starts;
    * sensor fault (``fault_temperature_sensor.3``): day 1 10:00-10:30;
    * overloaded extension lead on channel 1: day 1 14:00-15:00;
    * the other sessions of ``charging``: plain charging.

    Args:
        charging: the household's charging sessions (UTC epoch s), e.g. the demo's true
            sessions of ``household``.
    """
    zone = ZoneInfo(tz)
    day0 = datetime.fromtimestamp(start, zone).replace(hour=0, minute=0, second=0, microsecond=0)
    sim = FireDetectorSim(device, household=household, start=start, hours=hours, seed=seed,
                          device_alarm_delay_s=device_alarm_delay_s)
    end = start + hours * 3600.0

    def inside(a: float, b: float) -> bool:
        return start <= a and b <= end

    if charging is None:
        charging = [(_local(day0, 0, 21.0), _local(day0, 1, 5.0))]
    for i, (a, b) in enumerate(sorted(charging)):
        if not inside(a, b):
            continue
        if i == 0:
            sim.rain_on_outdoor_lead(a, b, a + 2400.0)
        else:
            sim.charging_session(a, b)
    for kind, a, b in (("silence", _local(day0, 0, 16.0), _local(day0, 0, 16.5)),
                       ("fault", _local(day0, 1, 10.0), _local(day0, 1, 10.5)),
                       ("overload", _local(day0, 1, 14.0), _local(day0, 1, 15.0))):
        if not inside(a, b):
            continue
        if kind == "silence":
            sim.silence(a, b)
        elif kind == "fault":
            sim.sensor_fault(a, b)
        else:
            sim.overloaded_extension_lead(a, b)
    return sim.build()


def with_extra_load(trace: LoadTrace, start: float, end: float, power_w: float, *,
                    breaker_rating_a: float | None = None, near_fraction: float = 0.9,
                    ) -> tuple[LoadTrace, HazardTruth | None]:
    """``trace`` with a constant extra load (a heater on an extension lead) over [start, end).

    Args:
        power_w: extra active power, W.
        breaker_rating_a: with it, the overload truth: first sample whose meter current
            reaches ``near_fraction`` x the rating, held until the load ends (None: none).

    Returns:
        (new trace, overload truth or None).
    """
    p = trace.power_w.copy()
    t = trace.start + np.arange(p.size) * trace.step_s
    m = (t >= start) & (t < end)
    p[m] += power_w
    new = LoadTrace(trace.household, trace.start, trace.step_s, p, trace.voltage_v, trace.power_factor)
    if breaker_rating_a is None:
        return new, None
    setting = near_fraction * breaker_rating_a
    current = np.array([new.at(float(x))["current"] for x in t])
    on = np.nonzero(m & (current >= setting))[0]
    if on.size == 0:
        return new, None
    after = np.nonzero((t > t[on[0]]) & (current < setting * (1 - TOLERANCE)))[0]
    truth = HazardTruth("overload", "overload", "warning", f"meter-{trace.household}", trace.household,
                        "extra_load", float(start), float(t[on[0]]),
                        float(t[after[0]]) if after.size else None, float(t[on[0]]), setting,
                        float(current[m].max()))
    return new, truth
