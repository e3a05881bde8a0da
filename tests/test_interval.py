"""The 15-minute interval-energy detector and the interval resampler.

Concrete expectations: quiet homes (standby and fridge) give their session with the start
inside a quarter-hour; the real UCI household gives nothing; gaps and missing intervals
neither crash nor create sessions; bad input is named.  The demo corpus is held to the
figures measured when the detector was written (a regression floor, printed), not to the
issue's targets (precision >= 0.90, recall >= 0.85), which it does not meet: see
docs/interval.md and bench/bench_interval.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from detectors.evaluate import match_sessions
from detectors.interval import IntervalSettings, detect_interval_sessions, opening
from simulators.replay import uci_trace
from simulators.sampling import interval_energy
from simulators.scenario import DEFAULT_START, demo_scenario
from tests.households import quiet_home
from simulators.trace import LoadTrace

H = 3600.0


@dataclass(frozen=True)
class Found:
    household: str
    start: float
    end: float


# -- the resampler ----------------------------------------------------------------------------


def test_interval_energy_is_exact_and_aligned_to_the_local_quarter_hour():
    # 400 W for 1 h then 0 W, 10 s samples, starting 7 min past a quarter-hour
    start = DEFAULT_START + 7 * 60
    p = np.r_[np.full(360, 400.0), np.zeros(360)]
    t, e = interval_energy(LoadTrace("x", start, 10.0, p))
    # first whole interval: [DEFAULT_START + 15 min, + 30 min]; the partial one is dropped
    assert t[0] == DEFAULT_START + 30 * 60
    assert np.all(np.diff(t) == 900.0)
    assert t.size == 7  # 2 h trace from :07 -> 7 whole quarter-hours
    # 400 W x 900 s = 0.1 kWh; the interval holding the switch-off at :07 has 7/15 of it
    assert e[:3] == pytest.approx([0.1, 0.1, 0.1])
    assert e[3] == pytest.approx(0.1 * 7 / 15)
    assert e[4:] == pytest.approx([0.0, 0.0, 0.0])


def test_interval_energy_zone_offset_of_a_quarter_hour():
    # Nepal is UTC+5:45: local quarter-hours are UTC quarter-hours too, Asia/Kolkata (+5:30)
    # also; a 20-minute grid shows the alignment is local
    trace = LoadTrace("x", DEFAULT_START, 60.0, np.full(180, 120.0))
    t, _ = interval_energy(trace, 1200.0, tz="Asia/Kathmandu")
    assert ((t + 5.75 * H) % 1200.0 == 0).all()
    with pytest.raises(ValueError, match="interval_s"):
        interval_energy(trace, 0.0)


# -- the detector -----------------------------------------------------------------------------


@pytest.mark.parametrize(("profile", "seed"), [("lead_acid", 2), ("lead_acid", 6), ("lithium", 2), ("lithium", 4)])
def test_quiet_home_session_within_a_quarter_hour(profile, seed):
    trace, (true,) = quiet_home(profile, seed)
    t, e = interval_energy(trace)
    (s,) = detect_interval_sessions(t, e)
    assert abs(s.start - true.start) <= 15 * 60
    assert s.start < true.end and true.start < s.end
    assert s.energy_kwh == pytest.approx(true.energy_kwh, rel=0.2)
    assert s.peak_w == pytest.approx(true.peak_w, rel=0.2)
    assert s.profile == "unknown"
    assert 0.25 <= s.confidence <= 1.0
    assert s.evidence["night_share"] > 0.5


def test_switch_on_is_placed_inside_its_interval():
    """A 150 W step 6 minutes into a quarter-hour: the interval's energy places it."""
    t = DEFAULT_START + 900.0 * np.arange(1, 97)
    p = np.full(96, 60.0)
    k = 40  # interval ending at t[k] holds the switch-on, 9 of its 15 minutes charging
    p[k] += 150.0 * 9 / 15
    p[k + 1 : k + 29] += 150.0 * np.linspace(1.0, 1.06, 28)
    p[k + 29 : k + 33] += 150.0 * np.array([0.6, 0.35, 0.15, 0.05])
    (s,) = detect_interval_sessions(t, p * 900.0 / 3.6e6)
    assert s.start == pytest.approx(t[k] - 9 * 60, abs=30)
    assert s.evidence["start_fraction"] == pytest.approx(0.6, abs=0.02)


def test_no_session_on_the_real_household():
    t, e = interval_energy(uci_trace("h08", DEFAULT_START, 48))
    assert detect_interval_sessions(t, e) == []


