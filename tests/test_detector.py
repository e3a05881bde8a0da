"""The charging-session detector on simulated and real load.

Concrete expectations: quiet homes (standby and fridge) give the session to the minute;
look-alike households and the real UCI household give nothing; the busy simulated corpus
is held to the figures measured when the detector was last changed (a regression floor,
printed so that it is visible), not to the issue's targets, which it does not yet meet.
The building blocks (minute bins placed between the polls, edges measured on a taper, the
exponential fit, a switch-on merged with a lamp) are checked on small synthetic signals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from detectors import DetectorSettings, StreamingDetector, detect_sessions, match_sessions
from detectors import steps, switch_on
from detectors.taper import falling_runs, find_tapers, fit_exponential, fit_ramp
from simulators.loads import household_trace
from simulators.polling import poll
from simulators.scenario import DEFAULT_START, demo_scenario
from tests.households import quiet_home

H = 3600.0


@dataclass
class Found:
    household: str
    start: float
    end: float
    energy_kwh: float


def test_bad_input_is_named():
    t = np.arange(10.0) * 60
    with pytest.raises(ValueError, match="same shape"):
        detect_sessions(t, np.zeros(9))
    with pytest.raises(ValueError, match="strictly increasing"):
        detect_sessions(t[::-1].copy(), np.zeros(10))
    with pytest.raises(ValueError, match="t has NaN"):
        detect_sessions(np.r_[t[:9], np.nan], np.zeros(10))
    with pytest.raises(ValueError, match="p_w has inf"):
        detect_sessions(t, np.r_[np.zeros(9), np.inf])
    with pytest.raises(ValueError, match="min_step_w"):
        DetectorSettings(min_step_w=500.0)
    assert detect_sessions(t, np.full(10, np.nan)) == []


@pytest.mark.parametrize(("profile", "seed"), [("lead_acid", 4), ("lead_acid", 5), ("lithium", 1), ("lithium", 4)])
@pytest.mark.parametrize("period", [60.0, 10.0])
def test_quiet_home_session_to_the_minute(profile, seed, period):
    trace, truth = quiet_home(profile, seed)
    t, p = poll(trace, np.random.default_rng(0), period=period, jitter=0.0, drop=0.0)
    found = detect_sessions(t, p)
    assert len(found) == 1
    (s,), (true,) = found, truth
    assert abs(s.start - true.start) <= 120
    assert s.profile == profile
    assert s.energy_kwh == pytest.approx(true.energy_kwh, rel=0.2)
    assert s.peak_w == pytest.approx(true.peak_w, rel=0.15)
    assert 0.9 <= s.confidence <= 1.0


def test_stray_timestamps_decades_away_are_binned_apart():
    """A 1970-01-01 and a 2100-01-01 reading in a meter's export (a common glitch): the
    session is the same, and the readings are binned in three runs of their own, so the
    bins follow the ~2,900 readings, not the 130 years they span (which would be 68
    million one-minute bins)."""
    from detectors.charging import _runs

    trace, (true,) = quiet_home("lithium", 2)
    t, p = poll(trace, np.random.default_rng(0), jitter=0.0, drop=0.0)
    (clean,) = detect_sessions(t, p)
    ts, ps = np.r_[0.0, t, 4102444800.0], np.r_[5.0, p, 5.0]
    assert detect_sessions(ts, ps) == [clean]
    s = DetectorSettings()
    runs = _runs(ts, s, 0.0)
    assert runs == [(0, 1), (1, t.size + 1), (t.size + 1, t.size + 2)]
    assert sum(steps.to_grid(ts[a:b], ps[a:b], 60.0, 15, 0.0)[1].size for a, b in runs) <= t.size + 2


def test_quiet_home_lead_acid_60w_stage_is_followed_to_float():
    """Stage 2 at 45-65 W (domain-facts §2: ~60 W, which NILMTK's 70 W edge threshold
    misses) is followed to the float step: the session ends at the float's end, not at the
    taper."""
    trace, (true,) = quiet_home("lead_acid", 4)
    t, p = poll(trace, np.random.default_rng(0), jitter=0.0, drop=0.0)
    (s,) = detect_sessions(t, p)
    assert s.evidence["stage2_end_seen"] == 1.0
    # level minus the smooth fall: stage 2 plus the unfinished end of the exponential
    assert 25.0 <= s.evidence["stage2_w"] <= 95.0
    assert abs(s.end - true.end) <= 1800


def test_look_alike_households_give_nothing():
    """Fridge, lighting, TV, cooking and water heater, no charger."""
    for seed in (1, 2, 3):
        trace, truth = household_trace(
            "neg", DEFAULT_START, 48, seed,
            appliances={"standby", "fridge", "lighting", "tv", "cooking", "water_heater"})
        t, p = poll(trace, np.random.default_rng(seed))
        assert truth == [] and detect_sessions(t, p) == []


def test_no_session_on_the_real_household():
    """The UCI household (no e-bike), under 20 different poll jitters."""
    sc = demo_scenario(seed=1)
    trace = next(t for t in sc.traces if t.household == "h08")
    for seed in range(20):
        t, p = poll(trace, np.random.default_rng(seed))
        assert detect_sessions(t, p, tz=sc.tz) == []


def test_no_session_on_the_whole_real_file():
    """The whole bundled UCI file (4.3 days) under the 20 poll draws of ``flylead evaluate``'s
    uci-neg corpus: no alert.  Before the look-elsewhere correction, draw u19 raised one
    (17 Dec 21:09 local, 0.25 kWh, confidence 0.63, 47 matching switch-on candidates)."""
    from simulators.corpora import uci_corpus

    corpus = uci_corpus(20, seed=1, inject=False)
    assert len(corpus.series) == 20
    found = {s.household: detect_sessions(s.t, s.values) for s in corpus.series}
    assert all(v == [] for v in found.values()), {k: len(v) for k, v in found.items() if v}


def test_look_elsewhere_lowers_confidence_of_a_busy_match():
    """Same taper, same night: against 8 matching candidates (the reference), 47 cost
    log(47/8) = 1.77 of score, and a single one gains 0.6 x log 8 = 1.25."""
    from detectors.charging import _confidence
    from detectors.taper import Taper

    s = DetectorSettings()
    tp = Taper(i0=100, i1=130, tau_bins=23.07, amp_w=104.1, fall_w=100.0, share=0.034, rmse_w=5.33, ramp_rmse_w=7.68)
    logit = lambda c: math.log(c / (1 - c))  # noqa: E731
    ref = logit(_confidence(tp, 1.0, s, candidates=8))
    assert ref - logit(_confidence(tp, 1.0, s, candidates=47)) == pytest.approx(math.log(47 / 8))
    assert logit(_confidence(tp, 1.0, s, candidates=1)) - ref == pytest.approx(0.6 * math.log(8))
    assert logit(_confidence(tp, 1.0, s, candidates=0)) == pytest.approx(logit(_confidence(tp, 1.0, s, candidates=1)))


def test_streaming_state_is_bounded_and_ignores_bad_samples():
    trace, _ = household_trace("b1", DEFAULT_START, 72, 5, step_s=60.0,
                               sessions=[(DEFAULT_START + 9 * H, "lead_acid")])
    det = StreamingDetector()
    bound = det.settings.bins(det.settings.buffer_s)
    assert bound == 1440
    for t, p in zip(trace.start + np.arange(trace.power_w.size) * 60.0 + 30.0, trace.power_w):
        det.update(float(t), float(p))
        assert det.buffer_len <= bound
    assert det.buffer_len == bound
    assert det.update(trace.start, 100.0) == []  # time going backwards: ignored
    assert det.update(trace.end + 10.0, math.nan) == []  # failed read: ignored
    assert det._ring.nbytes <= 64 * 1024  # the state budget
    with pytest.raises(ValueError, match="finite"):
        det.update(math.nan, 1.0)


def test_streaming_matches_batch_and_reports_once():
    trace, (true,) = quiet_home("lithium", 4)
    t, p = poll(trace, np.random.default_rng(3))
    batch = detect_sessions(t, p)
    det = StreamingDetector()
    reported, seen_active = [], False
    for a, b in zip(t, p):
        reported += det.update(float(a), float(b))
        seen_active |= det.active is not None
    reported += det.flush()
    assert det.flush() == []
    assert [round(s.start) for s in reported] == [round(s.start) for s in batch]
    assert len(reported) == 1 and abs(reported[0].start - true.start) <= 120
    assert seen_active  # the open alert is raised while the session still runs


def test_busy_corpus_regression_floor(capsys):
    """Seeds 1..6 of the demo scenario (5 sessions each, charging in busy evenings), batch,
    60 s polls with jitter and 1 % loss, three poll draws each (as ``flylead evaluate``:
    ``default_rng(seed)``, then ``default_rng([seed, d])``; one draw alone moves F1 by about
    0.05).  Measured when written (29 Nov 2026: median level at the taper's top, the plateau
    prior, the few-candidates bonus, the short-pulse cost): tp=58 fp=17 fn=32 (precision
    0.77, recall 0.64); seeds 1-20 x 5 draws precision 0.82, recall 0.71, F1 0.76; seeds
    21-40 x 5, not used for tuning, F1 0.76 (``flylead evaluate --corpus sim``).  The floor below guards against
    regressions, not the issue's target (F1 >= 0.95), which the switch-on in busy evenings still misses."""
    tp = fp = fn = 0
    for seed in range(1, 7):
        sc = demo_scenario(seed=seed)
        for draw in range(3):
            rng = np.random.default_rng(seed if draw == 0 else [seed, draw])
            found = []
            for trace in sc.traces:
                t, p = poll(trace, rng)
                found += [Found(trace.household, s.start, s.end, s.energy_kwh)
                          for s in detect_sessions(t, p, tz=sc.tz)]
            m = match_sessions(found, sc.truth)
            tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
            assert all(f.household != "h08" for f in found)
    with capsys.disabled():
        print(f"\nbusy corpus seeds 1-6 x 3 poll draws: tp={tp} fp={fp} fn={fn}")
    assert tp >= 54
    assert tp / (tp + fp) >= 0.77


