"""The signal layer of the charging detector: one-minute bins, sharp edges, short pulses and
the step-free signal.  numpy only, no I/O.

All arrays here are one household's load on a regular grid: shape (m,), float64, W, one
value per ``grid_s`` bin, no NaN unless said otherwise.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class Edge(NamedTuple):
    """A sharp change of the load: an appliance switching (or several within a bin).

    Attributes:
        k0: first bin that changed.
        k1: first bin at the new level (``k1 >= k0``; more than ``k0`` when the switch
            straddles bins).
        size: level after minus level before, W, with the background slope taken out.
    """

    k0: int
    k1: int
    size: float


class EdgeArrays(NamedTuple):
    """Edges as columns (what :func:`edge_arrays` gives; the pulse functions take either
    form): first bins ``k0`` and ``k1`` (int64) and ``size`` (float64, W), shapes (n,), in
    time order."""

    k0: np.ndarray
    k1: np.ndarray
    size: np.ndarray


# ----------------------------------------------------------------------------- gridding


def grid_phase(t: np.ndarray, grid_s: float) -> float:
    """Typical phase of the readings within a bin (s in [0, grid_s)): circular mean of
    ``t mod grid_s``.  Polls every minute at hh:mm:00 +- jitter give ~0."""
    ang = 2.0 * math.pi * (np.asarray(t) % grid_s) / grid_s
    return float((math.atan2(np.sin(ang).mean(), np.cos(ang).mean()) / (2.0 * math.pi) * grid_s) % grid_s)


def bin_offset(phase: float, grid_s: float) -> float:
    """Offset (s) of the bin edges for readings of ``phase``: the edges lie half a bin away
    from the readings, so a poll's jitter never moves it to the neighbouring bin (with edges
    on the polls, jitter puts two readings in one bin and none in the next, which smears
    every switch over two bins)."""
    return phase - 0.5 * grid_s


def to_grid(t: np.ndarray, p: np.ndarray, grid_s: float, max_gap_bins: int,
            offset: float | None = None) -> tuple[float, np.ndarray]:
    """Average readings into ``grid_s`` bins whose edges are at ``offset`` (mod ``grid_s``).

    Args:
        t: shape (n,), float64, UTC epoch s, strictly increasing.
        p: shape (n,), float64, W; NaN = missing.
        grid_s: bin width (s).
        max_gap_bins: empty runs up to this many bins hold the previous value; longer stay NaN.
        offset: bin-edge phase (s); default from :func:`grid_phase` of ``t``.

    Returns:
        ``(t0, x)``: start of bin 0 (UTC epoch s) and shape (m,) float64 bin means (W).
    """
    ok = ~np.isnan(p)
    t, p = t[ok], p[ok]
    if t.size == 0:
        return 0.0, np.empty(0)
    if offset is None:
        offset = bin_offset(grid_phase(t, grid_s), grid_s)
    t0 = math.floor((t[0] - offset) / grid_s) * grid_s + offset
    k = ((t - t0) // grid_s).astype(np.int64)
    m = int(k[-1]) + 1
    sums = np.bincount(k, weights=p, minlength=m)
    counts = np.bincount(k, minlength=m)
    x = np.full(m, np.nan)
    have = counts > 0
    x[have] = sums[have] / counts[have]
    return float(t0), hold(x, max_gap_bins)


def hold(x: np.ndarray, max_bins: int) -> np.ndarray:
    """Fill NaN runs of at most ``max_bins`` with the previous value (shape kept)."""
    idx = np.where(~np.isnan(x), np.arange(x.size), -1)
    np.maximum.accumulate(idx, out=idx)
    gap = np.arange(x.size) - idx
    fill = (idx >= 0) & (gap <= max_bins)
    out = np.full_like(x, np.nan)
    out[fill] = x[idx[fill]]
    return out


def pad_edge(x: np.ndarray, h: int) -> np.ndarray:
    """``x`` (shape (m,), m >= 1) with its end values repeated ``h`` times each side:
    ``np.pad(x, h, mode="edge")`` without its overhead.  Shape (m + 2h,)."""
    return np.concatenate((np.full(h, x[0]), x, np.full(h, x[-1])))


def running_median(x: np.ndarray, w: int) -> np.ndarray:
    """Running median over ``w`` (odd) bins, ends padded by repetition; steps are kept,
    spikes of up to ``w // 2`` bins go.  Shape (m,) -> (m,)."""
    if x.size < w:
        return x.copy()
    xp = pad_edge(x, w // 2)
    if w == 3:  # median of three without sorting
        a, b, c = xp[:-2], xp[1:-1], xp[2:]
        return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))
    return np.partition(sliding_window_view(xp, w), w // 2, axis=1)[:, w // 2]


# ----------------------------------------------------------------------------- edges


def _window_medians(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, width: int) -> np.ndarray:
    """Median of ``x[lo[i]:hi[i]]`` for each i (windows of at most ``width`` bins; NaN for
    an empty one).  Shapes: ``x`` (m,) without NaN; ``lo``, ``hi`` (n,) int with ``0 <= lo
    <= m`` -> (n,)."""
    if lo.size == 0:
        return np.empty(0)
    n = np.maximum(np.minimum(hi - lo, width), 0)
    # each window's bins, NaN past its end (NaN sorts last): the median of the first n
    # values of each sorted row
    cols = np.arange(width)
    rows = np.concatenate((x, np.full(width, np.nan)))[lo[:, None] + cols]
    rows[cols >= n[:, None]] = np.nan
    rows.sort(axis=1)
    r = np.arange(lo.size)
    out = 0.5 * (rows[r, (n - 1) // 2] + rows[r, n // 2])
    out[n == 0] = np.nan
    return out


def find_edges(y: np.ndarray, min_w: float, flag_w: float = 10.0, bg_bins: int = 11, side_bins: int = 5,
               noise_k: float = 0.0, noise_bins: int = 31) -> tuple[list[Edge], np.ndarray]:
    """Sharp edges of ``y``, each measured against its neighbourhood: :func:`edge_arrays`
    as a list of :class:`Edge` (same arguments; returns ``(edges, bg)``)."""
    cols, bg = edge_arrays(y, min_w, flag_w, bg_bins, side_bins, noise_k, noise_bins)
    return list(map(Edge._make, zip(cols.k0.tolist(), cols.k1.tolist(), cols.size.tolist()))), bg


def edge_arrays(y: np.ndarray, min_w: float, flag_w: float = 10.0, bg_bins: int = 11, side_bins: int = 5,
                noise_k: float = 0.0, noise_bins: int = 31) -> tuple[EdgeArrays, np.ndarray]:
    """Sharp edges of ``y``, each measured against its neighbourhood.

    A bin difference is part of an edge when it departs from the background slope (running
    median of the differences over ``bg_bins``: a taper falling 25 W/min has no edge, a
    lamp on it does) by at least ``flag_w``, or by ``noise_k`` times the local RMS of the
    departures over ``noise_bins`` where that is more (a computer's wobble); adjacent
    flagged differences of one sign form one edge.  Its size is the level after minus the
    level before, each the median of up to ``side_bins`` bins (not reaching into the
    neighbouring edges) carried to the edge along the background slope: robust to a
    wobbling TV next to it and to a taper under it.  With no room for a level (switches in
    consecutive bins) the bins either side are used.

    Args:
        y: shape (m,), W.
        min_w: smallest |size| kept (W).
        flag_w: departure from the background slope that flags a difference (W).
        bg_bins: window of the background slope (bins, odd).
        side_bins: bins each side for the levels.
        noise_k, noise_bins: the noise-raised threshold (0: off).

    Returns:
        ``(edges, bg)``: edges in time order (:class:`EdgeArrays`), and the background
        slope, shape (m - 1,), W/bin (``bg[k]`` belongs to the difference ``y[k+1] - y[k]``).
    """
    if y.size < 3:
        return _NO_EDGES, np.zeros(max(y.size - 1, 0))
    m = y.size
    d = np.diff(y)
    bg = running_median(d, bg_bins)
    e = d - bg
    thr = flag_w
    if noise_k > 0:
        sq = np.clip(e, -3 * flag_w, 3 * flag_w) ** 2  # an edge itself barely raises it
        kernel = np.ones(noise_bins) / noise_bins
        rms = np.sqrt(np.convolve(pad_edge(sq, noise_bins // 2), kernel, mode="valid"))
        thr = np.maximum(flag_w, noise_k * rms)
    flagged = np.flatnonzero(np.abs(e) >= thr)
    if flagged.size == 0:
        return _NO_EDGES, bg
    # runs of adjacent flagged differences of one sign: [first, last] difference index
    pos = e[flagged] > 0
    cut = np.flatnonzero((np.diff(flagged) > 1) | (pos[1:] != pos[:-1])) + 1
    first = flagged[np.concatenate(([0], cut))]
    last = flagged[np.concatenate((cut - 1, [flagged.size - 1]))]
    k0, k1 = first + 1, last + 1  # y[k0 - 1] is before the edge, y[k1] after it
    # level windows: up to side_bins beyond the edge, not reaching into the neighbours
    lo = np.maximum(k0 - side_bins, np.concatenate(([0], last[:-1] + 1)))
    hi = np.minimum(k1 + side_bins, np.concatenate((first[1:] + 1, [m])))
    nb, na = k0 - lo, hi - k1
    # the levels before and after every edge in one pass: rows [0, n) and [n, 2n)
    levels = _window_medians(y, np.concatenate((lo, k1)), np.concatenate((k0, hi)), side_bins)
    before, after = levels[:k0.size], levels[k0.size:]
    slope = _window_medians(bg, lo, hi - 1, 2 * side_bins + 4)
    room = (nb > 0) & (na > 0)
    slope = np.where(room, slope, 0.0)
    # each median sits mid-window: carry it to the edge along the slope, and take out the
    # slope's own change across the edge
    size = ((after - slope * (0.5 * (na - 1))) - (before + slope * (0.5 * (nb - 1)))
            - slope * (k1 - k0 + 1))
    cs = np.concatenate(([0.0], np.cumsum(bg)))
    tight = y[np.minimum(k1, m - 1)] - y[k0 - 1] - (cs[last + 1] - cs[first])
    size = np.where(room, size, tight)
    keep = np.flatnonzero(np.abs(size) >= min_w)
    return EdgeArrays(k0[keep].astype(np.int64), k1[keep].astype(np.int64), size[keep]), bg


_NO_EDGES = EdgeArrays(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0))


# ----------------------------------------------------------------------------- pulses


def _columns(edges: list[Edge] | EdgeArrays) -> EdgeArrays:
    """``edges`` as columns."""
    if isinstance(edges, EdgeArrays):
        return edges
    if not edges:
        return _NO_EDGES
    k0, k1, size = zip(*edges)
    return EdgeArrays(np.array(k0, dtype=np.int64), np.array(k1, dtype=np.int64), np.array(size, dtype=np.float64))


def _followers(k: np.ndarray, rows: np.ndarray, max_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """For each edge index in ``rows`` (shape (r,)), the indices of the edges after it that
    start at most ``max_bins`` later (``k``: first bins, increasing), as a padded matrix:
    ``(later, valid)``, shapes (r, w), ``later`` clipped into range where not ``valid``."""
    stop = np.searchsorted(k, k[rows] + max_bins, side="right")       # first edge too far
    width = max(int((stop - rows).max()) - 1, 1) if rows.size else 1  # at least one column
    later = rows[:, None] + 1 + np.arange(width)[None, :]
    valid = later < stop[:, None]
    return np.minimum(later, max(k.size - 1, 0)), valid


def learn_pulse_height(edges: list[Edge] | EdgeArrays, lo_w: float, hi_w: float, min_bins: int, max_bins: int,
                       min_count: int) -> float | None:
    """Height (W) of the household's recurring short pulse (the fridge compressor), or None.

    Every up-edge of ``lo_w``..``hi_w`` followed by a down-edge of matching size (within
    20 % + 10 W) ``min_bins``..``max_bins`` later is a pulse (the first matching down-edge
    counts); the height is the median of the densest +-10 % cluster of pulse heights, if it
    holds ``min_count`` pulses.  ``edges`` in time order.
    """
    k, _, v = _columns(edges)
    ups = np.flatnonzero((v >= lo_w) & (v <= hi_w))
    if ups.size < min_count:
        return None
    later, valid = _followers(k, ups, max_bins)
    up, dn = v[ups][:, None], v[later]
    match = valid & (dn < 0) & (np.abs(up + dn) <= 0.2 * up + 10.0)
    first = np.argmax(match, axis=1)                                   # the first match
    found = match.any(axis=1)
    r = np.flatnonzero(found)
    heights = v[ups[r]][k[later[r, first[r]]] - k[ups[r]] >= min_bins]
    if heights.size < min_count:
        return None
    h = np.sort(heights)
    counts = np.count_nonzero(np.abs(h[None, :] / h[:, None] - 1.0) <= 0.1, axis=1)
    if counts.max() < min_count:
        return None
    centre = h[int(np.argmax(counts))]
    return float(np.median(h[np.abs(h / centre - 1.0) <= 0.1]))


def pair_pulses(edges: list[Edge] | EdgeArrays, fridge_w: float | None, big_w: float, big_max_bins: int,
                fridge_bins: tuple[int, int], fridge_band: float,
                fridge_ratio: tuple[float, float], y: np.ndarray | None = None,
                big_hold: float = 0.0) -> list[tuple[int, int, str]]:
    """Edges explained as short pulses: ``(i_up, j_down, kind)`` with indices into ``edges``
    (in time order).

    ``"big"``: an up-edge of at least ``big_w`` and the first later down-edge within
    ``big_max_bins`` matching it within 15 % + 20 W (kettles, cookers, water heaters: no
    charger draws that much), over which the load ``y`` (shape (m,), W, the signal the
    edges were found in; None: not checked) held: between the two switchings it never fell
    below its level just before the up-edge plus ``big_hold`` times the pulse (the smaller of
    the two sizes).  A load that fell back below that was off in between, so that down-edge
    belongs to another appliance and the next one is tried.  ``"fridge"``: an up-edge within ``fridge_band`` of the
    learned pulse height ``fridge_w`` and the first later down-edge ``fridge_bins`` away
    whose size is ``fridge_ratio`` of the up (the compressor's power sags during a run).
    """
    k, _, v = _columns(edges)
    used: set[int] = set()
    out: list[tuple[int, int, str]] = []
    big = np.flatnonzero(v >= big_w).tolist()
    kl, vl = (k.tolist(), v.tolist()) if big else ([], [])
    kl1 = _columns(edges).k1.tolist() if big else []
    for i in big:
        ku, up = kl[i], vl[i]
        for j in range(i + 1, len(kl)):
            kd, dn = kl[j], vl[j]
            if kd - ku > big_max_bins:
                break
            if j not in used and dn < 0 and abs(up + dn) <= 0.15 * up + 20.0:
                if y is not None and big_hold > 0 and kd > kl1[i]:
                    if y[kl1[i]: kd].min() < y[max(ku - 1, 0)] + big_hold * min(up, -dn):
                        continue
                out.append((i, j, "big"))
                used.update((i, j))
                break
    if fridge_w is None:
        return out
    lo_b, hi_b = fridge_bins
    lo_r, hi_r = fridge_ratio
    # every (up, down) that could be a run, best first: the off-step closest to 0.93 of the
    # on-step (a run sags ~10 %), so a TV switching off in between does not take the place
    # of the compressor's own off-step
    free = np.ones(k.size, dtype=bool)
    free[list(used)] = False
    ups = np.flatnonzero(free & (np.abs(v / fridge_w - 1.0) <= fridge_band))
    later, valid = _followers(k, ups, hi_b)
    up, dn = v[ups][:, None], v[later]
    ratio = -dn / up
    ok = (valid & free[later] & (dn < 0) & (k[later] - k[ups][:, None] >= lo_b)
          & (lo_r <= ratio) & (ratio <= hi_r))
    r, c = np.nonzero(ok)
    options = zip(np.abs(ratio[r, c] - 0.93).tolist(), ups[r].tolist(), later[r, c].tolist())
    for _, i, j in sorted(options):
        if i not in used and j not in used:
            out.append((i, j, "fridge"))
            used.update((i, j))
    return out


def subtract_pulses(y: np.ndarray, edges: list[Edge] | EdgeArrays, pairs: list[tuple[int, int, str]]) -> np.ndarray:
    """``y`` with each pulse taken out: a fridge run as a ramp from its on-size to its off-size
    (the compressor's sag), a big load as a block of the smaller of the two (what is left
    over is another appliance switching in the same minute, and stays).  Shape kept.

    All pulses in one pass: the bins of each pulse (ramp between the switchings, then the
    bins inside its on- and its off-switching) are taken out in the order of ``pairs``,
    the ramp as ``np.linspace`` makes it."""
    r = y.copy()
    if not pairs:
        return r
    k0, k1, v = _columns(edges)
    i, j, kind = zip(*pairs)
    i, j = np.array(i), np.array(j)
    ku0, ku1, up, kd0, kd1, dn = k0[i], k1[i], v[i], k0[j], k1[j], v[j]
    big = np.array(kind) == "big"
    a = np.where(big, np.minimum(up, -dn), up)
    b = np.where(big, np.minimum(up, -dn), -dn)
    # three runs of bins per pulse, in order: the ramp [ku1, kd0), the on-switching
    # [ku0, ku1), the off-switching [kd0, kd1)
    start = np.stack((ku1, ku0, kd0), axis=1).ravel()
    lens = np.maximum(np.stack((kd0 - ku1, ku1 - ku0, kd1 - kd0), axis=1).ravel(), 0)
    run = np.repeat(np.arange(lens.size), lens)
    pos = np.arange(run.size) - (np.cumsum(lens) - lens)[run]
    idx = start[run] + pos
    pulse, part = run // 3, run % 3
    ar, br, n = a[pulse], b[pulse], lens[run]
    # the ramp: np.linspace(a, b, n), i.e. j * step + a and the last bin at b
    div = np.maximum(n - 1, 1)
    delta = br - ar
    step = delta / div
    j = pos.astype(np.float64)
    ramp = np.where(step == 0, j / div * delta, j * step) + ar
    ramp = np.where((pos == n - 1) & (n > 1), br, ramp)
    # the switchings: what of the pulse each bin holds
    ref = np.where(part == 1, y[ku0 - 1][pulse], y[np.minimum(kd1, y.size - 1)][pulse])
    held = np.clip(y[idx] - ref, 0.0, np.where(part == 1, ar, br))
    np.subtract.at(r, idx, np.where(part == 0, ramp, held))
    return r


# ----------------------------------------------------------------------------- step-free


def step_free(y: np.ndarray, edges: list[Edge] | EdgeArrays, bg: np.ndarray) -> np.ndarray:
    """``y`` with every edge taken out: the differences inside an edge (``d[k0 - 1:k1]``,
    ``d = np.diff(y)``) are replaced by the background slope ``bg`` and the levels after it
    shift with them.  What is left is the smooth part of the load (a charger's taper,
    drifts, wobble), with an arbitrary offset.  Shape (m,) -> (m,)."""
    if y.size < 2:
        return y.copy()
    d = np.diff(y)
    k0, k1, _ = _columns(edges)
    if k0.size and k0.min() >= 1:
        # the differences inside any edge: +1 where one starts, -1 where it ends
        marks = np.zeros(d.size + 1, dtype=np.int64)
        np.add.at(marks, k0 - 1, 1)
        np.add.at(marks, np.minimum(k1, d.size), -1)
        inside = np.cumsum(marks[:-1]) > 0
        d[inside] = bg[inside]
    else:  # no edges, or one starting at bin 0 (no difference before it): as sliced
        for a, b in zip(k0.tolist(), k1.tolist()):
            d[a - 1:b] = bg[a - 1:b]
    return np.concatenate((y[:1], y[0] + np.cumsum(d)))
