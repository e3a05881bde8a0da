"""Matching detected charging sessions to the truth, and the metrics of the match.

Report precision, recall and F1 per session, never accuracy alone (domain-facts.md section 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


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
