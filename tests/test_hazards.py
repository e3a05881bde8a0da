"""Hazard rules on a simulated time axis: exact raise, hold, clear and latch times.

The engine is clock-agnostic, so most tests drive it with arrays of (t, value) on a 5 s
poll grid (the poll period the fire rules are budgeted for).  Defaults under test
(detectors/hazards.py, docs/hazards.md): setting 300 mA / 85 °C, hysteresis 5 % of the
setting, sustain 20 s, clear 60 s, runs survive a gap of up to 12.5 s, second temperature
level 105 °C, offline after 3 misses and 30 s, rising leakage 100 mA/h over 30 min with a
60 s sustain.  The last test serves a fire-detector scenario over Modbus TCP
(MeterServer) and reads it back with the driver.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from agent.schema import ALERT_KINDS, AlertMsg
from detectors.hazards import (
    GB_ALARM_WITHIN_S,
    FireSettings,
    HazardMonitor,
    OfflineRule,
    OverloadSettings,
    RisingLeakageRule,
    RisingLeakageSettings,
    ThresholdRule,
    ThresholdSettings,
)
from drivers import DeviceSpec, DriverError, ModbusTcpBus
from simulators.fire_detector import FireDetectorSim, fire_scenario
from simulators.meter import MeterServer
from tests.clocks import StepClock

pytestmark = pytest.mark.timeout(60)

ZONE = ZoneInfo("Asia/Shanghai")
#: 2025-06-01 12:00 local: daytime.
DAY = datetime(2025, 6, 1, 12, 0, tzinfo=ZONE).timestamp()
#: 2025-06-01 22:00 local: night.
NIGHT = datetime(2025, 6, 1, 22, 0, tzinfo=ZONE).timestamp()
P = 5.0  # poll period, s
DEV = "fd-h03"


def rule(setting=300.0, hysteresis=15.0, sustain=20.0, clear=60.0, gap=12.5) -> ThresholdRule:
    return ThresholdRule(ThresholdSettings(setting, hysteresis, sustain, clear, gap), name="residual_current", unit="mA")


def run_rule(r: ThresholdRule, samples) -> list[tuple[str, float, float]]:
    out = []
    for t, v in samples:
        tr = r.update(t, v)
        if tr is not None:
            out.append((tr.kind, tr.t, tr.since))
    return out


def grid(t0: float, seconds: float, period: float = P) -> np.ndarray:
    return t0 + np.arange(0.0, seconds, period)


def monitor(**fire) -> HazardMonitor:
    m = HazardMonitor()
    m.add_device(DEV, household="h03", fire=FireSettings(**fire))
    return m


def feed(m: HazardMonitor, samples, *, charging=None, device=DEV):
    """samples: (t, values dict or None for a failed poll)."""
    events = []
    for t, values in samples:
        if values is None:
            events += m.missed(device, t)
        else:
            c = charging(t) if callable(charging) else charging
            events += m.observe(device, t, values, charging_active=c)
    return events


def brief(events):
    return [(e.action, e.hazard, e.severity, e.t) for e in events]


# -- ThresholdRule ---------------------------------------------------------------------------


def test_raise_hold_clear_exact_times():
    t0 = DAY
    ts = grid(t0, 900)
    v = np.where((ts >= t0 + 100) & (ts < t0 + 400), 320.0, 150.0)
    # first sample >= 300 at +100: raise at +120 (sustain 20 s); first below 285 at +400:
    # clear at +460 (clear 60 s); in between it holds
    assert run_rule(rule(), zip(ts, v)) == [("raise", t0 + 120, t0 + 100), ("clear", t0 + 460, t0 + 400)]


def test_short_excursion_does_not_raise():
    t0 = DAY
    ts = grid(t0, 300)
    v = np.where((ts >= t0 + 100) & (ts < t0 + 115), 400.0, 150.0)  # 3 polls = 15 s < 20 s
    assert run_rule(rule(), zip(ts, v)) == []


def test_noise_inside_the_band_neither_resets_nor_clears():
    """Leakage hovering at the setting with noise narrower than the hysteresis: one raise,
    20 s after the first sample at/above the setting, then it holds (no flapping)."""
    rng = np.random.default_rng(7)
    t0 = DAY
    ts = grid(t0, 3600)
    v = np.where(ts < t0 + 600, 150.0, np.round(300.0 + rng.uniform(-12.0, 12.0, ts.size)))
    first = ts[np.argmax(v >= 300.0)]
    assert run_rule(rule(), zip(ts, v)) == [("raise", first + 20, first)]
    # then below the band for good: cleared 60 s after the first sample below 285
    ts2 = grid(t0 + 3600, 300)
    r = rule()
    run_rule(r, zip(ts, v))
    assert run_rule(r, zip(ts2, np.full(ts2.size, 280.0))) == [("clear", t0 + 3660, t0 + 3600)]


def test_noise_across_the_band_does_not_flap():
    """Values that keep dipping below the band are not a sustained crossing, and values
    that keep coming back into the band do not clear an alarm: never more than one
    transition each way."""
    t0 = DAY
    ts = grid(t0, 1800)
    alternating = np.where(np.arange(ts.size) % 2 == 0, 310.0, 280.0)
    assert run_rule(rule(), zip(ts, alternating)) == []
    # raised, then the value wanders 270..295: every 4th poll is back in the band (>= 285),
    # so the 60 s clear run never completes
    r = rule()
    up = grid(t0 + 1800, 60)
    run_rule(r, zip(up, np.full(up.size, 320.0)))
    assert r.active
    wander = grid(t0 + 1860, 1800)
    values = np.where(np.arange(wander.size) % 4 == 3, 290.0, 275.0)
    assert run_rule(r, zip(wander, values)) == []
    assert r.active


def test_one_missed_poll_keeps_the_run_a_longer_gap_restarts_it():
    t0 = DAY
    ts = list(grid(t0, 300))
    v = {t: (320.0 if t >= t0 + 100 else 150.0) for t in ts}
    one_missed = [(t, None if t == t0 + 110 else v[t]) for t in ts]  # gap 10 s <= 12.5 s
    assert run_rule(rule(), one_missed)[0] == ("raise", t0 + 120, t0 + 100)
    three_missed = [(t, None if t0 + 105 <= t <= t0 + 115 else v[t]) for t in ts]  # gap 20 s
    # the run restarts at +120 (nothing is known about +105..+115): raise at +140
    assert run_rule(rule(), three_missed)[0] == ("raise", t0 + 140, t0 + 120)
    # the same for a clear run: gap inside the 60 s below the band
    r = rule()
    run_rule(r, [(t0 + i * P, 320.0) for i in range(6)])
    below = [(t0 + 30 + i * P, 150.0) for i in range(30) if not 40 <= i * P <= 55]
    assert run_rule(r, below) == [("clear", t0 + 30 + 60 + 60, t0 + 30 + 60)]


def test_timing_budget_within_30_s_of_a_sustained_crossing():
    """A crossing at any phase of the 5 s poll grid is raised within sustain + poll =
    25 s, and within 30 s when one poll on the way is missed (GB 14287.2/.3)."""
    t0 = DAY
    for phase in np.linspace(0.0, 4.999, 11):
        crossing = t0 + 100 + phase
        polls = grid(t0, 400)
        for missed in (None, "last"):
            r, raised = rule(), None
            first_above = polls[polls >= crossing][0]
            for t in polls:
                if missed == "last" and t == first_above + 20:
                    continue
                tr = r.update(t, 320.0 if t >= crossing else 150.0)
                if tr is not None and tr.kind == "raise":
                    raised = tr.t
                    break
            assert raised is not None
            assert raised - crossing <= (25.0 if missed is None else GB_ALARM_WITHIN_S)


def test_fire_rules_refuse_a_budget_over_30_s():
    m = HazardMonitor()
    with pytest.raises(ValueError, match="30 s alarm budget of GB 14287"):
        m.add_device("a", fire=FireSettings(sustain_s=26.0), poll_period_s=5.0)
    with pytest.raises(ValueError, match="GB 14287"):
        m.add_device("b", fire=FireSettings(), poll_period_s=15.0)
    m.add_device("c", fire=FireSettings(sustain_s=25.0), poll_period_s=5.0)  # exactly 30 s
    with pytest.raises(ValueError):
        FireSettings(residual_setting_ma=1500.0)
    with pytest.raises(ValueError):
        FireSettings(temperature_setting_c=50.0)


# -- alerts: latch, acknowledge, escalation ----------------------------------------------------


def residual_step(t0, up, down, seconds, high=320.0):
    return [(t, {"residual_current": high if up <= t < down else 150.0}) for t in grid(t0, seconds)]


def test_latched_until_acknowledged():
    t0 = DAY
    m = monitor()
    events = feed(m, residual_step(t0, t0 + 100, t0 + 400, 900))
    assert brief(events) == [
        ("opened", "residual_current", "alarm", t0 + 120),
        ("latched", "residual_current", "alarm", t0 + 460),  # cleared, but latched
    ]
    assert events[0].alert_id == f"{DEV}:residual_current:{int(t0 + 120)}"
    assert events[0].crossed_at == t0 + 100 and events[0].setting == 300.0 and events[0].kind == "residual_current"
    assert [a.hazard for a in m.open_alerts()] == ["residual_current"]
    resolved = m.acknowledge(t0 + 1000, "grid-worker-7", device=DEV, hazard="residual_current")
    assert brief(resolved) == [("resolved", "residual_current", "alarm", t0 + 1000)]
    r = resolved[0]
    assert r.end == t0 + 1000 and r.state == "closed" and r.peak == 320.0 and r.acknowledged_by == "grid-worker-7"
    assert "cleared at 2025-06-01T04:07:40Z" in r.reason and "acknowledged by grid-worker-7" in r.reason
    assert m.open_alerts() == []
    assert m.acknowledge(t0 + 1001, "x", device=DEV, hazard="residual_current") == []


def test_acknowledged_while_active_resolves_when_cleared():
    t0 = DAY
    m = monitor()
    events = feed(m, residual_step(t0, t0 + 100, t0 + 400, 300))
    events += m.acknowledge(t0 + 300, "desk-1", device=DEV, hazard="residual_current")
    events += feed(m, residual_step(t0 + 300, t0, t0 + 400, 600))
    assert brief(events) == [
        ("opened", "residual_current", "alarm", t0 + 120),
        ("acknowledged", "residual_current", "alarm", t0 + 300),
        ("resolved", "residual_current", "alarm", t0 + 460),
    ]
    assert events[-1].end == t0 + 460 and "acknowledged by desk-1" in events[-1].reason


def test_condition_back_while_latched_keeps_one_alert():
    t0 = DAY
    m = monitor()
    samples = [(t, {"residual_current": 320.0 if (t0 + 100 <= t < t0 + 400 or t0 + 600 <= t < t0 + 700) else 150.0})
               for t in grid(t0, 1200)]
    events = feed(m, samples)
    assert brief(events) == [
        ("opened", "residual_current", "alarm", t0 + 120),
        ("latched", "residual_current", "alarm", t0 + 460),
        ("latched", "residual_current", "alarm", t0 + 760),  # back at +620, cleared again
    ]
    assert m.open_alerts()[0].recurrences == 1


def test_temperature_escalates_to_the_second_level_and_latches():
    t0 = DAY
    ts = grid(t0, 3600)
    # 25 °C, ramp 0.05 °C/s from +600 (to 114.75 °C at +2395), then 30 °C from +2400
    temp = np.where(ts < t0 + 600, 25.0, np.minimum(25.0 + 0.05 * (ts - t0 - 600), 115.0))
    temp = np.where(ts >= t0 + 2400, 30.0, temp)
    m = monitor()
    events = feed(m, [(t, {"cable_temperature.2": float(x), "cable_temperature.1": 25.0}) for t, x in zip(ts, temp)])
    # 85 °C at +600 + 1200 s = +1800; 105 °C at +600 + 1600 s = +2200
    assert brief(events) == [
        ("opened", "cable_temperature.2", "alarm", t0 + 1820),
        ("escalated", "cable_temperature.2", "critical", t0 + 2220),
        ("latched", "cable_temperature.2", "critical", t0 + 2460),
    ]
    assert len({e.alert_id for e in events}) == 1
    assert events[0].kind == events[1].kind == "cable_temperature"
    assert events[1].setting == 105.0 and events[1].crossed_at == t0 + 2200
    assert events[2].peak == 114.75  # last sample of the ramp, +2395


def test_device_alarm_flag_opens_at_once_and_needs_its_reset():
    t0 = DAY
    m = monitor()
    flag = [(t, {"residual_current": 150.0, "alarm_residual_current": 1.0 if t0 + 50 <= t < t0 + 500 else 0.0})
            for t in grid(t0, 800)]
    events = feed(m, flag[:40])  # up to +200
    events += m.acknowledge(t0 + 200, "desk", device=DEV, hazard="residual_current")
    events += feed(m, flag[40:])
    # opened at the flag's first poll; acknowledged; resolved when the device's latched flag
    # is reset on site (+500)
    assert brief(events) == [
        ("opened", "residual_current", "alarm", t0 + 50),
        ("acknowledged", "residual_current", "alarm", t0 + 200),
        ("resolved", "residual_current", "alarm", t0 + 500),
    ]
    assert events[0].rule == "device_flag"


def test_device_settings_are_followed_and_explicit_settings_win():
    t0 = DAY
    samples = [(t, {"residual_current": 450.0 if t >= t0 + 100 else 150.0, "residual_current_setting": 500.0})
               for t in grid(t0, 600)]
    assert feed(monitor(), samples) == []  # the device is set to 500 mA
    events = feed(monitor(residual_setting_ma=400.0), samples)
    assert brief(events) == [("opened", "residual_current", "alarm", t0 + 120)]
    assert events[0].setting == 400.0


# -- rising leakage ---------------------------------------------------------------------------------


def ramp(t_ramp, k_ma_per_s, base=150.0):
    return lambda t: base + max(0.0, t - t_ramp) * k_ma_per_s


def test_rising_leakage_warning_then_residual_alarm_escalates():
    """Leakage climbing 200 mA/h (an outdoor lead in rain) since 40 min before a night
    charging session starts at 22:00 local: the warning opens 60 s into the session
    (sustain), the same alert escalates when 300 mA has held 20 s."""
    tc = NIGHT
    f = ramp(tc - 2400, 1 / 18)  # 200 mA/h; 300 mA at tc + 300
    samples = [(t, {"residual_current": f(t)}) for t in grid(tc - 3000, 3700)]
    events = feed(monitor(), samples, charging=lambda t: t >= tc)
    assert brief(events)[:2] == [
        ("opened", "residual_current", "warning", tc + 60),
        ("escalated", "residual_current", "alarm", tc + 320),
    ]
    assert events[0].rule == "rising_leakage" and "200 mA/h" in events[0].reason
    assert events[0].confidence == 0.7 and events[1].confidence == 1.0
    assert events[0].alert_id == events[1].alert_id


@pytest.mark.parametrize("case", ["day", "not_charging", "unknown_charging"])
def test_no_rising_leakage_warning_without_night_charging(case):
    t0 = DAY if case == "day" else NIGHT
    f = ramp(t0 - 2400, 1 / 18)
    charging = {"day": True, "not_charging": False, "unknown_charging": None}[case]
    events = feed(monitor(), [(t, {"residual_current": f(t)}) for t in grid(t0 - 3000, 3700)], charging=charging)
    # straight to the alarm: opened (not escalated) 20 s after 300 mA
    assert brief(events)[0] == ("opened", "residual_current", "alarm", t0 + 320)


def test_a_leakage_step_is_not_a_climb():
    """An appliance's filter capacitors switched in add leakage in one step, which alone
    would give a slope of 1.5 x 70 mA / 0.5 h = 210 mA/h over the window: steps are taken
    out of the series, so no warning; a climb after the step still counts."""
    tc = NIGHT
    for at in (300.0, 900.0, 1500.0):
        samples = [(t, {"residual_current": 150.0 + (70.0 if t >= tc + at else 0.0)}) for t in grid(tc - 2400, 4800)]
        assert feed(monitor(), samples, charging=True) == []
    # the outdoor lead plugged in (a 40 mA step) while it already climbs 200 mA/h since
    # tc - 2400 (from 100 mA, so 300 mA comes later): the warning as without the step
    f = ramp(tc - 2400, 1 / 18, base=100.0)
    samples = [(t, {"residual_current": f(t) + (40.0 if t >= tc - 900 else 0.0)}) for t in grid(tc - 3000, 3300)]
    assert brief(feed(monitor(), samples, charging=lambda t: t >= tc))[0] == ("opened", "residual_current", "warning", tc + 60)


def test_rising_warning_clears_after_charging_ends_and_resolves_unlatched():
    tc = NIGHT
    f = ramp(tc - 2400, 1 / 36)  # 100 mA/h: 250 mA at tc + 1200, never 300 before the end
    end = tc + 1200
    samples = [(t, {"residual_current": f(min(t, end))}) for t in grid(tc - 3000, 5000)]
    events = feed(monitor(), samples, charging=lambda t: tc <= t < end)
    # warning at tc + 60; charging ends at tc + 1200: not holding from then, cleared 600 s
    # later and resolved at once (a warning does not latch)
    assert brief(events) == [
        ("opened", "residual_current", "warning", tc + 60),
        ("resolved", "residual_current", "warning", end + 600),
    ]
    assert "charging ended" in events[1].reason and not events[1].latched


def test_rising_rule_directly_with_thin_window_does_nothing():
    r = RisingLeakageRule(RisingLeakageSettings(), tz="Asia/Shanghai")
    tc = NIGHT
    # 20 min of samples only (< 90 % of 30 min): no judgement, no warning
    assert [r.update(t, 150 + (t - tc) / 10, True) for t in grid(tc, 1200)] == [None] * 240
    assert r.slope_ma_per_h is None


# -- device offline, faults, overload ------------------------------------------------------------


def test_silent_device_goes_offline_at_the_exact_time_and_comes_back():
    t0 = DAY
    samples = [(t, None if t0 + 100 <= t < t0 + 400 else {"residual_current": 150.0}) for t in grid(t0, 600)]
    events = feed(monitor(), samples)
    # last good reading +95; failed polls from +100; 30 s without a reading at +125 (6th miss)
    assert brief(events) == [
        ("opened", "device_offline", "alarm", t0 + 125),
        ("resolved", "device_offline", "alarm", t0 + 400),
    ]
    assert events[0].kind == "device_offline" and events[0].crossed_at == t0 + 100 and events[0].value == 30.0
    assert "60 missed polls" in events[1].reason and events[1].end == t0 + 400


def test_offline_needs_both_misses_and_time():
    r = OfflineRule()
    t0 = DAY
    r.poll(t0, True)
    # backed-off attempts: 2 misses in 100 s are not enough, the 3rd is
    assert r.poll(t0 + 40, False) is None
    assert r.poll(t0 + 100, False) is None
    tr = r.poll(t0 + 160, False)
    assert tr is not None and (tr.kind, tr.t, tr.since) == ("raise", t0 + 160, t0 + 40)
    # 3 quick misses within 15 s are not enough either
    r2 = OfflineRule()
    r2.poll(t0, True)
    assert [r2.poll(t0 + i, False) for i in (5, 10, 15)] == [None, None, None]
    assert r2.poll(t0 + 30, False).kind == "raise"
    # a device that never answered counts from its first attempt
    r3 = OfflineRule()
    assert [r3.poll(t0 + i * 5, False) for i in range(7)][-1].t == t0 + 30


def test_pending_alarm_does_not_survive_a_silence():
    t0 = DAY
    samples = [(t, None if t0 + 110 <= t < t0 + 170 else {"residual_current": 320.0 if t >= t0 + 100 else 150.0})
               for t in grid(t0, 400)]
    events = feed(monitor(), samples)
    # pending from +100, silent +110..+165 (offline at +135), back at +170: the run restarts
    assert brief(events) == [
        ("opened", "device_offline", "alarm", t0 + 135),
        ("resolved", "device_offline", "alarm", t0 + 170),
        ("opened", "residual_current", "alarm", t0 + 190),
    ]


def test_device_fault_flags_escalate_and_resolve():
    t0 = DAY
    def values(t):
        return {"residual_current": 150.0,
                "fault_temperature_sensor.3": 1.0 if t0 + 100 <= t < t0 + 300 else 0.0,
                "fault_internal": 1.0 if t0 + 200 <= t < t0 + 250 else 0.0}
    events = feed(monitor(), [(t, values(t)) for t in grid(t0, 400)])
    assert brief(events) == [
        ("opened", "device_fault", "warning", t0 + 100),
        ("escalated", "device_fault", "alarm", t0 + 200),
        ("resolved", "device_fault", "alarm", t0 + 300),
    ]
    assert events[0].kind == "device_offline" and "fault_temperature_sensor.3" in events[0].reason


def test_overload_near_then_over_the_breaker_rating():
    m = HazardMonitor()
    m.add_device("meter-h05", household="h05", poll_period_s=10.0, overload=OverloadSettings(40.0))
    t0 = DAY
    def current(t):
        if t < t0 + 100:
            return 12.0
        if t < t0 + 1000:
            return 37.0  # >= 0.9 x 40 A = 36 A
        if t < t0 + 1200:
            return 46.0  # >= 1.13 x 40 A = 45.2 A
        return 10.0
    events = feed(m, [(t, {"current": current(t), "active_power": 100.0}) for t in grid(t0, 2000, 10.0)],
                  device="meter-h05")
    assert brief(events) == [
        ("opened", "overload", "warning", t0 + 700),      # 600 s after +100
        ("escalated", "overload", "alarm", t0 + 1060),    # 60 s after +1000
        ("resolved", "overload", "alarm", t0 + 1500),     # 300 s below the bands after +1200
    ]
    assert events[0].kind == "overload" and events[1].peak == 46.0 and events[1].setting == pytest.approx(45.2)


# -- events to AlertMsg, robustness -----------------------------------------------------------------


def test_events_make_valid_alert_messages():
    trace = fire_scenario(DAY, 48.0, seed=3)
    m = monitor()
    events = []
    for t in trace.times():
        t = float(t)
        if trace.is_silent(t):
            events += m.missed(DEV, t)
        else:
            events += m.observe(DEV, t, trace.reading(t), charging_active=trace.charging_at(t))
    kinds = {e.kind for e in events}
    assert kinds == {"residual_current", "cable_temperature", "device_offline"}
    for i, e in enumerate(events):
        assert e.kind in ALERT_KINDS and len(e.detail()) <= 500
        assert re.fullmatch(r"[A-Za-z0-9_.:-]{1,96}", f"gw1:{e.alert_id}")
        AlertMsg(msg_id=f"gw1:run:{i}", gateway="gw1", ts=e.t, alert_id=f"gw1:{e.alert_id}", kind=e.kind,
                 state=e.state, household=e.household, device=e.device, start=e.start, end=e.end,
                 confidence=e.confidence, detail=e.detail())
    # every truth hazard was alerted within the timing budget
    for h in trace.truth:
        if h.level == "alarm" and h.kind in ("residual_current", "cable_temperature"):
            opened = [e for e in events if e.hazard == h.hazard and e.severity == "alarm"
                      and e.action in ("opened", "escalated")]
            assert opened and opened[0].t == h.start + 20


def test_clock_stepped_back_does_not_break_the_engine():
    t0 = DAY
    m = monitor()
    samples = [(t, {"residual_current": 320.0}) for t in grid(t0, 15)] + \
              [(t, {"residual_current": 320.0}) for t in grid(t0 - 100, 60)]
    # the run restarts at the step back (t0 - 100): raise 20 s later
    assert brief(feed(m, samples)) == [("opened", "residual_current", "alarm", t0 - 80)]


def test_unknown_device_and_bad_ack():
    m = monitor()
    with pytest.raises(KeyError, match="add_device"):
        m.observe("nope", DAY, {})
    with pytest.raises(ValueError):
        m.add_device(DEV)
    assert m.acknowledge(DAY, "x", device=DEV, hazard="overload") == []


# -- over the real Modbus map -----------------------------------------------------------------------


def test_fire_detector_served_over_modbus_tcp():
    """Rain on an outdoor lead during a night charging session, and a silence, served by
    MeterServer over fire_detector.toml and read with ModbusTcpBus: the warning, the
    alarm 20 s after the first served sample at/above 300 mA (truth), and offline 30 s
    after the last reading."""
    charge = NIGHT - 3600  # 21:00 local
    sim = FireDetectorSim(DEV, household="h03", start=charge - 600, hours=2.0, seed=5)
    sim.rain_on_outdoor_lead(charge, charge + 7000, charge + 2400)
    silence = charge + 4500
    sim.silence(silence, silence + 60)
    trace = sim.build()
    alarm = next(h for h in trace.truth if h.hazard == "residual_current" and h.level == "alarm")
    assert alarm.scenario == "rain_on_outdoor_lead" and charge + 2400 < alarm.start < silence - 60

    clock = StepClock(trace.start)
    m = monitor()
    events, read_back = [], {}

    async def main():
        server = MeterServer({4: trace.values}, profile={4: "fire_detector"}, clock=clock)
        await server.start()
        spec = DeviceSpec(DEV, "fire_detector", device_id=4, timeout_s=0.05)
        try:
            async with ModbusTcpBus("127.0.0.1", server.port, clock=clock) as bus:
                for t in trace.times()[: int((silence + 120 - trace.start) / P)]:
                    clock.t = float(t)
                    server.set_fault(4, "silent" if trace.is_silent(clock.t) else None)
                    try:
                        reading = await bus.read(spec)
                    except DriverError:
                        events.extend(m.missed(DEV, clock.t))
                        continue
                    read_back[reading.t] = reading.values
                    events.extend(m.observe(DEV, reading.t, reading.values,
                                            charging_active=trace.charging_at(reading.t)))
        finally:
            await server.stop()

    asyncio.run(main())
    t_alarm = alarm.start
    assert all(values == trace.reading(t) for t, values in read_back.items())  # the wire is exact
    assert read_back[t_alarm]["residual_current"] >= 300.0 > read_back[t_alarm - P]["residual_current"]
    assert read_back[t_alarm]["residual_current_setting"] == 300.0
    got = brief(events)
    warning = got[0]
    assert warning[:3] == ("opened", "residual_current", "warning") and charge + 2400 < warning[3] < t_alarm
    assert got[1:] == [
        ("escalated", "residual_current", "alarm", t_alarm + 20),
        ("opened", "device_offline", "alarm", silence - P + 30),
        ("resolved", "device_offline", "alarm", silence + 60),
    ]
    assert t_alarm + 20 - alarm.model_start <= GB_ALARM_WITHIN_S + P
