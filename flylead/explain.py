"""``flylead explain``: a picture of one household's load with the detected sessions.

For the grid worker who visits: the whole period on top (local time of the compound,
sessions shaded and labelled with start, end, kWh, profile and confidence), and below it one
close-up per session (the first four by confidence) where the charger's plateau and its
taper can be seen, the taper's onset marked when the detector reports it.

Input is one household of the demo scenario, polled as ``flylead evaluate`` polls it (so
the picture shows what was scored), or one meter of a CSV file in ``scan-file``'s long
format (``meter_id,timestamp,power_w``).  Matplotlib draws on the Agg canvas.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from detectors import ChargingSession
from detectors.charging import CONFIDENT_START

__all__ = ["FORMATS", "ExplainError", "HouseholdLoad", "from_csv", "from_scenario", "render_png"]

#: Picture formats written, by the output's extension.
FORMATS = ("png", "pdf", "svg")

#: Close-ups drawn at most (the most confident sessions).
MAX_CLOSEUPS = 4
#: Shown before and after a session in its close-up (s).
CLOSEUP_MARGIN_S = 1.5 * 3600.0
#: Window of the running median drawn in the close-ups (s): longer than a fridge run
#: (10-30 min, brief), shorter than a taper.
MEDIAN_S = 31 * 60.0


class ExplainError(ValueError):
    """Input that cannot be explained: unknown household or meter, unreadable CSV."""


@dataclass(slots=True)
class HouseholdLoad:
    """One household's readings and where they come from.

    Attributes:
        household: household or meter id.
        t: shape (n,), float64, UTC epoch s, strictly increasing.
        p_w: shape (n,), float64, W (NaN = missing).
        tz: IANA zone of the compound (axis and night-time feature).
        source: one line naming the input.
        truth: (start, end) UTC epoch s of known sessions (simulated input only).
        unusable: CSV rows of this meter not used as given, per reason (``duplicate row``,
            ``conflicting duplicate (later row kept)``, ``missing power_w``: kept as NaN).
    """

    household: str
    t: np.ndarray
    p_w: np.ndarray
    tz: str
    source: str
    truth: list[tuple[float, float]] = field(default_factory=list)
    unusable: dict[str, int] = field(default_factory=dict)


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ExplainError(f"unknown time zone {tz!r} (an IANA name such as Asia/Shanghai)") from None


def from_scenario(seed: int, household: str) -> HouseholdLoad:
    """``household`` of ``demo_scenario(seed)``, polled as :func:`simulators.corpora.sim_corpus`
    polls it (60 s +-5 s, 1 % lost, ``default_rng(seed)`` shared by the households in order).

    Raises:
        ExplainError: no such household in the scenario.
    """
    from simulators.polling import poll
    from simulators.scenario import demo_scenario

    sc = demo_scenario(seed=seed)
    names = [tr.household for tr in sc.traces]
    if household not in names:
        raise ExplainError(f"no household {household!r} in the demo scenario (it has {', '.join(names)})")
    rng = np.random.default_rng(seed)
    for trace in sc.traces:  # the shared generator: poll every household before this one
        t, p = poll(trace, rng)
        if trace.household == household:
            break
    truth = [(s.start, s.end) for s in sc.truth if s.household == household]
    return HouseholdLoad(household, t, p, sc.tz, f"demo scenario seed {seed}, 60 s polls", truth)


def from_csv(path: Path, meter: str, *, tz: str | None = None) -> HouseholdLoad:
    """One meter's power from a long-format CSV (``meter_id,timestamp,power_w``, header first).

    Fields are read by ``scan-file``'s own rules (:func:`flylead.scanfile.parse_cells`), so
    a file gives the same meters and readings in both: meter ids as they are (`` m1`` is
    not ``m1``; empty, whitespace-only and null markers such as ``NA`` are missing),
    timestamps ISO 8601 as pyarrow reads them (not the basic ``20261126T120000Z``; up to
    nanoseconds), without an offset UTC or local time in ``tz`` (as ``scan-file --tz``,
    DST changes included: a repeated ambiguous local time is the later instant, a
    non-existent one is not used), values numbers as pyarrow reads them (not ``1_000`` or
    ``١٠٠``).  Rows of other meters are skipped; every row must have the header's number of
    fields (as ``scan-file``); an empty ``power_w`` (or ``NA``, ``NaN``, ``null`` ...) is a
    missing reading, kept as NaN; a row without a timestamp, at a non-existent local time
    or with an infinite value is not used; duplicated timestamps keep the last row; rows
    may come in any order.  Rows not used as given are counted in
    :attr:`HouseholdLoad.unusable`.

    Args:
        path: the CSV file (UTF-8).
        meter: the ``meter_id`` to draw.
        tz: zone of naive timestamps and of the picture (default Asia/Shanghai for the
            picture, UTC for naive timestamps).

    Raises:
        ExplainError: unreadable file, missing column, a row with the wrong number of
            fields, malformed row of this meter (file, line and column named), or no row of
            this meter (the ids seen are named).
    """
    from flylead.scanfile import ScanError, missing_meter_id, parse_cells, resolve_ambiguous

    if tz:
        _zone(tz)
    seen: dict[str, None] = {}
    times: list[str] = []
    values: list[str] = []
    lines: list[int] = []
    line = 1
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = csv.reader(fh)
            header = [h.strip() for h in next(rows, [])]
            if not header:
                raise ExplainError(f"{path}: file is empty (expected the header meter_id,timestamp,power_w)")
            missing = [c for c in ("meter_id", "timestamp", "power_w") if c not in header]
            if missing:
                raise ExplainError(f"{path}: line 1: missing column(s) {', '.join(missing)} "
                                   f"(explain reads meter_id,timestamp,power_w; header is {','.join(header)})")
            i_m, i_t, i_p = (header.index(c) for c in ("meter_id", "timestamp", "power_w"))
            end = rows.line_num
            for row in rows:
                line, end = end + 1, rows.line_num  # the record's first physical line
                if not row:
                    continue
                if len(row) != len(header):
                    raise ExplainError(f"{path}: line {line}: {len(row)} fields, expected {len(header)} "
                                       f"(the header's)")
                mid = row[i_m]
                if missing_meter_id(mid):
                    continue
                if len(seen) < 1000:
                    seen.setdefault(mid, None)
                if mid != meter:
                    continue
                times.append(row[i_t])
                values.append(row[i_p])
                lines.append(line)
    except OSError as exc:
        raise ExplainError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ExplainError(f"{path}: {_bad_utf8(path)}") from None
    except csv.Error as exc:
        raise ExplainError(f"{path}: line {rows.line_num}: unreadable CSV: {exc}") from None
    if not times:
        shown = ", ".join(list(seen)[:10]) + (" ..." if len(seen) > 10 else "")
        raise ExplainError(f"{path}: no row for meter {meter!r} (meters in the file: {shown or 'none'})")
    unusable: dict[str, int] = {}

    def count(reason: str, n: int) -> None:
        if n:
            unusable[reason] = unusable.get(reason, 0) + n

    try:
        t_ns, v, time_ok, _, amb = parse_cells(path, times, values, lines, tz=tz, count=count)
    except ScanError as exc:
        problem = exc.problem.replace("not an ISO 8601 date and time", "not ISO 8601")
        raise ExplainError(f"{path}: line {exc.line}, column {exc.column}: {problem}") from None
    # kept: usable rows and rows whose only fault is a missing value (NaN: a hole in the picture)
    keep = time_ok & (np.isfinite(v) | np.isnan(v))
    t_ns, v, amb = t_ns[keep], v[keep], amb[keep]
    if tz and amb.any():
        t_ns = resolve_ambiguous(t_ns, amb, tz)
    readings: dict[int, float] = {}
    for ts, p in zip(t_ns.tolist(), v.tolist()):
        if ts in readings:
            old = readings[ts]
            same = old == p or (math.isnan(old) and math.isnan(p))
            reason = "duplicate row" if same else "conflicting duplicate (later row kept)"
            unusable[reason] = unusable.get(reason, 0) + 1
        readings[ts] = p
    if not readings:
        raise ExplainError(f"{path}: no usable row for meter {meter!r} "
                           f"({', '.join(f'{k}: {n}' for k, n in sorted(unusable.items()))})")
    stamps = sorted(readings)
    t = np.array(stamps, dtype=np.int64).astype(np.float64) / 1e9
    p = np.array([readings[x] for x in stamps], dtype=np.float64)
    return HouseholdLoad(meter, t, p, tz or "Asia/Shanghai", f"{path.name}, meter {meter}", unusable=unusable)


def _bad_utf8(path: Path) -> str:
    """Where ``path`` first stops being UTF-8 (re-reads it: only for the error)."""
    with open(path, "rb") as fh:
        for line, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8-sig" if line == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                return f"line {line}: not UTF-8 text: byte 0x{raw[exc.start]:02x} (byte {exc.start + 1} of the line)"
    return "not UTF-8 text"


def _label(s: ChargingSession, zone: ZoneInfo, k: int) -> str:
    a, b = datetime.fromtimestamp(s.start, zone), datetime.fromtimestamp(s.end, zone)
    end = b.strftime("%H:%M") if b.date() == a.date() else b.strftime("%a %H:%M")
    ev = s.evidence or {}
    alt = ev.get("start_alternative_offset_s")
    unsure = ""
    if alt is not None and ev.get("start_confidence", 1.0) < CONFIDENT_START:
        unsure = f", start unsure (or {datetime.fromtimestamp(s.start + alt, zone):%H:%M})"
    return (f"#{k} {a:%a %H:%M}-{end}\n{s.energy_kwh:.2f} kWh, {s.profile.replace('_', '-')}\n"
            f"confidence {s.confidence:.2f}{unsure}")


def _ylim(p: np.ndarray, floor: float = 50.0) -> float:
    """Top of the y axis: the 98th percentile with headroom, so the short kW loads of
    cooking and water heating do not flatten a 100 W charger (they are clipped)."""
    finite = p[np.isfinite(p)]
    if finite.size == 0:
        return max(floor, 1.0)
    return max(float(np.quantile(finite, 0.98)) * 1.3, floor)


def _median(t: np.ndarray, p: np.ndarray, window_s: float = MEDIAN_S) -> np.ndarray:
    """Running median over ``window_s`` (readings within +-window/2; NaN ignored): a fridge
    run (10-30 min) mostly disappears, a taper (tens of minutes) stays."""
    out = np.full(p.size, np.nan)
    lo = np.searchsorted(t, t - window_s / 2)
    hi = np.searchsorted(t, t + window_s / 2, side="right")
    for i in range(p.size):
        w = p[lo[i]:hi[i]]
        w = w[np.isfinite(w)]
        if w.size:
            out[i] = np.median(w)
    return out


def render_png(load: HouseholdLoad, sessions: Sequence[ChargingSession], out: Path, *,
               dpi: int = 110) -> None:
    """Draw ``load`` with ``sessions`` and write a picture to ``out``: PNG, or PDF or SVG
    when ``out`` ends in ``.pdf`` or ``.svg``.

    Layout: the whole period on top (about 1540 x 500 px at the default dpi), then, when
    there are sessions, a row of close-ups (up to :data:`MAX_CLOSEUPS`, most confident
    first, shown in time order) of each session with 1.5 h either side, the polls and their
    31-minute running median, the taper's onset dashed when the session's evidence has
    ``plateau_s``.  Loads above the 98th percentile (x 1.3) are clipped, and said so.

    Raises:
        OSError: ``out`` cannot be written.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, DateFormatter
    from matplotlib.figure import Figure

    zone = _zone(load.tz)
    shown = sorted(sorted(sessions, key=lambda s: -s.confidence)[:MAX_CLOSEUPS], key=lambda s: s.start)
    number = {id(s): k for k, s in enumerate(sorted(sessions, key=lambda s: s.start), start=1)}
    fig = Figure(figsize=(14, 8.5 if shown else 4.8), dpi=dpi, layout="constrained")
    grid = fig.add_gridspec(2 if shown else 1, max(len(shown), 1), height_ratios=[1.15, 1] if shown else [1])
    ax = fig.add_subplot(grid[0, :])
    x = np.array([datetime.fromtimestamp(v, zone) for v in load.t])
    top = _ylim(load.p_w)
    ax.plot(x, load.p_w, color="#1f4e79", linewidth=0.7, label="active power (polls)")
    ax.set_ylim(0, top)
    clipped = int(np.sum(load.p_w > top))
    ax.set_ylabel("active power (W)" + (f", {clipped} readings above {top:.0f} W clipped" if clipped else ""))
    locator = AutoDateLocator(tz=zone)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=zone))
    ax.grid(alpha=0.3)
    for i, (a, b) in enumerate(load.truth):
        ax.axvspan(datetime.fromtimestamp(a, zone), datetime.fromtimestamp(b, zone), ymin=0, ymax=0.03,
                   color="#2e8b57", alpha=0.9, label="simulated truth" if i == 0 else None)
    for i, s in enumerate(sorted(sessions, key=lambda s: s.start)):
        a, b = datetime.fromtimestamp(s.start, zone), datetime.fromtimestamp(s.end, zone)
        ax.axvspan(a, b, color="#e8a33d", alpha=0.28, label="detected charging" if i == 0 else None)
        ax.annotate(_label(s, zone, number[id(s)]), xy=(a, top * (0.97 - 0.2 * (i % 2))), fontsize=8,
                    va="top", ha="left", xytext=(3, 0), textcoords="offset points",
                    bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "#e8a33d", "alpha": 0.9})
    if not sessions:
        ax.text(0.5, 0.92, "no charging session detected", transform=ax.transAxes, ha="center",
                va="top", fontsize=11, color="#555555")
    first, last = (datetime.fromtimestamp(v, zone) for v in (load.t[0], load.t[-1]))
    ax.set_title(f"{load.household}: {load.source}; {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} "
                 f"({load.tz})", fontsize=11, loc="left")
    ax.legend(loc="upper right", fontsize=8)
    for col, s in enumerate(shown):
        z = fig.add_subplot(grid[1, col])
        lo, hi = s.start - CLOSEUP_MARGIN_S, s.end + CLOSEUP_MARGIN_S
        sel = (load.t >= lo) & (load.t <= hi)
        z.plot(x[sel], load.p_w[sel], color="#1f4e79", linewidth=0.7, alpha=0.75, label="polls")
        z.plot(x[sel], _median(load.t[sel], load.p_w[sel]), color="#111111", linewidth=1.4,
               label="31-min median")
        a, b = datetime.fromtimestamp(s.start, zone), datetime.fromtimestamp(s.end, zone)
        z.axvspan(a, b, color="#e8a33d", alpha=0.28)
        for ta, tb in load.truth:
            if ta < hi and tb > lo:
                z.axvspan(datetime.fromtimestamp(ta, zone), datetime.fromtimestamp(tb, zone), ymin=0, ymax=0.03,
                          color="#2e8b57", alpha=0.9)
        plateau = s.evidence.get("plateau_s") if s.evidence else None
        if plateau is not None and math.isfinite(plateau):
            tap = datetime.fromtimestamp(s.start + plateau, zone)
            z.axvline(tap, color="#b03a2e", linestyle="--", linewidth=1.0)
            z.annotate("taper", xy=(tap, 0.88), xycoords=("data", "axes fraction"), xytext=(3, 0),
                       textcoords="offset points", fontsize=8, color="#b03a2e")
        inside = (load.t >= s.start) & (load.t <= s.end)
        z.set_ylim(0, _ylim(load.p_w[inside], floor=s.peak_w * 1.5) if inside.any() else top)
        z.xaxis.set_major_formatter(DateFormatter("%H:%M", tz=zone))
        z.tick_params(axis="x", labelsize=8, rotation=30)
        z.grid(alpha=0.3)
        z.set_title(_label(s, zone, number[id(s)]).replace("\n", ", ", 1).replace("\n", ", "), fontsize=8.5)
        if col == 0:
            z.set_ylabel("W")
            z.legend(loc="lower left", fontsize=7)
    suffix = Path(out).suffix.lower().lstrip(".")
    fig.savefig(out, format=suffix if suffix in FORMATS else "png")