def test_gaps_and_missing_intervals_do_not_crash_or_create_sessions():
    t, e = interval_energy(uci_trace("h08", DEFAULT_START, 48))
    rng = np.random.default_rng(0)
    e_nan = e.copy()
    e_nan[rng.random(e.size) < 0.1] = np.nan          # 10 % missing, scattered
    e_nan[60:75] = np.nan                              # a long gap
    assert detect_interval_sessions(t, e_nan) == []
    keep = rng.random(t.size) >= 0.1                   # rows missing altogether
    assert detect_interval_sessions(t[keep], e[keep]) == []
    assert detect_interval_sessions(t, np.full(t.size, np.nan)) == []
    assert detect_interval_sessions(np.empty(0), np.empty(0)) == []
    assert detect_interval_sessions(t[:3], e[:3]) == []
    # a quiet home's session survives scattered single missing intervals
    trace, (true,) = quiet_home("lead_acid", 2)
    t, e = interval_energy(trace)
    e = e.copy()
    e[::9] = np.nan
    (s,) = detect_interval_sessions(t, e)
    assert abs(s.start - true.start) <= 30 * 60


def test_stray_interval_decades_away_is_gridded_apart():
    """A 1970 and a 2100 interval in a meter's export: the same session, and the pieces the
    detector grids hold the ~200 intervals, not the 130 years between them (4.5 million
    quarter-hours)."""
    from detectors.interval import _pieces

    trace, (true,) = quiet_home("lithium", 2)
    t, e = interval_energy(trace)
    (clean,) = detect_interval_sessions(t, e)
    ts, es = np.r_[900.0, t, 4102444800.0], np.r_[0.001, e, 0.001]
    assert detect_interval_sessions(ts, es) == [clean]
    import tracemalloc

    tracemalloc.start()
    try:
        pieces = _pieces(ts, es * 3.6e6 / 900.0, 900.0, 2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [len(tp) for tp, _ in pieces] == [1, t.size, 1]
    assert peak < 1_000_000  # bytes: a grid over the 130 years alone would be 36 MB


def test_bad_input_is_named():
    t = DEFAULT_START + 900.0 * np.arange(1, 11)
    e = np.full(10, 0.05)
    with pytest.raises(ValueError, match="same shape"):
        detect_interval_sessions(t, e[:9])
    with pytest.raises(ValueError, match="strictly increasing"):
        detect_interval_sessions(t[::-1].copy(), e)
    with pytest.raises(ValueError, match="strictly increasing"):
        detect_interval_sessions(np.r_[t[:5], t[4:9]], e)
    with pytest.raises(ValueError, match="negative"):
        detect_interval_sessions(t, np.r_[e[:9], -0.01])
    with pytest.raises(ValueError, match="t_end has NaN"):
        detect_interval_sessions(np.r_[t[:9], np.nan], e)
    with pytest.raises(ValueError, match="energy_kwh has inf"):
        detect_interval_sessions(t, np.r_[e[:9], np.inf])
    with pytest.raises(ValueError, match="interval_s"):
        detect_interval_sessions(t, e, interval_s=-900.0)
    with pytest.raises(ValueError, match="less than interval_s"):
        detect_interval_sessions(np.r_[t[:5], t[5] - 850.0, t[6:]], e)
    with pytest.raises(ValueError, match="weights"):
        IntervalSettings(weights=(1.0,))


def test_opening_removes_short_peaks_and_keeps_plateaus():
    x = np.r_[np.zeros(5), 100.0, 100.0, np.zeros(5), np.full(6, 150.0), np.zeros(4)]
    o = opening(x, 4)
    assert o[5:7].tolist() == [0.0, 0.0]                 # a 30-min fridge run is gone
    assert o[12:18].tolist() == [150.0] * 6              # a 90-min plateau stays
    ramp = np.linspace(200.0, 0.0, 9)
    assert opening(ramp, 4) == pytest.approx(ramp)       # a taper is kept exactly


def test_demo_corpus_regression_floor():
    """Seeds 1-6 of the demo scenario at 15-minute interval energy.  Measured when written:
    tp 10, fp 12, fn 20 (precision 0.455, recall 0.333); the issue's target is precision
    0.90, recall 0.85 (not met; the full figures are in docs/interval.md)."""
    found, truth, h08 = [], [], 0
    for seed in range(1, 7):
        sc = demo_scenario(seed)
        for tr in sc.traces:
            t, e = interval_energy(tr, tz=sc.tz)
            got = detect_interval_sessions(t, e, tz=sc.tz)
            found += [Found(tr.household, s.start, s.end) for s in got]
            h08 += len(got) if tr.household == "h08" else 0
        truth += sc.truth
    m = match_sessions(found, truth)
    print(f"interval detector, seeds 1-6: precision {m.precision:.3f} recall {m.recall:.3f} "
          f"F1 {m.f1:.3f} (tp {m.tp} fp {m.fp} fn {m.fn})")
    assert h08 == 0
    assert m.tp >= 10
    assert m.fp <= 12
    assert m.precision >= 0.45 and m.recall >= 0.33