def _polled(seed: int, draw: int, household: str) -> tuple[np.ndarray, np.ndarray, list]:
    """One household of ``demo_scenario(seed)`` under poll draw ``draw`` (evaluate's draws:
    one generator shared by the households in order) and its true sessions."""
    sc = demo_scenario(seed=seed)
    rng = np.random.default_rng(seed if draw == 0 else [seed, draw])
    for trace in sc.traces:
        t, p = poll(trace, rng)
        if trace.household == household:
            return t, p, [s for s in sc.truth if s.household == household]
    raise AssertionError(household)


def _score(t, p, truth, settings: DetectorSettings) -> tuple[int, int]:
    found = [Found(truth[0].household, s.start, s.end, s.energy_kwh)
             for s in detect_sessions(t, p, settings, tz="Asia/Shanghai")]
    m = match_sessions(found, truth)
    return m.tp, m.fp


def test_level_at_the_taper_top_is_the_median_of_its_last_20_min():
    """Seed 7, draw 2, h06: one bin at the taper's onset reads the charger's level wrong and
    the session starts at the wrong step (tp 0, fp 1); the 20-minute median finds it."""
    t, p, truth = _polled(7, 2, "h06")
    assert _score(t, p, truth, DetectorSettings()) == (1, 0)
    assert _score(t, p, truth, DetectorSettings(level_window_s=0.0)) == (0, 1)


