"""``flylead evaluate``: the baselines on small signals, the household-day and false-alarm
metrics on hand-made sessions, the corpora, and the command on a short run."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from typer.testing import CliRunner

from detectors import detect_sessions, match_sessions
from detectors.baselines import bin_load, interval_power, pelt_sessions, threshold_sessions
from detectors.evaluate import false_alarms_per_100_weeks, household_days, household_weeks
from flylead.cli import app
from flylead.evaluate import run_method
from simulators.corpora import night_starts, sim_corpus, uci_corpus, uci_replay
from simulators.polling import poll
from simulators.scenario import demo_scenario

ZONE = ZoneInfo("Asia/Shanghai")
#: 2026-11-27 12:00 local, a day of one reading a minute from here
T0 = datetime(2026, 11, 27, 12, 0, tzinfo=ZONE).timestamp()
T = T0 + np.arange(24 * 60) * 60.0


def at(hour: float) -> float:
    """UTC epoch s of local ``hour`` counted from 2026-11-27 00:00 (25 = 01:00 next day)."""
    return T0 + (hour - 12) * 3600.0


def block(p: np.ndarray, h0: float, h1: float, watts: float) -> None:
    p[(T >= at(h0)) & (T < at(h1))] += watts


# ------------------------------------------------------------------------------- baselines


def test_threshold_rule_takes_long_night_blocks_above_the_base():
    p = np.full(T.size, 100.0)
    block(p, 21, 23.5, 150)  # night, 2.5 h: a session
    block(p, 14, 16, 150)  # afternoon: not night
    block(p, 19, 19 + 40 / 60, 150)  # 40 min: too short
    block(p, 25, 27, 60)  # 01:00-03:00, 60 W: a lead-acid stage-2 sized load
    found = threshold_sessions(T, p, household="a")
    # bins start half a minute before each reading
    assert [(s.start - at(21), s.end - at(23.5)) for s in found[:1]] == [(-30.0, -30.0)]
    assert [(s.household, s.energy_kwh, s.peak_w, s.method) for s in found] == [
        ("a", 0.375, 150.0, "threshold"), ("a", 0.12, 60.0, "threshold")]
    assert found[1].start == at(25) - 30
    # NILMTK's 70 W: the 60 W load is gone
    assert [s.start for s in threshold_sessions(T, p, threshold_w=70.0)] == [at(21) - 30]


def test_threshold_base_is_the_nightly_low_quantile():
    """A household whose base is 300 W at night and 100 W by day: the 10th percentile of
    the noon-to-noon window is what the charger is measured against."""
    p = np.full(T.size, 100.0)
    block(p, 18, 30, 200)  # 18:00-06:00 at 300 W (12 of 24 h)
    block(p, 22, 24, 150)
    found = threshold_sessions(T, p)
    # base = 100 W (the 12 h by day hold the 10th percentile): the whole night is "on"
    assert [(s.start, s.end) for s in found] == [(at(18) - 30, at(30) - 30)]
    assert found[0].peak_w == 350.0


def test_pelt_baseline_finds_a_raised_run_and_rejects_kw_loads_and_short_blocks():
    rng = np.random.default_rng(0)
    q = 100 + 3 * rng.standard_normal(T.size)
    block(q, 14, 17, 150)  # 3 h at +150 W: a session
    block(q, 20, 21, 2000)  # water heater: above the band
    block(q, 22, 22.5, 150)  # 30 min: too short
    block(q, 26, 28, 120)  # 02:00-04:00 +120 W, then
    block(q, 28, 29, 70)  # 04:00-05:00 +70 W (stage 2): one run
    found = pelt_sessions(T, q, household="b")
    assert [(s.start - at(14), s.end - at(17)) for s in found[:1]] == [(-30.0, -30.0)]
    assert [(s.start - at(26), s.end - at(29)) for s in found[1:]] == [(-30.0, -30.0)]
    assert found[0].energy_kwh == pytest.approx(0.45, abs=0.005)
    assert found[1].energy_kwh == pytest.approx(0.31, abs=0.005)
    assert found[1].peak_w == pytest.approx(120.0, abs=2.0)
    assert {s.method for s in found} == {"pelt"}


def test_baselines_on_interval_energy():
    """15-minute energy as mean power on a 900 s grid gives the intervals back."""
    t_end = at(12.25) + np.arange(96) * 900.0
    p = np.full(96, 100.0)
    p[(t_end > at(21)) & (t_end <= at(23.5))] += 150  # intervals 21:00-23:30
    e = p * 900 / 3.6e6
    t_mid, w = interval_power(t_end, e)
    assert w[0] == pytest.approx(100.0) and t_mid[0] == at(12.125)
    t0, x = bin_load(t_mid, w, 900.0)
    assert t0 == at(12) and x.size == 96
    (s,) = threshold_sessions(t_mid, w, grid_s=900.0)
    assert (s.start, s.end, s.energy_kwh) == (at(21), at(23.5), 0.375)
    (s,) = pelt_sessions(t_mid, w, grid_s=900.0)
    assert (s.start, s.end, s.energy_kwh) == (at(21), at(23.5), 0.375)


def test_bin_load_holds_short_gaps_only():
    t = np.array([0.0, 60, 120, 600, 1800])
    t0, x = bin_load(t, np.array([1.0, 2, np.nan, 4, 5]), 60.0, max_gap_s=300.0)
    assert t0 == -30.0
    # bins 2-6 hold the reading at 60 s for 300 s, 7-9 are unknown; 11-15 hold the one at
    # 600 s, 16-29 are unknown
    np.testing.assert_array_equal(np.isnan(x), [False] * 7 + [True] * 3 + [False] * 6
                                  + [True] * 14 + [False])
    assert x[6] == 2.0 and x[10] == 4.0 and x[-1] == 5.0
    with pytest.raises(ValueError, match="strictly increasing"):
        bin_load(t[::-1], np.zeros(5))


# ---------------------------------------------------------------------------------- metrics


@dataclass
class S:
    household: str
    start: float
    end: float


def test_household_days_and_false_alarms_exact():
    # h1: Fri 12:00 to Sun 12:00 local (3 local days); h2: Sat 00:00 to Sun 00:00 (1 day)
    spans = {"h1": (at(12), at(60)), "h2": (at(24), at(48))}
    truth = [S("h1", at(21), at(30)),  # Fri
             S("h1", at(47), at(52)),  # Sat 23:00
             S("h2", at(30), at(36))]  # Sat
    detected = [S("h1", at(21.2), at(30)),  # Fri: tp (session and day)
                S("h1", at(48.5), at(52)),  # Sun 00:30: day fp, session fn+fp (90 min late)
                S("h2", at(40), at(41))]  # Sat: day tp, session fp (no overlap)
    d = household_days(detected, truth, spans)
    assert (d.days, d.tp, d.fp, d.fn, d.tn) == (4, 2, 1, 1, 0)
    assert (d.precision, d.recall, d.accuracy) == (2 / 3, 2 / 3, 0.5)
    m = match_sessions(detected, truth)
    assert (m.tp, m.fp, m.fn) == (1, 2, 2)
    assert household_weeks(spans) == pytest.approx(3 / 7)  # 2 days + 1 day
    assert false_alarms_per_100_weeks(m.fp, spans) == pytest.approx(2 * 100 * 7 / 3)
    # nothing detected on nothing: perfect, every day a true negative
    e = household_days([], [], spans)
    assert (e.tn, e.precision, e.recall, e.accuracy) == (4, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="outside"):
        household_days([S("h2", at(50), at(51))], [], spans)
    with pytest.raises(ValueError, match="outside"):
        household_days([S("h3", at(20), at(21))], [], spans)


# ---------------------------------------------------------------------------------- corpora


def test_uci_replay_is_the_whole_file_and_sessions_start_at_night():
    trace = uci_replay("u01")
    start = datetime.fromtimestamp(trace.start, ZONE)
    assert (start.month, start.day, start.hour, start.minute) == (12, 16, 17, 24)
    assert trace.power_w.size == 6156  # 16/12 17:24 .. 20/12 23:59, one a minute
    # four evenings leave room for a 13 h session; with chance 1 each charges
    starts = night_starts(trace.start, trace.end, np.random.default_rng(0), chance=1.0)
    assert len(starts) == 4
    for t, profile in starts:
        local = datetime.fromtimestamp(t, ZONE)
        assert 19 <= local.hour + local.minute / 60 <= 23.5 and profile in ("lead_acid", "lithium")
    c = uci_corpus(3)
    neg = uci_corpus(3, inject=False)
    assert [s.household for s in c.series] == ["u01", "u02", "u03"] and neg.truth == []
    assert all(trace.start <= s.start and s.end < trace.end for s in c.truth)
    # same polls with and without the sessions
    for a, b in zip(c.series, neg.series):
        np.testing.assert_array_equal(a.t, b.t)
    assert len(c.truth) == 8  # seed 1's draws


def test_sim_corpus_is_the_poll_model_of_the_detector_tests():
    c = sim_corpus([3])
    sc = demo_scenario(seed=3)
    rng = np.random.default_rng(3)
    for series, trace in zip(c.series, sc.traces):
        t, p = poll(trace, rng)
        assert series.household == f"s3/{trace.household}"
        np.testing.assert_array_equal(series.t, t)
        np.testing.assert_array_equal(series.values, p)
    assert len(c.truth) == 5 and all(s.household.startswith("s3/h0") for s in c.truth)


def test_sim_corpus_draws_poll_the_same_homes_again():
    c = sim_corpus([3], draws=2)
    sc = demo_scenario(seed=3)
    assert [s.household for s in c.series[8:]] == [f"s3.1/h0{i}" for i in range(1, 9)]
    rng = np.random.default_rng([3, 1])
    for series, trace in zip(c.series[8:], sc.traces):
        t, p = poll(trace, rng)
        np.testing.assert_array_equal(series.t, t)
        np.testing.assert_array_equal(series.values, p)
    assert not np.array_equal(c.series[0].t, c.series[8].t)
    assert len(c.truth) == 10 and sum(s.household.startswith("s3.1/") for s in c.truth) == 5
    assert "2 poll draws" in c.note
    assert len(sim_corpus([3], interval_s=900.0, draws=4).series) == 8  # no poll draw in interval energy
    with pytest.raises(ValueError, match="draws must be >= 1"):
        sim_corpus([3], draws=0)


def test_missing_interval_detector_is_reported_not_raised(monkeypatch):
    monkeypatch.setitem(sys.modules, "detectors.interval", None)  # import fails
    c = sim_corpus([1], interval_s=900.0)
    r = run_method(c, "flylead")
    assert r.status == "missing" and "detectors.interval" in r.error and r.f1 is None


# ---------------------------------------------------------------------------------- command


def test_evaluate_command_writes_json_with_our_figures(tmp_path):
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(app, ["evaluate", "--seeds", "1-2", "--corpus", "sim,uci-neg",
                                   "--uci-replicas", "1", "--draws", "2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "flylead evaluate" in res.output and "threshold" in res.output and "pelt" in res.output
    data = json.loads(out.read_text())
    assert set(data) == {"corpora", "settings", "seconds"}
    assert data["settings"]["seeds"] == [1, 2] and data["settings"]["draws"] == 2
    sim = data["corpora"]["sim"]
    assert (sim["households"], sim["household_days"], sim["true_sessions"]) == (32, 96, 20)
    assert sim["household_weeks"] == pytest.approx(32 * 2 / 7, abs=1e-3)
    assert set(sim["methods"]) == {"flylead", "threshold", "pelt"}
    ours = sim["methods"]["flylead"]
    assert set(ours) >= {"status", "detections", "tp", "fp", "fn", "precision", "recall", "f1", "day",
                         "false_alarms_per_100_household_weeks", "seconds", "sessions"}
    assert set(ours["day"]) == {"days", "tp", "fp", "fn", "tn", "precision", "recall", "accuracy"}
    # the same figures straight from detect_sessions + match_sessions
    tp = fp = fn = 0
    for seed in (1, 2):
        sc = demo_scenario(seed=seed)
        for rng in (np.random.default_rng(seed), np.random.default_rng([seed, 1])):  # the two draws
            found = []
            for trace in sc.traces:
                t, p = poll(trace, rng)
                found += [S(trace.household, s.start, s.end) for s in detect_sessions(t, p, tz=sc.tz)]
            m = match_sessions(found, sc.truth)
            tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
    assert (ours["tp"], ours["fp"], ours["fn"]) == (tp, fp, fn)
    assert ours["precision"] == pytest.approx(tp / (tp + fp))
    assert ours["recall"] == pytest.approx(tp / (tp + fn))
    assert ours["false_alarms_per_100_household_weeks"] == pytest.approx(100 * fp / (64 / 7))
    neg = data["corpora"]["uci-neg"]
    assert neg["true_sessions"] == 0 and neg["households"] == 1 and neg["household_days"] == 5
    assert "look_alike_starts" not in neg
    la = sim["look_alike_starts"]
    assert {k: v for k, v in la.items() if k != "starts"} == {
        "sessions": 2, "of": 10, "by_appliance": {"tv": 2}, "window_min": [30, 120], "tolerance": "10 % + 5 W"}
    assert la["starts"] == [[2, "h02", 1795874630.0], [2, "h06", 1795779930.0]]
    # recall on the flagged sessions and on the rest, from the matched truths
    flagged = {(seed, h, start) for seed, h, start in la["starts"]}
    found = {tuple(x) for x in ours["true_found"]}
    assert len(found) == ours["tp"]
    truths = [(int(h.split("/")[0][1:].split(".")[0]), h.split("/")[1], start, (h, start) in found)
              for h, start in ((t.household, t.start) for t in _sim_truth([1, 2], 2))]
    flag_hits = [hit for seed, h, start, hit in truths if (seed, h, start) in flagged]
    other_hits = [hit for seed, h, start, hit in truths if (seed, h, start) not in flagged]
    assert len(flag_hits) == 4 and len(other_hits) == 16  # 2 flagged sessions x 2 draws
    assert ours["recall_look_alike"] == pytest.approx(sum(flag_hits) / 4)
    assert ours["recall_other"] == pytest.approx(sum(other_hits) / 16)
    assert "scenario sessions have a lamp, TV or computer" in res.output
    # the detections with a confident start, scored on their own
    cs = ours["confident_starts"]
    sure = [d for d in ours["sessions"] if d["start_confidence"] >= 0.8]
    assert cs["threshold"] == 0.8 and cs["detections"] == len(sure) > 0
    assert cs["tp"] == sum(d["matched"] for d in sure)  # a confident start never steals a match here
    assert cs["precision"] == pytest.approx(cs["tp"] / len(sure))
    assert f"{len(sure)} of {ours['detections']} detections have a start confidence >= 0.8" in res.output
    assert sim["methods"]["threshold"]["confident_starts"] is None


def _sim_truth(seeds, draws):
    from simulators.corpora import sim_corpus

    return sim_corpus(seeds, draws=draws).truth


def test_a_name_given_twice_runs_once():
    res = CliRunner().invoke(app, ["evaluate", "--corpus", "uci-neg,uci-neg", "--method", "flylead,flylead",
                                   "--uci-replicas", "1"])
    assert res.exit_code == 0, res.output
    assert res.output.count("uci-neg flylead: ok") == 1


def test_evaluate_rejects_unknown_names():
    res = CliRunner().invoke(app, ["evaluate", "--corpus", "nope"])
    assert res.exit_code == 2 and "unknown corpus" in res.output
    res = CliRunner().invoke(app, ["evaluate", "--seeds", "5-1"])
    assert res.exit_code == 2
    res = CliRunner().invoke(app, ["evaluate", "--seeds", "1-100000000"])  # refused at once
    assert res.exit_code == 2 and "at most 1000 seeds" in res.output


def test_evaluate_option_mistakes_are_named(tmp_path):
    run = CliRunner().invoke
    for option, value, message in (("--corpus", "", "--corpus: empty name in ''"),
                                   ("--method", "", "--method: empty name in ''"),
                                   ("--method", "flylead,", "--method: empty name in 'flylead,'"),
                                   ("--seeds", "5-1", "--seeds: the range 5-1 runs backwards (write 1-5)")):
        res = run(app, ["evaluate", option, value])
        assert res.exit_code == 2, (option, value, res.output)
        assert message in " ".join(res.output.replace("│", " ").split())
    res = run(app, ["evaluate", "--json", str(tmp_path)])
    assert res.exit_code == 2 and f"error: --json {tmp_path}: is a directory" in res.output
    res = run(app, ["evaluate", "--json", str(tmp_path / "no" / "e.json")])
    assert res.exit_code == 2 and f"folder {tmp_path / 'no'} does not exist" in res.output


def test_missing_ruptures_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ruptures", None)
    r = run_method(sim_corpus([1]), "pelt")
    assert r.status == "missing" and r.error.startswith("ModuleNotFoundError: ")
    assert r.error.endswith("; pip install 'flylead[eval]'")
    monkeypatch.setitem(sys.modules, "detectors.interval", None)
    r = run_method(sim_corpus([1], interval_s=900.0), "flylead")
    assert "pip install" not in r.error   # our own module: no package to install
