"""Two baselines the charging detector is compared with (``flylead evaluate``): numpy, no I/O.

* :func:`threshold_sessions`, a plain power-threshold rule: load at least ``threshold_w``
  above the household's nightly base for at least an hour, starting at night.
* :func:`pelt_sessions`, a change-point baseline: the load segmented by PELT (ruptures,
  l2 cost, its fast default; domain-facts.md section 3), a run of segments 50-300 W above
  the level before it and back down after, lasting 1-12 h.

Neither looks at the shape of a session (no taper, no profile): they stand for what a
simple rule and a generic change-point method reach on the same data.  Both take one
household's readings (polls at any spacing, or the mean power of 15-minute intervals, see
:func:`interval_power`) and return :class:`BaselineSession` objects, which
:func:`detectors.evaluate.match_sessions` accepts.

Where NILMTK's 70 W fits (domain-facts.md section 3): NILMTK's steady-state edge detector
treats changes under a 70 W noise level as noise.  The threshold rule uses 50 W, the
smallest charger step of the brief, instead: at 70 W a lead-acid charger's stage 2 (45-65 W
at the wall) would end the session at the taper, and a 50-70 W lithium charger near the end
of its plateau would be lost; ``threshold_w=70`` gives the NILMTK-like variant.

ruptures is pure computation (its only optional import is matplotlib, for its own
plotting, which is not used here) and is imported inside :func:`pelt_sessions` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

__all__ = ["BaselineSession", "bin_load", "interval_power", "pelt_sessions", "threshold_sessions"]


@dataclass(frozen=True, slots=True)
class BaselineSession:
    """One session called by a baseline.

    Attributes:
        household: household id given to the baseline.
        start, end: UTC epoch s (bin edges).
        energy_kwh: energy above the reference level over the session, kWh.
        peak_w: highest bin (threshold) or segment level (PELT) above the reference, W.
        method: ``"threshold"`` or ``"pelt"``.
    """

    household: str
    start: float
    end: float
    energy_kwh: float
    peak_w: float
    method: str


def _check(t: np.ndarray, p_w: np.ndarray, grid_s: float) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(t, dtype=np.float64)
    p = np.asarray(p_w, dtype=np.float64)
    if t.ndim != 1 or t.shape != p.shape:
        raise ValueError(f"t and p_w must be 1-D of the same shape, got {t.shape} and {p.shape}")
    if not (math.isfinite(grid_s) and grid_s > 0):
        raise ValueError(f"grid_s must be finite and > 0, got {grid_s!r}")
    if np.isnan(t).any() or (t.size > 1 and np.any(np.diff(t) <= 0)):
        raise ValueError("t must be strictly increasing and without NaN")
    if np.isinf(p).any():
        raise ValueError("p_w has inf")
    return t, p


def bin_load(t: np.ndarray, p_w: np.ndarray, grid_s: float = 60.0, *,
             max_gap_s: float = 900.0) -> tuple[float, np.ndarray]:
    """Mean power in regular bins, short gaps held.

    Bin 0 starts at ``t[0] - grid_s / 2`` (a reading sits mid-bin, so one poll a bin with a
    few seconds of jitter lands one to a bin; a 15-minute interval's mid-point, see
    :func:`interval_power`, gives back exactly that interval).  A bin without a valid reading
    holds the previous bin's value when the gap since the last valid reading is at most
    ``max_gap_s``; longer gaps, and bins before the first valid reading, stay NaN.

    Args:
        t: shape (n,), float64, UTC epoch s, strictly increasing.
        p_w: shape (n,), float64, W; NaN = missing reading.
        grid_s: bin width (s), > 0.
        max_gap_s: longest gap (s) bridged by holding.

    Returns:
        ``(t0, x)``: UTC epoch s of bin 0's start, and shape (m,) float64 W (NaN where
        unknown); ``m`` is 0 for empty input.

    Raises:
        ValueError: shapes differ, ``t`` not strictly increasing or NaN, ``p_w`` has inf,
            ``grid_s`` not positive.
    """
    t, p = _check(t, p_w, grid_s)
    if t.size == 0:
        return 0.0, np.empty(0)
    t0 = float(t[0] - grid_s / 2)
    k = np.floor((t - t0) / grid_s).astype(np.int64)
    m = int(k[-1]) + 1
    ok = ~np.isnan(p)
    sums = np.bincount(k[ok], weights=p[ok], minlength=m)
    counts = np.bincount(k[ok], minlength=m)
    x = np.full(m, np.nan)
    have = counts > 0
    x[have] = sums[have] / counts[have]
    if have.any():
        idx = np.where(have, np.arange(m), -1)
        np.maximum.accumulate(idx, out=idx)
        held = (idx >= 0) & ~have & ((np.arange(m) - idx) * grid_s <= max_gap_s)
        x[held] = x[idx[held]]
    return t0, x


def interval_power(t_end: np.ndarray, energy_kwh: np.ndarray,
                   interval_s: float = 900.0) -> tuple[np.ndarray, np.ndarray]:
    """Interval energy as mean power at the interval's mid-point, for the baselines.

    Args:
        t_end: shape (n,), float64, UTC epoch s of each interval's end.
        energy_kwh: shape (n,), float64, kWh consumed in the interval ending at ``t_end``.
        interval_s: interval length (s), > 0.

    Returns:
        ``(t_mid, p_w)``: shapes (n,), float64; ``t_end - interval_s / 2`` and the mean
        power W (``kWh * 3.6e6 / interval_s``).
    """
    t_end = np.asarray(t_end, dtype=np.float64)
    e = np.asarray(energy_kwh, dtype=np.float64)
    if t_end.shape != e.shape:
        raise ValueError(f"t_end and energy_kwh must have the same shape, got {t_end.shape} and {e.shape}")
    return t_end - interval_s / 2, e * 3.6e6 / interval_s


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True as [a, b)."""
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _local_hours(t: np.ndarray, zone: ZoneInfo) -> np.ndarray:
    """Local hour of day (float) of each UTC epoch s (the zone's offset at each bin)."""
    out = np.empty(t.size)
    for i, ts in enumerate(t):
        d = datetime.fromtimestamp(float(ts), zone)
        out[i] = d.hour + d.minute / 60 + d.second / 3600
    return out


