"""Resampling a :class:`~simulators.trace.LoadTrace` the way meters and utilities see it."""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

from simulators.trace import LoadTrace


def interval_energy(trace: LoadTrace, interval_s: float = 900.0, *,
                    tz: str = "Asia/Shanghai") -> tuple[np.ndarray, np.ndarray]:
    """The trace as a utility's interval-energy export: kWh consumed in each interval.

    Intervals are aligned to the local clock in ``tz`` (for 900 s: they end at local
    :00, :15, :30, :45; the zone's UTC offset at the trace start is used, a DST change inside
    the trace is not followed).  Only intervals lying wholly inside the trace are returned.
    The trace's power is a step function (each sample holds for ``step_s``), so the energy
    of an interval is exact: the difference of the cumulative energy, interpolated linearly
    between sample edges (kWh = sum(W x s) / 3.6e6).

    Args:
        trace: the household's load.
        interval_s: interval length (s), > 0 (utilities export 900 s, 15 min).
        tz: IANA zone whose local clock the intervals are aligned to.

    Returns:
        ``(t_end, energy_kwh)``: shapes (m,), float64; UTC epoch s of each interval's end,
        strictly increasing by ``interval_s``; kWh consumed in the interval ending there,
        >= 0.  ``m`` is 0 when the trace is shorter than one aligned interval.

    Raises:
        ValueError: ``interval_s`` not positive or not finite.
    """
    if not (math.isfinite(interval_s) and interval_s > 0):
        raise ValueError(f"interval_s must be finite and > 0, got {interval_s!r}")
    offset = datetime.fromtimestamp(trace.start, ZoneInfo(tz)).utcoffset()
    off_s = offset.total_seconds() if offset is not None else 0.0
    first_end = (math.floor((trace.start + off_s) / interval_s) + 1) * interval_s - off_s
    # the first interval starts at first_end - interval_s, which must not precede the trace
    if first_end - interval_s < trace.start - 1e-6:
        first_end += interval_s
    m = max(0, int(math.floor((trace.end - first_end) / interval_s + 1e-9)) + 1)
    if m == 0:
        return np.empty(0), np.empty(0)
    edges = first_end - interval_s + np.arange(m + 1) * interval_s
    sample_edges = trace.start + np.arange(trace.power_w.size + 1) * trace.step_s
    cumulative = np.concatenate(([0.0], np.cumsum(trace.power_w) * trace.step_s / 3.6e6))
    e = np.diff(np.interp(edges, sample_edges, cumulative))
    return edges[1:].astype(np.float64), np.maximum(e, 0.0)
