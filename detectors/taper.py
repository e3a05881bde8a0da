"""Tapers: the smooth, exponential fall of a charger's power at the end of charging
(constant-voltage stage).  numpy only, no I/O.

Works on the step-free signal (:func:`detectors.steps.step_free`: shape (m,), float64, W,
one value per bin, arbitrary offset), where lamps, TVs and fridges switching on or off
leave no trace, so a taper under a lamp going off is still a taper.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from detectors.steps import pad_edge


class Taper(NamedTuple):
    """A smooth fall fitted with ``c + amp_w * exp(-(k - i0) / tau_bins)`` for ``k >= i0``
    (``c + amp_w`` before).

    Attributes:
        i0: onset bin (end of the plateau).
        i1: last bin of the fall (bins).
        tau_bins: time constant (bins).
        amp_w: amplitude of the exponential (W).
        fall_w: smooth fall over [i0, i1] (W).
        share: inverse participation ratio of the (5-bin smoothed) fall over its bins: 1 /
            effective number of bins carrying it.
        rmse_w: root-mean-square residual of the fit (W).
        ramp_rmse_w: the same for the best straight ramp (:func:`fit_ramp`, W).
    """

    i0: int
    i1: int
    tau_bins: float
    amp_w: float
    fall_w: float
    share: float
    rmse_w: float
    ramp_rmse_w: float


#: Time constants tried by the fit (bins = minutes at the default grid): 5 to 60 min,
#: geometric.  §2 model: lithium taper_s / 3 = 10-30 min, lead-acid stage2_s / 4 = 15-38 min.
_TAUS = np.geomspace(5.0, 60.0, 14)
#: ``exp(-t / tau)`` for each of :data:`_TAUS` and t = 0..255 bins, shape (14, 256): the fit's
#: shapes are looked up here (numpy's exp gives an element the same value in any array).
_EXP = np.exp(-np.arange(256, dtype=float)[None, :] / _TAUS[:, None])


def slope(y: np.ndarray, half: int = 4) -> np.ndarray:
    """Centred slope of ``y`` over ``2 * half`` bins (W/bin; 0 within ``half`` of the ends).
    Shape (m,) -> (m,)."""
    out = np.zeros(y.size)
    if y.size > 2 * half:
        out[half:-half] = (y[2 * half:] - y[: -2 * half]) / (2 * half)
    return out


def falling_runs(sf: np.ndarray, slope_w_bin: float, half: int = 4) -> list[tuple[int, int]]:
    """Stretches where ``sf`` falls faster than ``slope_w_bin`` (gaps up to 2 bins bridged),
    widened by ``half`` bins each side: list of [a, b] bins."""
    m = sf.size
    idx = np.flatnonzero(slope(sf, half) < -slope_w_bin)
    if idx.size == 0:
        return []
    cut = np.flatnonzero(np.diff(idx) > 3) + 1  # 3 or more quiet bins end a run
    firsts, lasts = idx[np.concatenate(([0], cut))], idx[np.concatenate((cut - 1, [idx.size - 1]))]
    return [(max(int(i) - half, 0), min(int(j) + half, m - 1)) for i, j in zip(firsts, lasts)]


def participation(drops: np.ndarray) -> tuple[float, float]:
    """Net fall (W) of bin drops (positive = falling) and its inverse participation ratio."""
    net = float(drops.sum())
    if net <= 0:
        return net, 1.0
    pos = drops[drops > 0]
    return net, float(np.sum(pos ** 2)) / net ** 2


def _exp_design(i0r: tuple[int, ...], w0r: int, w1r: int, pre: int, post: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The part of :func:`fit_exponential` that depends only on the window's geometry, with
    bins counted from the fit's ``a``: onsets ``i0r``, window [``w0r``, ``w1r``).

    Returns read-only arrays ``(wgt, n, gm, gc, var, vpos, vden)``: the window weights (S, 1,
    n_bins) of each shift, their count (S, 1), the mean (S, T) and the centred values (S,
    T, n_bins) of each shape, its sum of squares (S, T), ``var > 0`` and the divisor.
    Most fits share one geometry, the window clear of the ends of ``sf``: that one is kept
    (:func:`_exp_design_clear`)."""
    i0s = np.array(i0r)
    k = np.arange(w0r, w1r)
    inside = (k[None, :] >= i0s[:, None] - pre) & (k[None, :] < i0s[:, None] + post)   # (S, n)
    ti = k[None, :] - i0s[:, None]                                                      # (S, n)
    t = ti.astype(float)
    if ti.max() < _EXP.shape[1]:  # the exponentials from the table: the same values
        # C order, as np.exp would give it: the reductions below sum in memory order
        shape = np.ascontiguousarray(_EXP[:, np.maximum(ti, 0)].transpose(1, 0, 2))
    else:
        shape = np.exp(-np.clip(t, 0, None)[:, None, :] / _TAUS[None, :, None])
    g = np.where(t[:, None, :] < 0, 1.0, shape)                                          # (S, T, n)
    wgt = inside[:, None, :].astype(float)                                               # (S, 1, n)
    n = wgt.sum(axis=2)                                                                  # (S, 1)
    gm = (g * wgt).sum(axis=2) / n
    gc = (g - gm[..., None]) * wgt
    var = np.sum(gc ** 2, axis=2)
    vpos = var > 0
    vden = np.where(vpos, var, 1.0)
    out = (wgt, n, gm, gc, var, vpos, vden)
    for arr in out:
        arr.flags.writeable = False
    return out


