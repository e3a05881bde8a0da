"""Session matching and metrics."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from detectors.evaluate import match_sessions


@dataclass
class S:
    household: str
    start: float
    end: float


def test_exact_counts_with_greedy_one_to_one_matching():
    truth = [S("a", 0, 1000), S("a", 5000, 9000), S("b", 0, 1000)]
    detected = [
        S("a", 100, 900),  # matches truth 0
        S("a", 200, 950),  # second candidate for truth 0: fp
        S("a", 5000 + 1801, 9500),  # start 30 min 1 s late: fp
        S("b", 10, 500),  # matches truth 2
        S("c", 0, 1000),  # other household: fp
    ]
    m = match_sessions(detected, truth)
    assert (m.tp, m.fp, m.fn) == (2, 3, 1)
    assert m.precision == pytest.approx(2 / 5) and m.recall == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(2 * 0.4 * (2 / 3) / (0.4 + 2 / 3))
    assert [(d.start, t.start) for d, t in m.pairs] == [(10, 0), (100, 0)]


def test_needs_overlap_not_only_close_starts():
    m = match_sessions([S("a", 0, 100)], [S("a", 100, 200)], max_start_diff_s=1800)
    assert (m.tp, m.fp, m.fn) == (0, 1, 1)


def test_greedy_prefers_the_closest_start():
    truth = [S("a", 0, 10_000), S("a", 600, 10_000)]
    m = match_sessions([S("a", 590, 5000)], truth)
    assert m.tp == 1 and m.pairs[0][1].start == 600 and m.fn == 1


def test_empty_conventions():
    m = match_sessions([], [])
    assert (m.precision, m.recall, m.f1) == (1.0, 1.0, 1.0)
    m = match_sessions([], [S("a", 0, 1)])
    assert (m.precision, m.recall, m.f1, m.fn) == (1.0, 0.0, 0.0, 1)
    m = match_sessions([S("a", 0, 1)], [])
    assert (m.precision, m.recall, m.fp) == (0.0, 1.0, 1)


def test_bad_input():
    with pytest.raises(ValueError):
        match_sessions([S("a", 10, 0)], [])
    with pytest.raises(ValueError):
        match_sessions([], [], max_start_diff_s=-1)
