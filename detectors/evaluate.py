"""Matching detected charging sessions to the truth, and the metrics of the match.

Report precision, recall and F1 per session, never accuracy alone (domain-facts.md section 3):
:func:`match_sessions` per session, :func:`household_days` per household-day, and
:func:`false_alarms_per_100_weeks` for the false-alarm rate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo


class SessionLike(Protocol):
    """Anything with a household and a time span (UTC epoch s): detected sessions as
    stored alerts, :class:`simulators.trace.TrueSession`, ..."""

    @property
    def household(self) -> str: ...

    @property
    def start(self) -> float: ...

    @property
    def end(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Metrics:
    """Result of :func:`match_sessions`.

    Conventions: precision = tp / (tp + fp), 1.0 when nothing was detected; recall =
    tp / (tp + fn), 1.0 when there was nothing to find; f1 is their harmonic mean, 0.0 when
    both are 0.  So an empty detection of an empty truth scores 1.0 everywhere.

    Attributes:
        tp, fp, fn: matched detections, unmatched detections, unmatched true sessions.
        precision, recall, f1: as above, 0..1.
        pairs: (detected, true) for every match, in the order they were made.
    """

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    pairs: list[tuple[SessionLike, SessionLike]] = field(default_factory=list)


def match_sessions(detected: Sequence[SessionLike], truth: Sequence[SessionLike], *,
                   max_start_diff_s: float = 1800.0) -> Metrics:
    """Match detected to true sessions one to one and count.

    A detection can match a true session of the same household when their spans overlap
    (start < other's end, both ways) and their starts differ by at most
    ``max_start_diff_s`` (default 30 min, chosen: a grid worker checks within the half
    hour).  Candidate pairs are taken greedily by smallest start difference, ties by earlier
    true start; each session is used at most once.

    Args:
        detected: detections (household, start, end).
        truth: true sessions (household, start, end).
        max_start_diff_s: largest start difference of a match (s), >= 0.

    Returns:
        The :class:`Metrics`.

    Raises:
        ValueError: ``max_start_diff_s`` negative, or a session whose end is before its start.
    """
    if max_start_diff_s < 0:
        raise ValueError(f"max_start_diff_s must be >= 0, got {max_start_diff_s!r}")
    for s in (*detected, *truth):
        if s.end < s.start:
            raise ValueError(f"session of {s.household} ends ({s.end}) before it starts ({s.start})")
    candidates = sorted(
        (abs(d.start - t.start), t.start, i, j)
        for i, d in enumerate(detected)
        for j, t in enumerate(truth)
        if d.household == t.household
        and d.start < t.end
        and t.start < d.end
        and abs(d.start - t.start) <= max_start_diff_s
    )
    used_d: set[int] = set()
    used_t: set[int] = set()
    pairs: list[tuple[SessionLike, SessionLike]] = []
    for _, _, i, j in candidates:
        if i not in used_d and j not in used_t:
            used_d.add(i)
            used_t.add(j)
            pairs.append((detected[i], truth[j]))
    tp = len(pairs)
    fp = len(detected) - tp
    fn = len(truth) - tp
    precision = tp / (tp + fp) if detected else 1.0
    recall = tp / (tp + fn) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return Metrics(tp, fp, fn, precision, recall, f1, pairs)


@dataclass(frozen=True, slots=True)
class DayMetrics:
    """Result of :func:`household_days`.

    A household-day is one local calendar day of one household's observed span.  It is
    *positive* when a true session of that household starts that day, *predicted positive*
    when a detection does.  Conventions as :class:`Metrics`: precision 1.0 with no predicted
    positive, recall 1.0 with no positive.

    Attributes:
        days: household-days counted.
        tp, fp, fn, tn: counts of household-days.
        precision: tp / (tp + fp); recall: tp / (tp + fn); accuracy: (tp + tn) / days
            (1.0 when there is no day), all 0..1.
    """

    days: int
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float
    recall: float
    accuracy: float


def _local_day(t: float, zone: ZoneInfo) -> date:
    return datetime.fromtimestamp(t, zone).date()


def household_days(detected: Sequence[SessionLike], truth: Sequence[SessionLike],
                   spans: Mapping[str, tuple[float, float]], *, tz: str = "Asia/Shanghai") -> DayMetrics:
    """Household-day metrics: does a session start on this household's local day?

    The household-days are, for each household in ``spans``, every local date in ``tz`` that
    its span ``[start, end)`` touches (a 48 h span from local noon gives 3 days).

    Args:
        detected: detections (household, start).
        truth: true sessions (household, start).
        spans: household -> (start, end) of its observed data, UTC epoch s, end > start.
        tz: IANA zone whose local dates are the days.

    Returns:
        The :class:`DayMetrics`.

    Raises:
        ValueError: a span that is empty, or a session whose household is not in ``spans``
            or that starts outside its household's days.
    """
    zone = ZoneInfo(tz)
    days: set[tuple[str, date]] = set()
    for household, (start, end) in spans.items():
        if not end > start:
            raise ValueError(f"span of {household} is empty: {start} .. {end}")
        first, last = _local_day(start, zone), _local_day(end - 1e-3, zone)  # [start, end)
        days.update((household, first + timedelta(days=k)) for k in range((last - first).days + 1))

    def starts(sessions: Sequence[SessionLike], what: str) -> set[tuple[str, date]]:
        out = set()
        for s in sessions:
            key = (s.household, _local_day(s.start, zone))
            if key not in days:
                raise ValueError(f"{what} session of {s.household} at {s.start} is outside the "
                                 "household-days of spans")
            out.add(key)
        return out

    positive, predicted = starts(truth, "true"), starts(detected, "detected")
    tp = len(positive & predicted)
    fp, fn = len(predicted - positive), len(positive - predicted)
    tn = len(days) - tp - fp - fn
    return DayMetrics(
        days=len(days), tp=tp, fp=fp, fn=fn, tn=tn,
        precision=tp / (tp + fp) if predicted else 1.0,
        recall=tp / (tp + fn) if positive else 1.0,
        accuracy=(tp + tn) / len(days) if days else 1.0,
    )


def household_weeks(spans: Mapping[str, tuple[float, float]]) -> float:
    """Observed time summed over households, in weeks (7 x 86400 s)."""
    return sum(end - start for start, end in spans.values()) / (7 * 86400.0)


def false_alarms_per_100_weeks(false_alarms: int, spans: Mapping[str, tuple[float, float]]) -> float:
    """False alarms (unmatched detections) per 100 household-weeks of ``spans``.

    Raises:
        ValueError: ``spans`` cover no time.
    """
    weeks = household_weeks(spans)
    if not weeks > 0:
        raise ValueError("spans cover no time")
    return 100.0 * false_alarms / weeks