#: :func:`_exp_design` of the window clear of the ends of ``sf``, kept: one per set of
#: ``(pre, post, shifts)``; at the defaults ~0.25 MB for the process, shared by every household.
_exp_design_clear = functools.cache(_exp_design)


def fit_exponential(sf: np.ndarray, a: int, pre: int = 20, post: int = 90,
                    shifts: range = range(-6, 10)) -> tuple[int, float, float, float, float]:
    """Least-squares fit of a plateau ending in an exponential fall near bin ``a``.

    Model over bins [i0 - pre, i0 + post): ``c + A`` before ``i0``, ``c + A exp(-(k - i0) /
    tau)`` after; ``i0`` from ``a + shifts``, ``tau`` from :data:`_TAUS`, ``c`` and ``A``
    linear.  The shapes depend only on where the window lies relative to ``a`` and the ends
    of ``sf`` (:func:`_exp_design`; the usual window, clear of the ends, worked out once),
    so a fit costs a few reductions over the window.

    Returns:
        ``(i0, tau_bins, A W, c W, rmse W)`` of the best fit.
    """
    m = sf.size
    i0s = [a + sh for sh in shifts if 2 <= a + sh < m - 5]
    if not i0s:
        return a, float(_TAUS[0]), 0.0, 0.0, math.inf
    # one window covering every shift; each shift fits its own part of it
    w0, w1 = max(0, i0s[0] - pre), min(m, i0s[-1] + post)
    i0r, w0r, w1r = tuple(i - a for i in i0s), w0 - a, w1 - a
    clear = len(i0s) == len(shifts) and w0r == shifts[0] - pre and w1r == shifts[-1] + post
    wgt, n, gm, gc, var, vpos, vden = (_exp_design_clear if clear else _exp_design)(i0r, w0r, w1r, pre, post)
    yv = sf[w0:w1]
    ym = (yv[None, None, :] * wgt).sum(axis=2) / n
    amp = np.where(vpos, np.sum(gc * yv[None, None, :], axis=2) / vden, 0.0)
    tss = np.sum(((yv[None, None, :] - ym[..., None]) * wgt) ** 2, axis=2)
    mse = np.maximum(tss - amp ** 2 * var, 0.0) / n                                      # (S, T)
    si, ti = np.unravel_index(int(np.argmin(mse)), mse.shape)
    c = float(ym[si, 0] - amp[si, ti] * gm[si, ti])
    return int(i0s[si]), float(_TAUS[ti]), float(amp[si, ti]), c, float(np.sqrt(mse[si, ti]))