def test_of_two_equally_fitting_switch_ons_the_later_is_taken():
    """Seed 2, draw 1, h02: both sessions found with the plateau prior; without it one starts
    at an earlier lamp of the same size (tp 1, fp 1)."""
    t, p, truth = _polled(2, 1, "h02")
    assert _score(t, p, truth, DetectorSettings()) == (2, 0)
    assert _score(t, p, truth, DetectorSettings(plateau_cost_per_h=0.0)) == (1, 1)


def test_a_fridge_run_the_pairing_missed_is_not_the_switch_on():
    """Seed 1 (the demo's), draw 0, h06: the charger switched on at 19:16 over cooking and
    lights; a fridge run the pulse pairing missed (its steps read off next to the TV) fits
    the expected step better and would start the session (tp 0, fp 1).  Its cost as a
    short pulse leaves the charger's own step."""
    t, p, truth = _polled(1, 0, "h06")
    assert _score(t, p, truth, DetectorSettings()) == (1, 0)
    assert _score(t, p, truth, DetectorSettings(pulse_cost=0.0)) == (0, 1)


def test_short_pulse_needs_the_height_and_the_run():
    """A 100 W up-step 20 bins before a -90 W down-step is a run of a 95 W fridge; not when
    the household's pulse is 150 W, nor when the down-step comes 60 bins later (longer than
    a run) or takes back only half of it."""
    run = [steps.Edge(100, 100, 100.0), steps.Edge(120, 120, -90.0)]
    assert switch_on.short_pulse(run, 100, 100.0, 95.0, 5, 35, 0.25, 0.55)
    assert not switch_on.short_pulse(run, 100, 100.0, 150.0, 5, 35, 0.25, 0.55)
    late = [steps.Edge(100, 100, 100.0), steps.Edge(160, 160, -90.0)]
    assert not switch_on.short_pulse(late, 100, 100.0, 95.0, 5, 35, 0.25, 0.55)
    half = [steps.Edge(100, 100, 100.0), steps.Edge(120, 120, -50.0)]
    assert not switch_on.short_pulse(half, 100, 100.0, 95.0, 5, 35, 0.25, 0.55)