def _night_keys(t: np.ndarray, zone: ZoneInfo) -> np.ndarray:
    """Index of the local noon-to-noon window holding each time (ordinal of local date - 12 h)."""
    return np.array([(datetime.fromtimestamp(float(ts), zone) - timedelta(hours=12)).toordinal()
                     for ts in t])


def threshold_sessions(
    t: np.ndarray,
    p_w: np.ndarray,
    *,
    household: str = "",
    tz: str = "Asia/Shanghai",
    grid_s: float = 60.0,
    threshold_w: float = 50.0,
    min_duration_s: float = 3600.0,
    night_hours: tuple[float, float] = (18.0, 6.0),
    base_quantile: float = 0.10,
) -> list[BaselineSession]:
    """The plain power-threshold rule.

    The rule, exactly:

    1. bin the readings to ``grid_s`` means (:func:`bin_load`; gaps up to 15 min held);
    2. the household's *nightly base* is the ``base_quantile`` quantile (default the 10th
       percentile) of its bins from local 12:00 to the next local 12:00, the 24 h around
       each night (a session of up to 12 h leaves the quantile on the base);
    3. a bin is *on* when its load is at least ``threshold_w`` (default 50 W, the smallest
       charger step; see the module docstring for NILMTK's 70 W) above that base;
    4. every run of consecutive on bins lasting at least ``min_duration_s`` (1 h) whose
       first bin's centre lies at night, local ``night_hours`` (18:00 to 06:00), is a
       session from the run's first bin start to its last bin end.  No upper bound, no
       shape.

    Args:
        t: shape (n,), float64, UTC epoch s, strictly increasing.
        p_w: shape (n,), float64, W; NaN = missing (never on).
        household: id carried into the sessions.
        tz: IANA zone of the household (night and the noon-to-noon windows are local).
        grid_s: bin width (s): 60 for polled power, 900 for 15-minute interval power.
        threshold_w: W above the nightly base, > 0.
        min_duration_s: shortest run (s).
        night_hours: (from, to) local hours a run may start in; wraps midnight when
            from > to.
        base_quantile: quantile of the base, 0..1.

    Returns:
        Sessions sorted by start; energy is the load above the base summed over the run
        (kWh), peak the highest bin above the base (W).

    Raises:
        ValueError: bad shapes or times (see :func:`bin_load`), ``threshold_w`` not
            positive, ``base_quantile`` outside 0..1.
    """
    if not threshold_w > 0:
        raise ValueError(f"threshold_w must be > 0, got {threshold_w!r}")
    if not 0 <= base_quantile <= 1:
        raise ValueError(f"base_quantile must be in 0..1, got {base_quantile!r}")
    t0, x = bin_load(t, p_w, grid_s)
    if x.size == 0 or np.isnan(x).all():
        return []
    zone = ZoneInfo(tz)
    starts = t0 + np.arange(x.size) * grid_s
    keys = _night_keys(starts, zone)
    base = np.full(x.size, np.nan)
    for key in np.unique(keys):
        sel = keys == key
        vals = x[sel]
        if np.isfinite(vals).any():
            base[sel] = np.nanquantile(vals, base_quantile)
    with np.errstate(invalid="ignore"):
        excess = x - base
        on = excess >= threshold_w
    lo, hi = night_hours
    out = []
    for a, b in _runs(on):
        if (b - a) * grid_s < min_duration_s:
            continue
        hour = _local_hours(starts[a:a + 1] + grid_s / 2, zone)[0]  # the bin's centre
        at_night = (lo <= hour or hour < hi) if lo > hi else (lo <= hour < hi)
        if not at_night:
            continue
        seg = excess[a:b]
        out.append(BaselineSession(household, float(starts[a]), float(starts[a] + (b - a) * grid_s),
                                   round(float(seg.sum() * grid_s / 3.6e6), 4),
                                   round(float(seg.max()), 1), "threshold"))
    return out


