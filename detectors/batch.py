"""Batch scan of many households at once: a vectorised pre-screen, then the core where it
matters.  numpy, no I/O.

:func:`scan_batch` gives exactly what :func:`detectors.detect_sessions` gives for each
household (it *is* that call for every household the screen keeps), but most households
are dismissed by :func:`screen`, which looks at the whole (households x time) array with a
few dozen numpy passes and no Python loop over samples.

The screen looks for what every session of the core starts from: a *taper*, a smooth fall
of the step-free signal (:mod:`detectors.charging`, steps 3-4).  It builds a cheap
step-free signal of its own on one-minute bins:

1. median of three bins (one-bin spikes out, as the core's first step);
2. bin differences; one steeper than any taper the core accepts (1.2 x ``max_taper_w`` /
   shortest time constant: 90 W a minute) is a switch and counts as 0; one departing from
   the local background slope (median of itself and the differences two bins either side,
   so a switch straddling two bins is not its own background) by at least ``max(8 W, 2 x
   RMS of the departures in its 32-bin block)`` is a switch and is replaced by that slope
   (the core: 10 W or 2 x RMS against an 11-bin median, edges of >= 15 W only; the screen
   takes out *more* switches, which does not shorten a taper: a taper's own differences
   change smoothly and do not depart from their neighbours');
3. falling runs: the 8-bin slope of the cumulative sum below ``slope_share`` (0.6) of the
   core's ``taper_slope_w_min``, runs bridged over gaps of up to 2 bins and widened by 4
   bins each side (as :func:`detectors.taper.falling_runs`), at least ``min_bins_share``
   (0.8) of the core's shortest taper long, falling (5-bin means at the ends) by at least
   ``fall_share`` (0.6) of the core's ``min_taper_w``.

4. and the load that lasts fell gradually somewhere: the streaming detector's re-run
   trigger (running minimum over ``trigger_min_s``, one-bin drops over ``trigger_bin_w``
   not counted, a fall of ``lasting_share`` (0.8) x ``trigger_fall_w`` within ``trigger_s``)
   over every window, with running minima and maxima (van Herk / Gil-Werman).  A compressor's sagging run passes step 3 but not this: on a week of quiet
   homes (standby and fridge, a third charging) the screen kept 98 % of households with
   steps 1-3, 34 % with step 4.

A household passing both anywhere is handed to the core whole, so the sessions are the
core's to the last digit; the margins (a taper the screen must see at 60 % of the slope and
fall the core needs) are what keeps the screen from dropping a household whose session the
core would find.  That is checked in tests/test_batch.py against the per-household result
on the demo scenario of several seeds, busy evenings and the real household included.

Data at 1 s to 60 s spacing is averaged into one-minute bins first (bin edges from the
first readings' phase, as the core); coarser data is not screened (every household goes to
the core).  Throughput and where the time goes: bench/bench_batch.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from detectors.charging import ChargingSession, DetectorSettings, detect_sessions, gradual_fall


@dataclass(frozen=True, slots=True)
class ScreenSettings:
    """The screen's margins against the core's thresholds (shares of the core's value) and
    its own switch threshold.

    Attributes:
        slope_share: share of ``taper_slope_w_min`` a falling bin needs.
        fall_share: share of ``min_taper_w`` a run must fall.
        min_bins_share: share of the core's shortest taper (``min_taper_s``, widened run) a
            run must last.
        switch_w: smallest departure (W) from the background slope taken as a switch.
        big_share: a bin difference beyond this share of the steepest taper the core
            accepts (``max_taper_w`` over the shortest time constant) is a switch outright.
        switch_k: or this many times the local RMS of the departures, where that is more.
        block: households screened together (keeps the working set in the CPU cache).
        lasting_share: share of the streaming trigger's ``trigger_fall_w`` the lasting load
            must fall by (step 4 of the module docstring).
    """

    slope_share: float = 0.6
    fall_share: float = 0.6
    min_bins_share: float = 0.8
    switch_w: float = 8.0
    big_share: float = 1.2
    switch_k: float = 2.0
    block: int = 16
    lasting_share: float = 0.8


def _check(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(t, dtype=np.float64)
    p = np.asarray(p)
    if p.dtype not in (np.float32, np.float64):
        p = p.astype(np.float64)
    if t.ndim != 1 or p.ndim != 2 or p.shape[1] != t.size:
        raise ValueError(f"need t of shape (n,) and power_w of shape (h, n), got {t.shape} and {p.shape}")
    if np.isnan(t).any():
        raise ValueError("t has NaN")
    if t.size > 1 and not np.all(np.diff(t) > 0):
        raise ValueError("t must be strictly increasing")
    return t, p


def _med3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))


def _fill(x: np.ndarray) -> np.ndarray:
    """NaN bins hold the previous value; leading NaN take the first valid value (0 in an
    all-NaN row).  Shape kept."""
    bad = np.isnan(x)
    if not bad.any():
        return x
    idx = np.where(bad, -1, np.arange(x.shape[1])[None, :])
    np.maximum.accumulate(idx, axis=1, out=idx)
    has = ~bad.all(axis=1)
    first = np.where(has, np.argmax(~bad, axis=1), 0)
    idx = np.where(idx < 0, first[:, None], idx)
    out = np.take_along_axis(x, idx, axis=1)
    return np.where(np.isnan(out), 0.0, out).astype(x.dtype, copy=False)


def to_bins(t: np.ndarray, power_w: np.ndarray, grid_s: float = 60.0) -> np.ndarray | None:
    """The readings as ``grid_s`` bin means, for all households at once.

    Args:
        t: shape (n,), float64, UTC epoch s, strictly increasing.
        power_w: shape (h, n), float32 or float64, W; NaN = missing.

    Returns:
        Shape (h, m), same dtype, bin means (NaN where a bin has no reading), or None when
        the typical spacing is coarser than ``grid_s`` (not screened).
    """
    if t.size < 2:
        return None
    step = float(np.median(np.diff(t)))
    if step > grid_s * 1.05:
        return None
    if abs(step - grid_s) <= 0.05 * grid_s and np.all(np.abs(np.diff(t) - grid_s) <= 0.45 * grid_s):
        return power_w  # one reading a bin already
    from detectors import steps

    phase = steps.grid_phase(t[:16], grid_s)
    offset = steps.bin_offset(phase, grid_s)
    t0 = math.floor((t[0] - offset) / grid_s) * grid_s + offset
    k = ((t - t0) // grid_s).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, np.diff(k) > 0])
    ok = ~np.isnan(power_w)
    sums = np.add.reduceat(np.where(ok, power_w, 0), starts, axis=1)
    counts = np.add.reduceat(ok, starts, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (sums / counts).astype(power_w.dtype, copy=False)
    # empty bins between readings (gaps) are not materialised: a gap is one difference
    return means


def _med3_into(a: np.ndarray, b: np.ndarray, c: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> None:
    """``out = median(a, b, c)`` elementwise, with one scratch array (same shapes)."""
    np.minimum(a, b, out=tmp)
    np.maximum(a, b, out=out)
    np.minimum(out, c, out=out)
    np.maximum(out, tmp, out=out)


def _running(x: np.ndarray, w: int, fn: np.ufunc) -> np.ndarray:
    """Running ``fn`` (``np.minimum`` or ``np.maximum``) over windows ``[i, i + w)`` of each
    row: shape (b, m) -> (b, m - w + 1), with about three operations per element whatever
    ``w`` (van Herk / Gil-Werman: prefix and suffix accumulations in blocks of ``w``, one
    vectorised step per position in the block; ``ufunc.accumulate`` along a short axis is
    several times slower)."""
    b, m = x.shape
    nb = -(-m // w)
    fill = np.inf if fn is np.minimum else -np.inf
    pre = np.concatenate([x, np.full((b, nb * w - m), fill, x.dtype)], axis=1)
    suf = pre.copy()
    p3, s3 = pre.reshape(b, nb, w), suf.reshape(b, nb, w)
    for j in range(1, w):
        fn(p3[:, :, j - 1], p3[:, :, j], out=p3[:, :, j])
        fn(s3[:, :, w - j], s3[:, :, w - j - 1], out=s3[:, :, w - j - 1])
    return fn(suf[:, :m - w + 1], pre[:, w - 1:m])


def _lasting_fall(x: np.ndarray, s: DetectorSettings, sc: ScreenSettings) -> np.ndarray:
    """Whether the load that lasts fell gradually: the streaming detector's re-run trigger
    (``StreamingDetector._recent_fall``) over every window of ``trigger_s``, with margin.

    The running minimum over ``trigger_min_s`` (longer than a fridge run) takes out short
    loads; its one-bin drops over ``trigger_bin_w`` are switches and not counted; what is
    left must fall by ``lasting_share`` x ``trigger_fall_w`` within ``trigger_s``.  A taper
    always does (charging.py, ``trigger_bin_w``); a quiet home with a fridge never does.
    Shape (b, m) float32 W, no NaN -> (b,) bool.
    """
    b, m = x.shape
    w, win = s.bins(s.trigger_min_s), s.bins(s.trigger_s)
    if m <= w + 1:
        return np.ones(b, dtype=bool)
    g = gradual_fall(_running(x, w, np.minimum), s.trigger_bin_w)
    head = g[:, :win]
    drop = (np.maximum.accumulate(head, axis=1) - head).max(axis=1)  # windows cut by the start
    if g.shape[1] > win:
        drop = np.maximum(drop, (_running(g, win, np.maximum) - g[:, win - 1:]).max(axis=1))
    return drop >= sc.lasting_share * s.trigger_fall_w


def _screen_block(x: np.ndarray, s: DetectorSettings, sc: ScreenSettings) -> np.ndarray:
    """Screen one block of binned households: shape (b, m) -> (b,) bool.  float32
    throughout (W; sums of a few thousand W keep ~1e-3 W)."""
    b, m = x.shape
    if m < 12:
        return np.zeros(b, dtype=bool)
    g = s.grid_s
    x = _fill(np.asarray(x, dtype=np.float32))
    f32 = np.float32
    # 1. median of three bins
    y = x.copy()
    tmp = np.empty((b, m), dtype=f32)
    _med3_into(x[:, :-2], x[:, 1:-1], x[:, 2:], y[:, 1:-1], tmp[:, 1:-1])
    # 2. differences; steeper than any taper: a switch (0)
    d = np.empty((b, m - 1), dtype=f32)
    np.subtract(y[:, 1:], y[:, :-1], out=d)
    big = f32(sc.big_share * s.max_taper_w * g / s.taper_tau_s[0])
    np.abs(d, out=tmp[:, :-1])
    d[tmp[:, :-1] > big] = 0.0
    #    background slope: median of the differences two bins either side (a switch over
    #    one or two bins is never its own background)
    bg = d.copy()
    _med3_into(d[:, :-4], d[:, 2:-2], d[:, 4:], bg[:, 2:-2], tmp[:, :m - 5])
    e = tmp[:, :-1]
    np.subtract(d, bg, out=e)
    np.abs(e, out=e)
    #    noise-raised threshold: RMS of the (clipped) departures in blocks of 32 bins
    q = 32
    nb = (m - 1) // q
    sq = np.minimum(e, f32(1.5 * sc.switch_w))
    np.multiply(sq, sq, out=sq)
    rms = np.empty((b, m - 1), dtype=f32)
    if nb:
        blk = np.sqrt(sq[:, :nb * q].reshape(b, nb, q).mean(axis=2))
        rms[:, :nb * q] = np.repeat(blk, q, axis=1)
        rms[:, nb * q:] = blk[:, -1:]
    else:
        rms[:] = np.sqrt(sq.mean(axis=1, keepdims=True))
    np.multiply(rms, f32(sc.switch_k), out=rms)
    np.maximum(rms, f32(sc.switch_w), out=rms)
    switch = e >= rms
    np.copyto(d, bg, where=switch)
    # 3. the step-free proxy and its falling runs
    sf = np.empty((b, m), dtype=f32)
    sf[:, 0] = 0.0
    np.cumsum(d, axis=1, out=sf[:, 1:])
    slope_thr = sc.slope_share * s.taper_slope_w_min * g / 60.0
    falling = np.zeros((b, m), dtype=bool)
    np.less(sf[:, 8:] - sf[:, :-8], f32(-8.0 * slope_thr), out=falling[:, 4:-4])
    flat = np.flatnonzero(falling.ravel())
    if flat.size == 0:
        return np.zeros(b, dtype=bool)
    cut = np.flatnonzero(np.diff(flat) > 3) + 1   # 3 quiet bins end a run (rows never join: 8 quiet bins between)
    first, last = flat[np.r_[0, cut]], flat[np.r_[cut - 1, flat.size - 1]]
    a, z = first - 4, last + 4
    long_enough = (z - a) >= sc.min_bins_share * s.bins(s.min_taper_s)
    row = a // m
    col_a, col_z = a - row * m, z - row * m
    sff = sf.ravel()

    def sm(col: np.ndarray) -> np.ndarray:  # 5-bin mean, ends padded by repetition
        acc = np.zeros(col.size)
        for j in (-2, -1, 0, 1, 2):
            acc += sff[row * m + np.clip(col + j, 0, m - 1)]
        return acc / 5.0

    fall = sm(col_a) - sm(col_z)
    hit = long_enough & (fall >= sc.fall_share * s.min_taper_w)
    out = np.zeros(b, dtype=bool)
    out[row[hit]] = True
    # 4. and the load that lasts fell gradually somewhere (the streaming trigger)
    if out.any():
        out[out] = _lasting_fall(x[out], s, sc)
    return out


def screen(t: np.ndarray, power_w: np.ndarray, settings: DetectorSettings | None = None,
           screen_settings: ScreenSettings | None = None) -> np.ndarray:
    """Which households could hold a charging session (module docstring).

    Args:
        t: shape (n,), float64, UTC epoch s, strictly increasing, shared by the households.
        power_w: shape (h, n), float32 or float64, W; NaN = missing.
        settings: the core's constants (the screen's thresholds are shares of them).
        screen_settings: the screen's margins.

    Returns:
        Shape (h,), bool: True = hand to the core.  Coarser than one reading a minute: all
        True.

    Raises:
        ValueError: shapes, NaN in ``t`` or ``t`` not strictly increasing.
    """
    s = settings or DetectorSettings()
    sc = screen_settings or ScreenSettings()
    t, p = _check(t, power_w)
    h = p.shape[0]
    x = to_bins(t, p, s.grid_s)
    if x is None:
        return np.ones(h, dtype=bool)
    out = np.zeros(h, dtype=bool)
    for i in range(0, h, sc.block):
        out[i:i + sc.block] = _screen_block(x[i:i + sc.block], s, sc)
    return out


def scan_batch(t: np.ndarray, power_w: np.ndarray, *, tz: str = "Asia/Shanghai",
               settings: DetectorSettings | None = None,
               screen_settings: ScreenSettings | None = None) -> list[list[ChargingSession]]:
    """Charging sessions of many households sharing one time axis.

    Args:
        t: shape (n,), float64, UTC epoch s, strictly increasing.
        power_w: shape (h, n), float32 or float64, W; NaN = missing reading.
        tz: IANA zone of the households (night-time feature).
        settings: detector constants.
        screen_settings: the screen's margins (:class:`ScreenSettings`).

    Returns:
        One list per household (row), each what :func:`detectors.detect_sessions` returns
        for that row: the core runs on every row :func:`screen` keeps; the others have none.

    Raises:
        ValueError: as :func:`screen`.
    """
    keep = screen(t, power_w, settings, screen_settings)
    t = np.asarray(t, dtype=np.float64)
    return [detect_sessions(t, np.asarray(power_w[i], dtype=np.float64), settings, tz=tz) if keep[i] else []
            for i in range(keep.size)]
