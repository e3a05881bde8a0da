"""Load models, the UCI replay and the demo scenario."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from simulators.loads import household_trace, inject_sessions, lead_acid_session, lithium_session
from simulators.replay import parse_uci, uci_trace
from simulators.scenario import DEFAULT_START, demo_scenario, look_alike_switch_ons

SHANGHAI = ZoneInfo("Asia/Shanghai")
H = 3600.0


def _kwh(p: np.ndarray, step_s: float) -> float:
    return float(p.sum() * step_s / 3.6e6)


def test_household_trace_is_deterministic_per_seed():
    a, ta = household_trace("h01", DEFAULT_START, 24, 7, sessions=[(DEFAULT_START + 9 * H, "lead_acid")])
    b, tb = household_trace("h01", DEFAULT_START, 24, 7, sessions=[(DEFAULT_START + 9 * H, "lead_acid")])
    c, _ = household_trace("h01", DEFAULT_START, 24, 8)
    assert np.array_equal(a.power_w, b.power_w) and ta == tb
    assert not np.array_equal(a.power_w, c.power_w)


def test_household_power_finite_non_negative_and_truth_from_injected_charger():
    sessions = [(DEFAULT_START + 9 * H, "lead_acid")]
    with_charge, truth = household_trace("h02", DEFAULT_START, 36, 3, sessions=sessions)
    without, none = household_trace("h02", DEFAULT_START, 36, 3)
    assert none == [] and len(truth) == 1
    assert np.all(np.isfinite(with_charge.power_w)) and with_charge.power_w.min() >= 0
    charger = with_charge.power_w - without.power_w
    assert truth[0].energy_kwh == pytest.approx(_kwh(charger, 10.0), rel=1e-9)
    assert truth[0].peak_w == pytest.approx(charger.max(), rel=1e-9)
    assert truth[0].start == DEFAULT_START + 9 * H and truth[0].end > truth[0].start + 5 * H


@pytest.mark.parametrize("seed", range(5))
def test_lead_acid_48v_session_energy_and_stages(seed):
    p = lead_acid_session(8 * H, 10.0, np.random.default_rng(seed), stage1_w=130.0, float_s=1.5 * H)
    assert 0.5 <= _kwh(p, 10.0) <= 1.2
    assert p.min() >= 0 and 120 <= np.median(p[: 360]) <= 145  # stage 1 plateau
    assert 5 <= np.median(p[-300:]) <= 15  # float (section 2: a few watts)


@pytest.mark.parametrize("seed", range(5))
def test_lithium_session_energy_and_zero_after_full(seed):
    p = lithium_session(4 * H, 10.0, np.random.default_rng(seed), cc_w=185.0, taper_s=H)
    assert 0.2 <= _kwh(p, 10.0) <= 1.5
    assert p[:100].max() < 200 and p[-1] < 0.08 * 185  # tapered to the cutoff
    assert p.min() >= 0


def test_charger_models_reject_bad_arguments():
    with pytest.raises(ValueError):
        lead_acid_session(0, 10, np.random.default_rng(0))
    with pytest.raises(ValueError):
        lithium_session(3600, 10, np.random.default_rng(0), cutoff=1.5)
    with pytest.raises(ValueError, match="unknown charger profile"):
        household_trace("h01", DEFAULT_START, 2, 1, sessions=[(DEFAULT_START, "nickel")])


def test_inject_sessions_on_a_60s_replay():
    trace = uci_trace("h08", DEFAULT_START, 24)
    out, truth = inject_sessions(trace, [(DEFAULT_START + 10 * H, "lithium")], seed=4)
    assert out.step_s == 60 and out.voltage_v is not None
    added = out.power_w - trace.power_w
    assert truth[0].energy_kwh == pytest.approx(_kwh(added, 60.0))
    assert 0.2 <= truth[0].energy_kwh <= 1.5


def test_replay_first_sample_is_the_file_first_reading():
    start = datetime(2026, 11, 27, 17, 24, tzinfo=SHANGHAI).timestamp()
    trace = uci_trace("h08", start, 2)
    assert trace.power_w[0] == pytest.approx(4216.0)
    assert trace.voltage_v[0] == pytest.approx(234.84)
    assert trace.step_s == 60 and trace.power_w.size == 120


def test_replay_maps_local_time_of_day():
    # 17/12/2006 03:00:00 reads 2.542 kW in the file; local 03:00 in Shanghai gets it
    start = datetime(2026, 11, 28, 3, 0, tzinfo=SHANGHAI).timestamp()
    assert uci_trace("h08", start, 1).power_w[0] == pytest.approx(2542.0)


def test_replay_wraps_past_the_end_of_the_file():
    trace = uci_trace("h08", DEFAULT_START, 120)  # 5 days > 4.3 days of data
    assert trace.power_w.size == 7200 and np.all(np.isfinite(trace.power_w))


def test_parse_uci_holds_missing_readings():
    text = [
        "Date;Time;Global_active_power;Global_reactive_power;Voltage;Global_intensity;a;b;c",
        "16/12/2006;23:58:00;1.000;0.1;240.0;4;0;0;0",
        "16/12/2006;23:59:00;?;?;?;?;?;?;?",
        "17/12/2006;00:01:00;2.000;0.1;241.0;8;0;0;0",  # 00:00 missing entirely
    ]
    minute, power, volts = parse_uci(text)
    assert minute.tolist() == [1438, 1439, 0, 1]
    assert power.tolist() == [1000.0, 1000.0, 1000.0, 2000.0]
    assert volts.tolist() == [240.0, 240.0, 240.0, 241.0]
    with pytest.raises(ValueError, match="line 2"):
        parse_uci(["header", "bad;row"])


def test_demo_scenario_shape_and_truth():
    sc = demo_scenario(seed=1)
    assert [t.household for t in sc.traces] == [f"h{i:02d}" for i in range(1, 9)]
    assert sc.end - sc.start == 48 * H
    assert all(s.household != "h08" for s in sc.truth)
    assert all(sc.start <= s.start and s.end < sc.end for s in sc.truth)
    nights = {(s.household, datetime.fromtimestamp(s.start - 12 * H, SHANGHAI).date()) for s in sc.truth}
    assert len({h for h, _ in nights}) >= 3 and len({d for _, d in nights}) == 2
    for s in sc.truth:
        hour = datetime.fromtimestamp(s.start, SHANGHAI).hour
        assert 19 <= hour <= 23
    assert len(sc.truth) == 5


def test_look_alike_switch_ons_from_the_appliance_models():
    """Seed 7: h02's first charger (lead-acid) has a TV of 120 W
    switching on 2 h before it; h06's (19:13) a 128 W lamp 59 min before and a 101 W lamp 12.3
    min after, the second inside the 30-min match and so not counted by default."""
    found = look_alike_switch_ons(7)
    assert [x.household for x, _ in found] == ["h02", "h02", "h05", "h06", "h07"]
    (h02, first), (_, second), (_, h05), (h06, lamps), (_, h07) = found
    assert second == h05 == h07 == []
    ((t, app, w),) = first
    assert (round((t - h02.start) / 60, 1), app, round(w, 1)) == (-119.8, "tv", 120.5)
    ((t, app, w),) = lamps
    assert (round((t - h06.start) / 60, 1), app, round(w, 1)) == (-58.7, "lighting", 128.4)
    near = look_alike_switch_ons(7, window_s=(0.0, 7200.0))[3][1]
    assert [(round((t - h06.start) / 60, 1), round(w, 1)) for t, _, w in near] == [(-58.7, 128.4), (12.3, 100.7)]
    with pytest.raises(ValueError, match="window_s"):
        look_alike_switch_ons(7, window_s=(3600.0, 1800.0))