def _fill(x: np.ndarray) -> np.ndarray:
    """NaN bins hold the previous value (leading NaN take the first valid one)."""
    ok = np.isfinite(x)
    idx = np.where(ok, np.arange(x.size), -1)
    np.maximum.accumulate(idx, out=idx)
    first = int(np.argmax(ok))
    idx[idx < 0] = first
    return x[idx]


def pelt_segments(x: np.ndarray, *, min_size: int, jump: int, penalty: float) -> list[int]:
    """PELT (ruptures, l2 cost) change points of ``x``: the end index of every segment, the
    last one ``x.size`` (ruptures' convention)."""
    import ruptures

    if x.size < 2 * min_size:
        return [int(x.size)]
    algo = ruptures.Pelt(model="l2", min_size=min_size, jump=jump).fit(x.reshape(-1, 1))
    return [int(b) for b in algo.predict(pen=penalty)]


def pelt_sessions(
    t: np.ndarray,
    p_w: np.ndarray,
    *,
    household: str = "",
    grid_s: float = 60.0,
    min_segment_s: float | None = None,
    jump: int | None = None,
    penalty: float | None = None,
    band_w: tuple[float, float] = (50.0, 300.0),
    duration_s: tuple[float, float] = (3600.0, 12 * 3600.0),
) -> list[BaselineSession]:
    """The change-point baseline: PELT segments, a raised run of them is a session.

    The rule, exactly:

    1. bin the readings to ``grid_s`` means (:func:`bin_load`), every gap held (PELT needs
       finite values);
    2. segment with ruptures' PELT, l2 cost (piecewise-constant mean), segments at least
       ``min_segment_s`` long (default 10 min on minute bins, 30 min on 15-minute bins),
       change points on multiples of ``jump`` bins (default 5 on minute bins: a 5-minute
       resolution keeps PELT to 0.05-0.1 s per 2-day household; 1 on 15-minute bins), penalty
       ``band_w[0]**2 * min_size / 4`` W^2 by default: a step of ``band_w[0]`` (50 W)
       between two minimum-length segments lowers the l2 cost by
       ``band_w[0]**2 * min_size / 2``, so changes of about 35 W and more between
       minimum-length segments (smaller ones between longer segments) are kept, and
       standby noise (2-4 W) never splits;
    3. a run starts at a segment whose level (mean) is ``band_w`` (50-300 W) above the
       previous segment's level, the *reference*; it goes on while the next segment's level
       stays 50-300 W above the reference;
    4. the run is a session when the load after it is back below the reference + 50 W
       (so the run is above both neighbours) and it lasts ``duration_s`` (1-12 h); the
       search then goes on after the run, else at the next segment.

    Args:
        t: shape (n,), float64, UTC epoch s, strictly increasing.
        p_w: shape (n,), float64, W; NaN = missing.
        household: id carried into the sessions.
        grid_s: bin width (s): 60 for polled power, 900 for 15-minute interval power.
        min_segment_s: shortest segment (s); default 600 s, at least 2 bins.
        jump: change-point grid (bins); default 5 when ``grid_s`` < 300 s, else 1.
        penalty: PELT penalty (W^2 x bins); default as above.
        band_w: (lowest, highest) level above the reference (W).
        duration_s: (shortest, longest) session (s).

    Returns:
        Sessions sorted by start; energy is the load above the reference summed over the
        run (kWh), peak the highest segment level above it (W).

    Raises:
        ValueError: bad shapes or times (see :func:`bin_load`); ImportError: ruptures is
            not installed (``pip install flylead[eval]``).
    """
    t0, x = bin_load(t, p_w, grid_s, max_gap_s=math.inf)
    if x.size == 0 or np.isnan(x).all():
        return []
    x = _fill(x)
    min_size = max(2, round((min_segment_s if min_segment_s is not None else 600.0) / grid_s))
    jump = jump if jump is not None else (5 if grid_s < 300 else 1)
    pen = penalty if penalty is not None else band_w[0] ** 2 * min_size / 4
    ends = pelt_segments(x, min_size=min_size, jump=jump, penalty=pen)
    bounds = [0, *ends]
    levels = np.array([x[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:])])
    lo, hi = band_w
    out = []
    i = 1
    while i < levels.size:
        ref = levels[i - 1]
        if not lo <= levels[i] - ref <= hi:
            i += 1
            continue
        j = i
        while j + 1 < levels.size and lo <= levels[j + 1] - ref <= hi:
            j += 1
        a, b = bounds[i], bounds[j + 1]
        back_down = j + 1 < levels.size and levels[j + 1] - ref < lo
        if back_down and duration_s[0] <= (b - a) * grid_s <= duration_s[1]:
            out.append(BaselineSession(
                household, float(t0 + a * grid_s), float(t0 + b * grid_s),
                round(float((x[a:b] - ref).sum() * grid_s / 3.6e6), 4),
                round(float(levels[i:j + 1].max() - ref), 1), "pelt"))
            i = j + 1
        else:
            i += 1
    return out