def test_rank_switch_ons_costs_plateau_hours():
    """Two up-steps of the same size (z = 0 each), 3 h and 1 h before the taper's onset at
    bin 300: without the prior they tie; at 0.6 per hour the later one costs 1.2 less."""
    edges = [steps.Edge(120, 121, 150.0), steps.Edge(240, 241, 150.0)]
    exp = switch_on.Expectation("lithium", 150.0, 10.0, 156.0)
    kw = dict(grid_s=60.0, taper_wh=50.0, tail_wh={"lithium": 0.0, "lead_acid": 0.0}, max_z=3.0,
              merged_factor=1.4, merged_max_w=650.0, pairing_bins=360, pair_match=(0.15, 10.0),
              energy_soft_kwh=5.0, energy_width_kwh=0.5, used=set())
    flat = switch_on.rank_switch_ons(edges, 0, 280, 300, [exp], **kw)
    assert [c.score for c in flat] == [0.0, 0.0]
    ranked = switch_on.rank_switch_ons(edges, 0, 280, 300, [exp], plateau_cost_per_h=0.6, **kw)
    assert [c.k for c in ranked] == [240, 120]
    assert [round(c.score, 9) for c in ranked] == [0.6, 1.8]


# ----------------------------------------------------------------------------- building blocks


def test_bins_are_placed_between_the_polls():
    """Polls on the minute with +-5 s jitter: each lands alone in its bin (bins edged on the
    minute would hold two readings, then none, smearing every switch over two bins)."""
    rng = np.random.default_rng(1)
    t = 1_800_000_000.0 + np.arange(600) * 60.0 + rng.uniform(-5, 5, 600)
    p = np.where(np.arange(600) < 300, 100.0, 250.0)
    s = DetectorSettings()
    t0, x = steps.to_grid(t, p, s.grid_s, s.bins(s.max_gap_s))
    assert x.size == 600
    assert np.array_equal(x, p)  # one reading a bin: the step is one bin wide
    assert abs((t0 - t[0]) + 30.0) <= 6.0