def _ramp_design(w0r: int, w1r: int, lengths: tuple[int, ...], shifts: tuple[int, ...]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The part of :func:`fit_ramp` that depends only on the window's geometry (bins [``w0r``,
    ``w1r``) counted from ``i0``): read-only ``(gc, var, vpos, vden)``, the centred ramps
    (shifts, lengths, n_bins), their sums of squares (shifts, lengths), ``var > 0`` and the
    divisor.  The window clear of the ends of ``sf`` is kept (:func:`_ramp_design_clear`)."""
    ln = np.array(lengths, dtype=float)[None, :, None]
    t = np.arange(w0r, w1r)[None, None, :] - np.array(shifts)[:, None, None]
    g = np.clip(1.0 - t / ln, 0.0, 1.0)                                                  # (shifts, L, n)
    gc = g - g.mean(axis=2, keepdims=True)
    var = np.sum(gc ** 2, axis=2)
    vpos = var > 0
    vden = np.where(vpos, var, 1.0)
    out = (gc, var, vpos, vden)
    for arr in out:
        arr.flags.writeable = False
    return out


#: :func:`_ramp_design` of the window clear of the ends of ``sf``, kept: one per set of
#: ``(pre, post, lengths, shifts)``; at the defaults ~0.07 MB for the process.
_ramp_design_clear = functools.cache(_ramp_design)


def fit_ramp(sf: np.ndarray, i0: int, pre: int = 20, post: int = 90,
             lengths: tuple[int, ...] = (3, 5, 8, 12, 17, 23, 30, 40, 55, 75),
             shifts: range = range(-6, 10, 2)) -> float:
    """Root-mean-square residual (W) of the best straight-ramp model over the window of
    :func:`fit_exponential`: ``c + A`` before the ramp, falling linearly over ``L`` bins to
    ``c``.  A charger's exponential fits better than any ramp; a lamp dimming, a heater
    throttling or a smoothed step fit a ramp at least as well.  The ramps depend only on
    the window's geometry (:func:`_ramp_design`; the usual one worked out once)."""
    m = sf.size
    w0, w1 = max(0, i0 - pre), min(m, i0 + post)
    yv = sf[w0:w1]
    ym = yv.mean()
    yc = yv - ym
    tss = float(np.sum(yc ** 2))
    clear = w0 == i0 - pre and w1 == i0 + post
    gc, var, vpos, vden = (_ramp_design_clear if clear else _ramp_design)(w0 - i0, w1 - i0, tuple(lengths),
                                                                          tuple(shifts))
    amp = np.where(vpos, np.matmul(gc, yc) / vden, 0.0)                                   # (shifts, lengths)
    best = float(np.min(tss - amp ** 2 * var))
    return float(np.sqrt(max(best, 0.0) / yv.size))


def find_tapers(sf: np.ndarray, *, min_fall_w: float, max_fall_w: float, slope_w_bin: float,
                min_bins: int, max_share: float, tau_bins: tuple[float, float],
                max_rel_rmse: float) -> list[Taper]:
    """Smooth exponential falls of the step-free signal ``sf`` (shape (m,), W).

    A falling stretch (slope below ``-slope_w_bin``) of at least ``min_bins`` whose 5-bin
    smoothed fall is ``min_fall_w``..``max_fall_w`` and spread (inverse participation ratio at most
    ``max_share``), and which an exponential fits (:func:`fit_exponential`: amplitude at
    least ``min_fall_w``, time constant within ``tau_bins``, residual at most
    ``max_rel_rmse`` of the amplitude).  Where touching falling runs each failed (a slow
    lead-acid taper paused by a wobbling load falls in pieces of 30-40 W), the stretch
    they make together is tried as one.
    """
    if sf.size < 12:
        return []
    sm = np.convolve(pad_edge(sf, 2), np.ones(5) / 5.0, mode="valid")

    def taper(a: int, b: int) -> Taper | None:
        if b - a < min_bins or not min_fall_w <= sm[a] - sm[b] <= max_fall_w:
            return None
        net, share = participation(-np.diff(sm[a:b + 1]))
        if net < min_fall_w or share > max_share:
            return None
        i0, tau, amp, _, rmse = fit_exponential(sf, a)
        if amp < min_fall_w or not tau_bins[0] <= tau <= tau_bins[1] or rmse > max_rel_rmse * amp:
            return None
        return Taper(i0, b, tau, amp, net, share, rmse, fit_ramp(sf, i0))

    runs = falling_runs(sf, slope_w_bin)
    found = [taper(a, b) for a, b in runs]
    out = [tp for tp in found if tp is not None]
    # a slow taper paused by a wobble falls in pieces that each fall short of min_fall_w:
    # where touching runs all failed, the stretch they make together is tried as one
    k = 0
    while k < len(runs):
        j = k
        while j + 1 < len(runs) and runs[j + 1][0] <= runs[j][1]:
            j += 1
        if j > k and all(tp is None for tp in found[k:j + 1]):
            tp = taper(runs[k][0], runs[j][1])
            if tp is not None:
                out.append(tp)
        k = j + 1
    return sorted(out, key=lambda tp: tp.i0)
