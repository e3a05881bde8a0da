"""Batch scan (detectors.batch): the same sessions as the per-household core, with a
vectorised screen in front that must never drop a household whose session the core finds."""

from __future__ import annotations

import numpy as np
import pytest

from detectors import detect_sessions
from detectors.batch import scan_batch, screen
from simulators.loads import household_trace
from simulators.scenario import DEFAULT_START, demo_scenario

H = 3600.0


def _minute_array(sc):
    """The scenario's households as one (h, n) array of one-minute means (float32)."""
    rows = []
    for tr in sc.traces:
        k = int(round(60.0 / tr.step_s))
        m = tr.power_w.size // k
        rows.append(tr.power_w[: m * k].reshape(m, k).mean(axis=1))
    n = min(r.size for r in rows)
    return sc.start + 30.0 + 60.0 * np.arange(n), np.array([r[:n] for r in rows], dtype=np.float32)


@pytest.mark.parametrize("seed", range(1, 13))
def test_same_sessions_as_the_core_on_the_demo_scenario(seed):
    sc = demo_scenario(seed)
    t, p = _minute_array(sc)
    got = scan_batch(t, p, tz=sc.tz)
    want = [detect_sessions(t, p[i].astype(np.float64), tz=sc.tz) for i in range(p.shape[0])]
    assert got == want
    assert sum(map(len, want)) >= 2          # not vacuous: charging homes are found
    keep = screen(t, p)
    assert all(keep[i] for i, w in enumerate(want) if w)


def test_ten_second_data_is_binned_and_agrees():
    sc = demo_scenario(4, hours=36.0)
    tr = [x for x in sc.traces if x.step_s == 10.0]
    n = min(x.power_w.size for x in tr)
    p = np.array([x.power_w[:n] for x in tr])
    t = sc.start + 10.0 * np.arange(n)
    assert scan_batch(t, p, tz=sc.tz) == [detect_sessions(t, row, tz=sc.tz) for row in p]


def test_screen_dismisses_steady_load_and_keeps_a_charging_home():
    trace, truth = household_trace("q1", DEFAULT_START, 36, 1, step_s=60.0, appliances={"standby", "fridge"},
                                   sessions=[(DEFAULT_START + 10 * H, "lithium")])
    n = trace.power_w.size
    t = DEFAULT_START + 60.0 * np.arange(n)
    rng = np.random.default_rng(0)
    flat = 60.0 + rng.normal(0.0, 2.0, n)                      # standby with meter noise
    steps_only = np.where((np.arange(n) // 90) % 2, 260.0, 60.0) + rng.normal(0.0, 2.0, n)  # on/off blocks
    p = np.array([flat, steps_only, trace.power_w])
    assert screen(t, p).tolist() == [False, False, True]
    got = scan_batch(t, p)
    assert [len(x) for x in got] == [0, 0, 1]
    assert abs(got[2][0].start - truth[0].start) <= 120


def test_screen_dismisses_quiet_homes_with_a_fridge_and_keeps_their_charging_twins():
    """A week of standby and fridge cycles (the compressor's sagging runs fall like small
    tapers, so the taper test alone kept 98 % of such homes): the lasting load never falls
    gradually, so they are dismissed; the same homes with one session are kept, and the
    scan finds it as the core does."""
    quiet, charging = [], []
    for seed in range(1, 9):
        kw = dict(step_s=60.0, appliances={"standby", "fridge"})
        quiet.append(household_trace(f"q{seed}", DEFAULT_START, 7 * 24, seed, **kw)[0].power_w)
        charging.append(household_trace(f"q{seed}", DEFAULT_START, 7 * 24, seed, **kw,
                                        sessions=[(DEFAULT_START + (34 + seed) * H, "lead_acid")])[0].power_w)
    p = np.array(quiet + charging)
    t = DEFAULT_START + 60.0 * np.arange(p.shape[1])
    assert screen(t, p).tolist() == [False] * 8 + [True] * 8
    got = scan_batch(t, p)
    assert got == [detect_sessions(t, row) for row in p]
    assert [len(x) for x in got] == [0] * 8 + [1] * 8


def test_coarse_data_is_not_screened_and_bad_shapes_are_named():
    t = DEFAULT_START + 900.0 * np.arange(100)
    assert screen(t, np.zeros((3, 100))).tolist() == [True, True, True]
    with pytest.raises(ValueError, match=r"shape \(h, n\)"):
        screen(t, np.zeros(100))
    with pytest.raises(ValueError, match="strictly increasing"):
        screen(t[::-1].copy(), np.zeros((1, 100)))
