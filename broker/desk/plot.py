"""The load plot of an alert: a household meter's active power around the alert.

Telemetry is read from the ingest's SQLite store file (table ``telemetry``, written by
:class:`broker.store.SqliteStore`), opened read-only so the desk can never change it.
Matplotlib draws with its object API on the Agg canvas (no pyplot state, so concurrent
requests of the web server's threads do not interfere).
"""

from __future__ import annotations

import io
import json
import sqlite3
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

__all__ = ["PLOT_MARGIN_S", "OPEN_ALERT_SPAN_S", "active_power", "plot_window", "render_plot"]

#: Seconds shown before the alert starts and after it ends: an hour either side shows the
#: household's ordinary load before the charger was plugged in and after it stopped.
PLOT_MARGIN_S = 3600.0
#: Span shown after the start of an alert that is still open: a lead-acid charge takes
#: 8-10 h (docs: domain facts §2), so 12 h covers a whole session.
OPEN_ALERT_SPAN_S = 12 * 3600.0


def plot_window(start: float, end: float | None) -> tuple[float, float]:
    """(t0, t1) UTC epoch s of the plot of an alert from ``start`` to ``end`` (None: open)."""
    stop = end if end is not None else start + OPEN_ALERT_SPAN_S
    return start - PLOT_MARGIN_S, stop + PLOT_MARGIN_S


def active_power(store_path: str | Path, gateway: str, device: str,
                 t0: float, t1: float) -> list[tuple[float, float]]:
    """(ts UTC epoch s, active power W) of ``device`` of ``gateway`` in [t0, t1], by time.

    Raises:
        sqlite3.Error: the store file is missing or not a flylead store (the message of
            the caller names the file).
    """
    uri = f"{Path(store_path).resolve().as_uri()}?mode=ro"
    db = sqlite3.connect(uri, uri=True, timeout=5.0)
    try:
        rows = db.execute(
            "SELECT ts, values_json FROM telemetry WHERE device = ? AND gateway = ?"
            " AND ts BETWEEN ? AND ? ORDER BY ts", (device, gateway, t0, t1)).fetchall()
    finally:
        db.close()
    points = []
    for ts, values in rows:
        p = json.loads(values).get("active_power")
        if p is not None:
            points.append((float(ts), float(p)))
    return points


def render_plot(points: list[tuple[float, float]], start: float, end: float | None,
                tz: ZoneInfo, title: str) -> bytes:
    """A PNG (bytes, 800x300 px) of ``points`` with the alert span shaded; times on the
    x axis in ``tz``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.dates import DateFormatter
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3), dpi=100)
    ax = fig.add_subplot()
    t0, t1 = plot_window(start, end)
    x0, x1 = (datetime.fromtimestamp(t, tz) for t in (t0, t1))
    if points:
        ax.plot([datetime.fromtimestamp(t, tz) for t, _ in points], [p for _, p in points],
                color="#1f4e79", linewidth=1.0, label="active power")
    else:
        ax.text(0.5, 0.5, "no telemetry for this meter in this window", ha="center",
                va="center", transform=ax.transAxes, color="#666666")
    ax.axvspan(datetime.fromtimestamp(start, tz),
               datetime.fromtimestamp(end if end is not None else t1 - PLOT_MARGIN_S, tz),
               color="#e8a33d", alpha=0.25, label="alert")
    ax.set_xlim(x0, x1)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("active power (W)")
    ax.set_xlabel(f"time ({tz.key})")
    ax.xaxis.set_major_formatter(DateFormatter("%m-%d %H:%M", tz=tz))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