def test_edge_on_a_taper_is_measured_and_taken_out():
    """A lamp (90 W) going off while a 150 W taper falls (20 min time constant): the edge
    is measured within 10 %, and the step-free signal is a clean exponential again."""
    k = np.arange(300, dtype=float)
    taper = np.where(k < 100, 150.0, 150.0 * np.exp(-(k - 100) / 20.0))
    lamp = np.where(k < 110, 90.0, 0.0)
    y = 60.0 + taper + lamp + np.random.default_rng(2).normal(0, 1.5, k.size)
    edges, bg = steps.find_edges(y, min_w=15.0, flag_w=10.0, side_bins=8)
    (edge,) = [e for e in edges if abs(e.k0 - 110) <= 1]
    assert edge.size == pytest.approx(-90.0, rel=0.1)
    sf = steps.step_free(y, edges, bg)
    (tp,) = find_tapers(sf, min_fall_w=40.0, max_fall_w=450.0, slope_w_bin=0.35, min_bins=10, max_share=0.08,
                        tau_bins=(6.0, 60.0), max_rel_rmse=0.12)
    assert abs(tp.i0 - 100) <= 2
    assert tp.amp_w == pytest.approx(150.0, rel=0.15)
    assert tp.tau_bins == pytest.approx(20.0, rel=0.3)


def test_exponential_beats_a_ramp_only_on_an_exponential():
    k = np.arange(200, dtype=float)
    noise = np.random.default_rng(3).normal(0, 1.0, k.size)
    expo = np.where(k < 60, 120.0, 120.0 * np.exp(-(k - 60) / 15.0)) + noise
    ramp = np.clip(120.0 - 120.0 * (k - 60) / 40.0, 0.0, 120.0) + noise
    i0, tau, amp, _, rmse = fit_exponential(expo, 60)
    assert abs(i0 - 60) <= 1 and tau == pytest.approx(15.0, rel=0.25) and amp == pytest.approx(120.0, rel=0.1)
    assert rmse < 0.5 * fit_ramp(expo, i0)
    i0r, _, _, _, rmse_r = fit_exponential(ramp, 60)
    assert rmse_r > fit_ramp(ramp, i0r)


def test_switch_on_merged_with_a_lamp():
    """The charger (150 W) and a 100 W lamp in the same minute make one 250 W edge; the lamp
    goes off two hours later.  The switch-on is found there, the charger's share 150 W;
    without the lamp going off the 250 W edge is not taken."""
    exp = switch_on.Expectation("lithium", 150.0, 12.5, 156.0)
    edges = [steps.Edge(100, 100, 250.0), steps.Edge(220, 220, -98.0), steps.Edge(300, 300, 60.0)]
    kw = dict(grid_s=60.0, taper_wh=60.0, tail_wh={"lithium": 0.0, "lead_acid": 100.0}, max_z=3.0,
              merged_factor=1.4, merged_max_w=580.0, pairing_bins=360, pair_match=(0.15, 10.0),
              energy_soft_kwh=1.0, energy_width_kwh=0.15, used=set())
    (best, *_) = switch_on.rank_switch_ons(edges, 0, 380, 400, [exp], **kw)
    assert best.k == 100 and best.charger_w == 150.0
    assert switch_on.rank_switch_ons(edges[:1], 0, 380, 400, [exp], **kw) == []


