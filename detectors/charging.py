"""E-bike charging sessions in household load: numpy, no I/O.

The signature (domain-facts.md §2): a charger switches on with a step of 50-300 W at the
wall, holds a plateau (constant current, the power creeping up a few per cent as the pack
voltage rises), then *tapers smoothly* (constant voltage: the current falls roughly
exponentially over tens of minutes) and either drops to a float of a few watts for hours
(lead-acid, three-stage) or to zero (lithium, CC-CV).  Sessions last hours and draw
0.2-1.5 kWh, mostly at night.

The look-alikes do not taper: lamps, TVs and computers are flat or wobbly blocks that end
with a step; fridges cycle in tens of minutes; water heaters and cookers step by kW.  So the
detector works on the household's *persistent* load (:func:`persistent_load`: one-minute
bins, short rectangular pulses such as fridge runs paired up and subtracted, a 5-bin running
median), and:

1. finds smooth falls in it (the taper: >= ``min_taper_w`` spread over many minutes, its
   inverse participation ratio at most ``max_taper_share``; steps inside are set aside);
2. measures the charger's power at the top of the taper (``level``: the load there above
   the household's base load in the hours after) and calls it lithium when the taper takes
   nearly all of it, lead-acid when it leaves a stage-2 level;
3. looks back for the switch-on: the evening's edges are paired (lamps, TVs, computers
   switch off again) and the unpaired up-step closest in size to ``level`` is taken;
4. follows the end (lithium: the taper's tail; lead-acid: the stage-2 and float steps) and
   books the energy from ``level``, the taper and the stage levels, so appliances switching
   on top of the charger do not distort it;
5. keeps sessions within duration and energy bounds and scores a confidence from the
   evidence, with night-time as one feature (not a gate).

Measured limits (``flylead``'s evaluation corpus, see README): on quiet homes the start is
found to the minute; in busy evenings the switch-on is often masked by lamps and TVs of the
same size switching within minutes, which is where most misses come from.

:func:`detect_sessions` runs this on one household's array; :class:`StreamingDetector`
keeps the last ``buffer_s`` in a ring of one-minute bins and runs the same core as data
arrive.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

PROFILES = ("lead_acid", "lithium", "unknown")


@dataclass(frozen=True, slots=True)
class ChargingSession:
    """One detected charging session.

    Attributes:
        start: switch-on, UTC epoch s.
        end: end of charging (end of float for lead-acid), UTC epoch s.
        energy_kwh: energy attributed to the charger, kWh.
        peak_w: highest charger power, W (above the household's other load).
        confidence: 0..1.
        profile: ``"lead_acid"``, ``"lithium"`` or ``"unknown"``.
        evidence: the features behind the decision (W, s, kWh, ratios).
    """

    start: float
    end: float
    energy_kwh: float
    peak_w: float
    confidence: float
    profile: str
    evidence: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """Every constant of the detector.

    Charger figures are from domain-facts.md §2 (step 50-300 W, lead-acid stage 2 about
    60 W, float after 6-8 h, session 0.2-1.5 kWh); the rest are chosen, with the reason.
    """

    #: Bin width (s): one reading a minute is the agent's and the UCI data's resolution.
    grid_s: float = 60.0
    #: Longest gap (s) bridged by holding the last value; longer gaps split the analysis.
    max_gap_s: float = 900.0
    #: Short pulses removed before the analysis: longest (s) and smallest (W) pulse, and how
    #: closely the off-edge must match the on-edge (share of it).  Chosen: fridge runs
    #: 10-30 min at 80-150 W (brief), kettles and rice cookers 3-40 min at 0.7-2 kW; a
    #: charger or lamp stays on for hours, so it is never a pulse.
    max_pulse_s: float = 32 * 60.0
    pulse_min_w: float = 30.0
    pulse_match: float = 0.2
    #: Smallest switch-on step (W) of a lead-acid and a lithium charger, and the largest:
    #: §2 48 V lead-acid about 110 W at the wall (36 V 12 Ah: 1.8 A x 44 V = 80 W plus
    #: losses), lithium 2-5 A at 36-48 V (72-240 W), with margin for high mains voltage.
    min_step_w: float = 80.0
    min_step_lithium_w: float = 70.0
    max_step_w: float = 330.0
    #: Smallest smooth fall (W) that counts as a taper: lead-acid falls from 110-190 W to
    #: 45-65 W (at least ~45 W), lithium from its plateau to about zero.
    min_taper_w: float = 40.0
    #: Slope (W/min) below which the persistent load is "falling".  Chosen: a 25 W taper
    #: with a 40 min time constant starts at -0.6 W/min; standby drift is ~0.05 W/min.
    taper_slope_w_min: float = 0.35
    #: Shortest taper (s): exponential CV tails last tens of minutes; a switched-off lamp
    #: falls within one or two bins.
    min_taper_s: float = 600.0
    #: Largest inverse participation ratio of a taper's fall (1 / effective number of bins
    #: carrying it): an exponential with a >= 8 min time constant spreads over >= 16 bins
    #: (<= 0.06) plus noise; a staircase of lamps over 2-4 (>= 0.25); a wobbling TV or
    #: computer switching off ~0.15-0.2.
    max_taper_share: float = 0.08
    #: Longest plateau before the taper (s): lead-acid CC stage up to ~8 h (§2: float after
    #: 6-8 h).
    max_plateau_s: float = 9.5 * 3600.0
    #: Shortest plateau (s): a CC stage, chosen from the 0.5 h lithium minimum.
    min_plateau_s: float = 1200.0
    #: How long after a taper the household's own base load is measured (s).
    base_after_s: float = 4 * 3600.0
    #: A taper that takes at least this share of the charger's level is lithium (CC-CV
    #: to zero); less leaves a lead-acid stage-2 level (§2: ~60 W of ~110-180 W).
    lithium_fall_share: float = 0.72
    #: Switch-on step as a share of the level at the taper: the plateau rises 4-8 % (§2
    #: model) and a step measured among other switching reads 0.8-0.95 of it (measured on
    #: the simulated corpus); the band is wide for appliances switching alongside.
    step_to_level: tuple[float, float] = (0.6, 1.15)
    #: How far past the taper switch-offs are paired with the evening's switch-ons (s).
    pairing_after_s: float = 6 * 3600.0
    #: Lead-acid stage-2 level left after the taper (W): §2 "about 60 W in stage 2".
    stage2_w: tuple[float, float] = (25.0, 80.0)
    #: Longest search (s) for the stage-2 -> float step, and for the float's end.
    stage2_search_s: float = 3.0 * 3600.0
    float_search_s: float = 2.5 * 3600.0
    #: Float assumed when its end is not seen (W, s): §2 "about 2 h float", a few watts.
    float_w: float = 10.0
    float_s: float = 1.5 * 3600.0
    #: Session bounds: §2 0.2-1.5 kWh; hours-long.
    min_energy_kwh: float = 0.12
    max_energy_kwh: float = 2.2
    min_duration_s: float = 3600.0
    max_duration_s: float = 15.0 * 3600.0
    #: Local hours counted as night for the night-time feature (§2: mostly at night).
    night_hours: tuple[float, float] = (18.0, 7.0)
    #: Confidence below which a candidate is not reported.
    min_confidence: float = 0.5
    #: Streaming: bins kept (s) and how often the core re-runs (s of data).
    buffer_s: float = 24 * 3600.0
    analysis_interval_s: float = 900.0
    #: Streaming: a session is reported once its end is this far (s) behind the newest data.
    settle_s: float = 1800.0

    def __post_init__(self) -> None:
        if not self.grid_s > 0:
            raise ValueError("grid_s must be > 0")
        if not 0 < self.min_step_w < self.max_step_w:
            raise ValueError("need 0 < min_step_w < max_step_w")
        if not 0 < self.max_taper_share <= 1:
            raise ValueError("max_taper_share must be in (0, 1]")

    def bins(self, seconds: float) -> int:
        """Whole bins in ``seconds`` (at least 1)."""
        return max(1, round(seconds / self.grid_s))


# ----------------------------------------------------------------------------- input


def _check(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(t, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(f"t and p_w must be 1-D arrays of the same shape, got {t.shape} and {p.shape}")
    if np.isnan(t).any():
        raise ValueError("t has NaN")
    if np.isinf(p).any():
        raise ValueError("p_w has inf")
    if t.size > 1 and not np.all(np.diff(t) > 0):
        raise ValueError("t must be strictly increasing (sort and de-duplicate first)")
    return t, p


def to_grid(t: np.ndarray, p: np.ndarray, settings: DetectorSettings) -> tuple[float, np.ndarray]:
    """Average readings into ``grid_s`` bins.

    Args:
        t: shape (n,), float64, UTC epoch s, strictly increasing.
        p: shape (n,), float64, W; NaN = missing.

    Returns:
        ``(t0, x)``: start of bin 0 (UTC epoch s) and shape (m,) float64 bin means (W).
        Empty bins are filled by holding the previous value for up to ``max_gap_s``;
        longer gaps stay NaN.
    """
    ok = ~np.isnan(p)
    t, p = t[ok], p[ok]
    if t.size == 0:
        return 0.0, np.empty(0)
    g = settings.grid_s
    t0 = math.floor(t[0] / g) * g
    k = ((t - t0) // g).astype(np.int64)
    m = int(k[-1]) + 1
    sums = np.bincount(k, weights=p, minlength=m)
    counts = np.bincount(k, minlength=m)
    x = np.full(m, np.nan)
    have = counts > 0
    x[have] = sums[have] / counts[have]
    return t0, _hold(x, settings.bins(settings.max_gap_s))


def _hold(x: np.ndarray, max_bins: int) -> np.ndarray:
    """Fill NaN runs of at most ``max_bins`` with the previous value."""
    idx = np.where(~np.isnan(x), np.arange(x.size), -1)
    np.maximum.accumulate(idx, out=idx)
    gap = np.arange(x.size) - idx
    fill = (idx >= 0) & (gap <= max_bins)
    out = np.full_like(x, np.nan)
    out[fill] = x[idx[fill]]
    return out


def _edges(x: np.ndarray, min_w: float, merge_bins: int = 3) -> list[tuple[int, float]]:
    """Sharp edges of ``x``: bin differences of one sign within ``merge_bins`` of each other
    summed into one edge (a switch that straddles bins, or two switches seconds apart).

    Returns (first bin that changed, signed size W) for edges of at least ``min_w``, in
    time order; :func:`_edge_spans` also gives the first bin at the final level.
    """
    return [(k0, size) for k0, _, size in _edge_spans(x, min_w, merge_bins)]


def _edge_spans(x: np.ndarray, min_w: float, merge_bins: int = 3) -> list[tuple[int, int, float]]:
    """As :func:`_edges`, with (first bin changed, first bin at the final level, size W)."""
    d = np.diff(x)
    big = np.flatnonzero(np.abs(d) >= 0.4 * min_w)
    out: list[tuple[int, int, float]] = []
    group: list[int] = []

    def close() -> None:
        if group:
            size = float(d[group].sum())
            if abs(size) >= min_w:
                out.append((group[0] + 1, group[-1] + 1, size))
            group.clear()

    for k in big:
        if group and (k - group[-1] > merge_bins or np.sign(d[k]) != np.sign(d[group[-1]])):
            close()
        group.append(int(k))
    close()
    return out


def remove_pulses(x: np.ndarray, settings: DetectorSettings) -> np.ndarray:
    """Subtract short rectangular loads (fridge compressor runs, kettles, cookers).

    Each up-edge is paired with the first later down-edge of matching size (within
    ``pulse_match``) no more than ``max_pulse_s`` after it, and the pulse's height is
    subtracted between them.  Unlike a running minimum this keeps the slope of whatever
    runs underneath (a charger's taper stays smooth).

    Args:
        x: shape (m,), float64, W, no NaN.

    Returns:
        shape (m,), float64, W.
    """
    s = settings
    # one-bin spikes (a compressor's start-up surge, a kettle's minute) out first, so the
    # edges of a pulse are its switchings
    x = _median(x, 3)
    r = x.copy()
    edges = _edges(x, s.pulse_min_w, merge_bins=1)
    max_bins = s.bins(s.max_pulse_s)
    options = []  # (length in bins, size mismatch W, up indices, down index)
    for i, (k_up, up) in enumerate(edges):
        if up <= 0:
            continue
        for j in range(i + 1, len(edges)):
            k_dn, dn = edges[j]
            if k_dn - k_up > max_bins:
                break
            if dn < 0 and abs(up + dn) <= s.pulse_match * up + 10.0:
                options.append((k_dn - k_up, abs(up + dn), (i,), (j,)))
            for m in range(i + 1, j):
                other = edges[m][1]
                if dn >= 0:
                    break
                if other > 0 and abs(up + other + dn) <= s.pulse_match * (up + other) + 10.0:
                    # two appliances on in turn, off together
                    options.append((k_dn - k_up, abs(up + other + dn) + 5.0, (i, m), (j,)))

    used: set[int] = set()
    # shortest pulses first, so a fridge run inside a longer block is taken out first
    for _, _, ups, downs in sorted(options):
        if used.intersection(ups) or used.intersection(downs):
            continue
        used.update(ups)
        used.update(downs)
        total_up = sum(edges[i][1] for i in ups)
        total_dn = -sum(edges[j][1] for j in downs)
        # scale ups and downs to the same height, (ups + downs) / 2, splitting the mismatch
        height = 0.5 * (total_up + total_dn)
        level = np.zeros(x.size)
        for i in ups:
            level[edges[i][0]:] += edges[i][1] * height / total_up
        for j in downs:
            level[edges[j][0]:] += edges[j][1] * height / total_dn
        end = edges[max(downs)][0]
        r[edges[min(ups)][0]: end] -= level[edges[min(ups)][0]: end]
    return r


def persistent_load(x: np.ndarray, settings: DetectorSettings) -> np.ndarray:
    """The load that lasts: short pulses removed, then a 5-bin running median (spikes and
    meter noise out, steps kept).  Shape (m,) float64 W."""
    return _median(remove_pulses(x, settings), 5)


def _median(r: np.ndarray, w: int) -> np.ndarray:
    """Running median over ``w`` (odd) bins, ends padded; steps are kept, spikes go."""
    if r.size < w:
        return r.copy()
    return np.median(sliding_window_view(np.pad(r, w // 2, mode="edge"), w), axis=1)


# ----------------------------------------------------------------------------- core


@dataclass(frozen=True, slots=True)
class _Taper:
    i0: int          # first falling bin
    i1: int          # last falling bin
    drop_w: float    # smooth part of the fall
    share: float     # largest single-bin share of the smooth fall


def _tapers(o: np.ndarray, s: DetectorSettings) -> list[_Taper]:
    """Smooth falls of the persistent load ``o`` (shape (m,), W)."""
    if o.size < 12:
        return []
    d = np.diff(o)  # d[i] = o[i+1] - o[i]
    half = 4
    slope = _slope(o, s.grid_s, half)
    falling = slope < -s.taper_slope_w_min
    out = []
    i = 0
    m = o.size
    while i < m:
        if not falling[i]:
            i += 1
            continue
        j = i
        while j + 1 < m and (falling[j + 1] or (j + 3 < m and falling[j + 2: j + 4].any())):
            j += 1
        a, b = max(i - half, 0), min(j + half, m - 1)
        drops = -d[a:b]  # positive = falling
        net = drops.sum()
        if net > 0:
            # steps (appliances switching on or off) are not part of a taper
            big = np.abs(drops) > max(15.0, 0.2 * net)
            smooth = drops[~big]
            smooth_total = float(smooth.sum())  # net smooth fall: noise cancels out
            # participation ratio: how many bins effectively carry the fall (an
            # exponential with a time constant of T bins spreads it over ~2T; a staircase
            # of n lamps over n); its inverse is the "share" kept as evidence
            spread = smooth_total ** 2 / float(np.sum(smooth[smooth > 0] ** 2)) if smooth_total > 0 else 0.0
            share = 1.0 / spread if spread > 0 else 1.0
            long_enough = (b - a) * s.grid_s >= s.min_taper_s
            if smooth_total >= s.min_taper_w and share <= s.max_taper_share and long_enough:
                out.append(_Taper(a, b, float(smooth_total), float(share)))
        i = j + 1
    return out


def _slope(o: np.ndarray, grid_s: float, half: int = 4) -> np.ndarray:
    """Centred slope of ``o`` over 2*half bins, W/min (0 at the ends)."""
    slope = np.zeros(o.size)
    if o.size > 2 * half:
        slope[half:-half] = (o[2 * half:] - o[: -2 * half]) / (2 * half * grid_s / 60.0)
    return slope


def _steps(o: np.ndarray, lo: int, hi: int, min_w: float = 15.0) -> list[tuple[int, float]]:
    """Steps of the persistent load within bins [lo, hi): (first bin at the new level,
    signed size W).  Edges of the same sign within 3 bins are one step; its size is the
    median level over 4 bins after minus over 4 bins before, so slow drifts do not count.
    """
    out = []
    for k0, k1, _ in _edge_spans(o[lo:hi], min_w):
        k0, k1 = lo + k0, lo + k1
        before = np.median(o[max(k0 - 5, 0): k0 - 1]) if k0 >= 2 else o[0]
        after = np.median(o[k1: min(k1 + 4, o.size)])
        size = float(after - before)
        if abs(size) >= min_w:
            out.append((k0, size))
    return out


def _assign_switch_on(
    steps: list[tuple[int, float]], i0: int, level: float, latest: int, used: set[int],
    s: DetectorSettings,
) -> tuple[int | None, float]:
    """Which up-step switched the charger on.

    Every appliance's switch-on is undone later by a switch-off of about its size; the
    charger's is undone by its taper instead.  So the evening's and night's edges are
    paired first (NILM-style: all (earlier up, later down) pairs ranked by size mismatch,
    10 % + 8 W of the switch-off counting as 1, taken greedily one-to-one), and the
    switch-on is the up-step left unpaired whose size is closest to 0.95 of the charger's
    ``level`` at the taper, with a slight preference for the later (0.05 per hour).
    Paired up-steps are considered only when no unpaired one fits.

    Args:
        steps: (bin, signed size W) edges of the persistent load around the session.
        i0: first bin of the taper; ``latest``: last bin a switch-on may have.
        level: the charger's power at the top of the taper (W).
        used: switch-on bins already given to other sessions.

    Returns:
        (bin, size W) of the switch-on, or (None, 0.0) when no up-step fits.
    """
    lo_r, hi_r = s.step_to_level
    downs = [(k, -v) for k, v in steps if v < 0]
    ups = [(k, v) for k, v in steps if v > 0]
    options = []
    for j, (k_dn, dn) in enumerate(downs):
        for i, (k_up, up) in enumerate(ups):
            cost = abs(up - dn) / (0.1 * dn + 8.0)
            if k_up < k_dn and cost <= 1.0:
                options.append((cost, j, i))
    taken_up: set[int] = set()
    taken_dn: set[int] = set()
    for _, j, i in sorted(options):
        if i not in taken_up and j not in taken_dn:
            taken_up.add(i)
            taken_dn.add(j)
    best = (None, 0.0)
    best_score = math.inf
    for pass_ in (0, 1):  # unpaired up-steps first; paired ones only if none fits
        for i, (k, up) in enumerate(ups):
            if (i in taken_up) != bool(pass_) or k in used or k > latest:
                continue
            if not lo_r * level <= up <= hi_r * level:
                continue
            score = abs(up / level - 0.95) + 0.05 * (i0 - k) * s.grid_s / 3600.0
            if score < best_score:
                best, best_score = (k, up), score
        if best[0] is not None:
            break
    return best


def _extend_taper(o: np.ndarray, tp: _Taper, slope: np.ndarray, s: DetectorSettings) -> _Taper:
    """Follow an exponential tail past the taper test's end while it still falls smoothly
    (slope below -0.1 W/min, no single-bin drop over 15 W), adding its smooth fall."""
    i1, drop = tp.i1, tp.drop_w
    limit = tp.i1 + s.bins(5400.0)
    while i1 + 1 < min(o.size, limit) and slope[i1 + 1] < -0.1:
        step = o[i1] - o[i1 + 1]
        if abs(step) > 15.0:
            break
        drop += step
        i1 += 1
    return _Taper(tp.i0, i1, float(drop), tp.share)


def _night_fraction(t_start: float, t_end: float, tz: ZoneInfo, night: tuple[float, float]) -> float:
    ts = np.linspace(t_start, t_end, 25)
    hours = np.array([
        (lambda d: d.hour + d.minute / 60.0)(datetime.fromtimestamp(x, UTC).astimezone(tz)) for x in ts
    ])
    a, b = night
    return float(np.mean((hours >= a) | (hours < b)))


def _find_sessions(t0: float, x: np.ndarray, s: DetectorSettings, tz: ZoneInfo) -> list[ChargingSession]:
    """The core: sessions in one household's binned load ``x`` (shape (m,), W, no NaN)."""
    o = persistent_load(x, s)
    g = s.grid_s
    sessions: list[ChargingSession] = []
    used_on: set[int] = set()
    slope = _slope(o, g)
    for tp in _tapers(o, s):
        tp = _extend_taper(o, tp, slope, s)
        lo = max(0, tp.i0 - s.bins(s.max_plateau_s))
        fall = tp.drop_w
        # the charger's power at the top of its taper: the load there above what the
        # household draws once the session is over (low decile of the next hours)
        base = float(np.percentile(o[tp.i1: min(o.size, tp.i1 + s.bins(s.base_after_s))], 10))
        level = float(o[tp.i0]) - base
        if not s.min_step_lithium_w <= level <= s.max_step_w * 1.15:
            continue
        # lithium tapers to nothing; lead-acid leaves its stage-2 level
        profile = "lithium" if fall >= s.lithium_fall_share * level else "lead_acid"
        latest = tp.i0 - s.bins(s.min_plateau_s)
        around = _steps(o, lo, min(o.size, tp.i1 + s.bins(s.pairing_after_s)))
        around = [(k, v) for k, v in around if not tp.i0 - 2 <= k <= tp.i1 + 2]
        k_on, size = _assign_switch_on(around, tp.i0, level, latest, used_on, s)
        if k_on is None or size < (s.min_step_lithium_w if profile == "lithium" else s.min_step_w):
            continue
        residual = level - fall
        ev: dict[str, float] = {
            "step_w": size, "level_w": level, "taper_w": fall, "taper_share": tp.share,
            "plateau_s": (tp.i0 - k_on) * g, "taper_s": (tp.i1 - tp.i0) * g,
        }
        # the plateau rises a few per cent to ``level``: its mean is ~0.97 of it (§2 model)
        plateau_wh = 0.97 * level * (tp.i0 - k_on) * g / 3600.0
        # the charger's share of the taper: smooth drops still to come at each bin
        drops = np.clip(o[tp.i0: tp.i1] - o[tp.i0 + 1: tp.i1 + 1], 0.0, None)
        drops[drops > 15.0] = 0.0
        remaining = np.cumsum(drops[::-1])[::-1]
        taper_wh = float(remaining.sum()) * g / 3600.0
        if profile == "lithium":
            k_end = tp.i1
            while k_end + 3 < o.size and o[k_end + 3] < o[k_end] - 0.5:
                k_end += 1
            tail_wh = 0.0
        else:
            stage2 = max(residual, s.stage2_w[0])
            k2 = None
            for kk, size2 in _steps(o, tp.i1, min(o.size, tp.i1 + s.bins(s.stage2_search_s))):
                if -1.4 * stage2 <= size2 <= -0.4 * stage2:
                    k2 = kk
                    break
            if k2 is None:
                k2 = min(o.size - 1, tp.i1 + s.bins(3600.0))
                ev["stage2_end_seen"] = 0.0
            else:
                ev["stage2_end_seen"] = 1.0
            float_w = max(stage2 + (o[k2 + 3] - o[k2 - 3] if 3 <= k2 < o.size - 3 else -stage2), 0.0)
            float_w = float_w if 2.0 <= float_w <= 25.0 else s.float_w
            k_end = min(o.size - 1, k2 + s.bins(s.float_s))
            for kk, size3 in _steps(o, k2 + 10, min(o.size, k2 + s.bins(s.float_search_s))):
                if -25.0 <= size3 <= -2.0:
                    k_end = kk
                    break
            ev["stage2_w"] = stage2
            ev["float_w"] = float_w
            tail_wh = (stage2 * (k2 - tp.i1) + float_w * (k_end - k2)) * g / 3600.0
            taper_wh += stage2 * (tp.i1 - tp.i0) * g / 3600.0
        energy = (plateau_wh + taper_wh + tail_wh) / 1000.0
        start, end = t0 + k_on * g, t0 + k_end * g
        duration = end - start
        ev["duration_s"] = duration
        ev["energy_kwh"] = energy
        if not (s.min_energy_kwh <= energy <= s.max_energy_kwh and s.min_duration_s <= duration <= s.max_duration_s):
            continue
        night = _night_fraction(start, end, tz, s.night_hours)
        ev["night_fraction"] = night
        confidence = _confidence(size, tp, night, profile, ev, s)
        if confidence < s.min_confidence:
            continue
        used_on.add(k_on)
        sessions.append(ChargingSession(
            start=start, end=end, energy_kwh=round(energy, 4), peak_w=round(level, 1),
            confidence=round(confidence, 3), profile=profile, evidence=ev,
        ))
    return _dedupe(sessions)


def _confidence(size: float, tp: _Taper, night: float, profile: str, ev: dict[str, float],
                s: DetectorSettings) -> float:
    """Evidence to 0..1: a sum of feature scores squashed by a logistic.  Weights chosen so
    that a clean session at night scores ~0.95 and one without night or float ~0.7."""
    score = 0.0
    score += 1.0 if 60.0 <= size <= 260.0 else 0.3                     # §2 charger powers
    score += min(tp.drop_w / 60.0, 1.5)                                  # a real taper
    score += 1.0 - tp.share / s.max_taper_share                          # its smoothness
    score += 0.8 * night                                                 # §2 mostly at night
    score += 0.5 if ev.get("stage2_end_seen", 1.0) else 0.0
    score += 0.3 if profile != "unknown" else 0.0
    return float(1.0 / (1.0 + math.exp(-(score - 2.0) * 1.5)))


def _dedupe(sessions: list[ChargingSession]) -> list[ChargingSession]:
    """Keep the most confident of overlapping sessions."""
    kept: list[ChargingSession] = []
    for ses in sorted(sessions, key=lambda x: -x.confidence):
        if all(ses.end <= k.start or ses.start >= k.end for k in kept):
            kept.append(ses)
    return sorted(kept, key=lambda x: x.start)


def _segments(x: np.ndarray) -> list[tuple[int, int]]:
    """Runs of non-NaN bins as [a, b)."""
    ok = ~np.isnan(x)
    if not ok.any():
        return []
    edges = np.flatnonzero(np.diff(np.r_[0, ok.astype(np.int8), 0]))
    return list(zip(edges[::2], edges[1::2]))


def detect_sessions(
    t: np.ndarray,
    p_w: np.ndarray,
    settings: DetectorSettings | None = None,
    *,
    tz: str = "Asia/Shanghai",
) -> list[ChargingSession]:
    """Charging sessions in one household's load (batch).

    Args:
        t: shape (n,), float64, UTC epoch s, strictly increasing; spacing 1 s to 15 min,
            irregular allowed.
        p_w: shape (n,), float64, active power W; NaN = missing reading.
        settings: detector constants (defaults: :class:`DetectorSettings`).
        tz: IANA zone of the household, for the night-time feature.

    Returns:
        Sessions sorted by start.

    Raises:
        ValueError: shapes differ, ``t`` not strictly increasing or NaN, ``p_w`` has inf.
    """
    s = settings or DetectorSettings()
    t, p = _check(t, p_w)
    t0, x = to_grid(t, p, s)
    zone = ZoneInfo(tz)
    out: list[ChargingSession] = []
    for a, b in _segments(x):
        out += _find_sessions(t0 + a * s.grid_s, x[a:b], s, zone)
    return out


class StreamingDetector:
    """The same core fed one reading at a time, with bounded state.

    Readings are averaged into ``grid_s`` bins; the last ``buffer_s`` of bins (1440 at the
    defaults, 11.5 KiB) are kept in a ring.  Every ``analysis_interval_s`` of data the core
    re-runs on the ring; a session is reported once, when its end is ``settle_s`` behind
    the newest data (or at :meth:`flush`).

    Args:
        settings: detector constants.
        tz: IANA zone of the household.
    """

    def __init__(self, settings: DetectorSettings | None = None, *, tz: str = "Asia/Shanghai") -> None:
        self.settings = settings or DetectorSettings()
        self._zone = ZoneInfo(tz)
        self._bins: deque[float] = deque(maxlen=self.settings.bins(self.settings.buffer_s))
        self._t_first_bin = 0.0     # UTC epoch s of self._bins[0]
        self._bin = None            # index (since epoch, in bins) being filled
        self._sum = 0.0
        self._count = 0
        self._last_t = -math.inf
        self._next_analysis = -math.inf
        self._reported: deque[tuple[float, float]] = deque(maxlen=64)  # (start, end) reported
        self._active: ChargingSession | None = None

    @property
    def buffer_len(self) -> int:
        """Bins held (at most ``buffer_s / grid_s``)."""
        return len(self._bins)

    @property
    def active(self) -> ChargingSession | None:
        """A session seen in its taper and not yet ended (``end`` = newest data), or None."""
        return self._active

    def update(self, t: float, p_w: float) -> list[ChargingSession]:
        """Add one reading; return sessions that have just ended (each exactly once).

        Args:
            t: UTC epoch s.  A reading not later than the previous one is ignored (clock
                stepped back, duplicate).
            p_w: active power W; NaN or inf (a failed read) is ignored.

        Raises:
            ValueError: ``t`` is NaN or infinite.
        """
        if not math.isfinite(t):
            raise ValueError(f"t must be a finite UTC epoch s, got {t!r}")
        if t <= self._last_t or not math.isfinite(p_w):
            return []
        self._last_t = t
        g = self.settings.grid_s
        k = math.floor(t / g)
        if self._bin is None:
            self._bin = k
            self._t_first_bin = k * g
        if k != self._bin:
            self._close_bins(k)
        self._sum += p_w
        self._count += 1
        if t < self._next_analysis:
            return []
        self._next_analysis = t + self.settings.analysis_interval_s
        return self._analyse(final=False)

    def flush(self) -> list[ChargingSession]:
        """End of data: report every qualifying session not yet reported."""
        if self._bin is not None and self._count:
            self._close_bins(self._bin + 1)
        ended = self._analyse(final=True)
        self._active = None
        return ended

    def _close_bins(self, new_bin: int) -> None:
        value = self._sum / self._count if self._count else math.nan
        gap = new_bin - self._bin - 1
        hold = self.settings.bins(self.settings.max_gap_s)
        self._push(value)
        for _ in range(max(gap, 0)):
            self._push(value if gap <= hold else math.nan)
        self._bin, self._sum, self._count = new_bin, 0.0, 0

    def _push(self, value: float) -> None:
        if len(self._bins) == self._bins.maxlen:
            self._t_first_bin += self.settings.grid_s
        self._bins.append(value)

    def _analyse(self, *, final: bool) -> list[ChargingSession]:
        if not self._bins:
            return []
        s = self.settings
        x = np.fromiter(self._bins, dtype=np.float64, count=len(self._bins))
        found: list[ChargingSession] = []
        for a, b in _segments(x):
            found += _find_sessions(self._t_first_bin + a * s.grid_s, x[a:b], s, self._zone)
        newest = self._t_first_bin + len(self._bins) * s.grid_s
        ended, active = [], None
        for ses in found:
            # a later analysis with more data may move a reported session's edges: a
            # session overlapping one already reported is the same session
            if any(ses.start < end and start < ses.end for start, end in self._reported):
                continue
            if final or ses.end <= newest - s.settle_s:
                ended.append(ses)
                self._reported.append((ses.start, ses.end))
            else:
                active = ChargingSession(ses.start, newest, ses.energy_kwh, ses.peak_w,
                                         ses.confidence, ses.profile, ses.evidence)
        self._active = active
        return ended