def test_start_confidence_is_the_margin_to_the_best_start_30_min_away():
    """The switch-on taken scores 1.0; a candidate 20 min later (same start to the
    evaluation's 30 min) is no alternative; the next, 100 min later, scores 3.0: margin 2,
    start confidence logistic(0.059 + 0.321 * 2) = 0.668, the alternative 6000 s later.
    Alone, the margin is the cap (10): 0.963."""
    from detectors.charging import _start_evidence

    exp = switch_on.Expectation("lithium", 150.0, 12.5, 156.0)

    def cand(k, score):
        return switch_on.Candidate(k, 150.0, 150.0, exp, 0.0, 0.5, score)

    s = DetectorSettings()
    taken = cand(100, 1.0)
    ev = _start_evidence([taken, cand(120, 1.5), cand(200, 3.0), cand(30, 4.0)], taken, s)
    assert ev["start_margin"] == 2.0
    assert ev["start_confidence"] == pytest.approx(1 / (1 + math.exp(-(0.059 + 0.321 * 2))))
    assert round(ev["start_confidence"], 3) == 0.668
    assert ev["start_alternative_offset_s"] == 6000.0
    alone = _start_evidence([taken], taken, s)
    assert alone["start_margin"] == 10.0 and round(alone["start_confidence"], 3) == 0.963
    assert "start_alternative_offset_s" not in alone
    # taken below a better-scored candidate the load did not support: margin 0, not negative
    worse = cand(300, 2.0)
    assert _start_evidence([cand(100, 1.0), worse], worse, s)["start_margin"] == 0.0


def test_big_load_is_paired_only_with_a_switch_off_it_held_until():
    """A 2 kW heater switches on at bin 100; its switch-off at 130 is read as -1.5 kW (a
    500 W load switched on in the same minute), so it matches no pairing.  A kettle runs
    150-170 at 2 kW.  The heater's first matching down-edge is the kettle's (170), but the
    load fell to 500 W in between: the heater was off, so it stays unpaired and the kettle
    is paired with its own switch-off.  Without the check the heater's block is taken out
    over 130-150 too and the persistent load reads -1.5 kW there."""
    y = np.zeros(300)
    y[100:130] = 2000.0
    y[130:] = 500.0
    y[150:170] += 2000.0
    edges = [steps.Edge(100, 100, 2000.0), steps.Edge(130, 130, -1500.0),
             steps.Edge(150, 150, 2000.0), steps.Edge(170, 170, -2000.0)]
    args = (None, 400.0, 120, (5, 35), 0.12, (0.7, 1.1))
    held = steps.pair_pulses(edges, *args, y=y, big_hold=0.5)
    assert held == [(2, 3, "big")]
    assert steps.subtract_pulses(y, edges, held).min() == 0.0
    blind = steps.pair_pulses(edges, *args)
    assert blind == [(0, 3, "big")]
    assert steps.subtract_pulses(y, edges, blind).min() == -1500.0


def test_taper_paused_by_wobble_is_found_from_its_pieces():
    """A 105 W exponential fall (tau 25 bins) paused twice for 10 bins (a wobble alongside)
    falls in three touching runs of 35 W each, every one under the 40 W gate: tried
    together they make one taper from bin ~100 (the stretch's fit: amplitude 117 W,
    tau 50 bins with the pauses).  Without pauses the same fall is one run as before."""
    k = np.arange(400, dtype=float)
    fall = np.where(k < 100, 0.0, -105.0 * (1 - np.exp(-(k - 100) / 25.0)))

    def paused(sf, at_w, bins=10):
        j = int(np.argmax(sf <= -at_w))
        return np.r_[sf[:j], np.full(bins, sf[j]), sf[j:-bins]]

    x = paused(paused(fall, 35.0), 70.0) + 1000.0
    kw = dict(min_fall_w=40.0, max_fall_w=450.0, slope_w_bin=0.35, min_bins=10, max_share=0.08,
              tau_bins=(6.0, 60.0), max_rel_rmse=0.12)
    runs = falling_runs(x, 0.35)
    assert runs == [(93, 117), (115, 144), (143, 186)]
    sm = np.convolve(np.pad(x, 2, mode="edge"), np.ones(5) / 5.0, mode="valid")
    assert all(sm[a] - sm[b] < 40.0 for a, b in runs)
    (tp,) = find_tapers(x, **kw)
    assert (tp.i0, tp.i1, round(tp.amp_w), round(tp.tau_bins)) == (97, 186, 117, 50)
    (plain,) = find_tapers(fall + 1000.0, **kw)
    assert (plain.i0, round(plain.amp_w), round(plain.tau_bins)) == (101, 103, 23)
