"""Replay of a real household: the bundled UCI minute data as a :class:`LoadTrace`.

Data: "Individual household electric power consumption", UCI Machine Learning Repository,
Georges Hébrail and Alice Bérard, <https://archive.ics.uci.edu/dataset/235>, CC BY 4.0.
The bundled slice (``simulators/data/uci-household-1min-2006-12-16_20.txt.gz``) is one
house in Sceaux, France, one reading a minute from 16/12/2006 17:24 to 20/12/2006 23:59
local time.  The house has no e-bike: it is a real negative for the detector, and modelled
sessions can be added on top with :func:`simulators.loads.inject_sessions`.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from importlib import resources
from zoneinfo import ZoneInfo

import numpy as np

from simulators.trace import LoadTrace

UCI_FILE = "uci-household-1min-2006-12-16_20.txt.gz"
_MINUTES_PER_DAY = 1440


def parse_uci(lines: Iterable[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse UCI household text (header line, then ``dd/mm/yyyy;hh:mm:ss;kW;kvar;V;...``).

    The result is a gap-free minute series from the first to the last timestamp.  Missing
    readings (``?``) and missing minutes hold the previous value (chosen: a meter that
    misses a reading keeps showing its last one); leading missing readings take the first
    valid value.

    Args:
        lines: the file's lines, header first.

    Returns:
        ``(minute_of_day, power_w, voltage_v)``: shapes (n,), int64 local minute of the day
        0-1439, float64 W (``Global_active_power`` x 1000), float64 V.

    Raises:
        ValueError: no data row, a malformed row, timestamps not increasing, or no valid
            reading at all.
    """
    stamps: list[int] = []
    power: list[float] = []
    volts: list[float] = []
    for lineno, line in enumerate(lines, start=1):
        if lineno == 1 or not line.strip():
            continue
        fields = line.strip().split(";")
        if len(fields) < 5:
            raise ValueError(f"UCI line {lineno}: expected at least 5 ';' fields, got {line!r}")
        try:
            stamp = datetime.strptime(f"{fields[0]} {fields[1]}", "%d/%m/%Y %H:%M:%S")
        except ValueError as exc:
            raise ValueError(f"UCI line {lineno}: bad date/time {fields[0]!r} {fields[1]!r}") from exc
        stamps.append(_naive_minutes(stamp))
        power.append(_reading(fields[2], 1000.0))
        volts.append(_reading(fields[4], 1.0))
    if not stamps:
        raise ValueError("UCI text has no data row")
    minutes = np.asarray(stamps)
    if np.any(np.diff(minutes) <= 0):
        raise ValueError("UCI timestamps are not strictly increasing")
    full = np.arange(minutes[0], minutes[-1] + 1)
    slot = minutes - minutes[0]
    return (full % _MINUTES_PER_DAY, _hold(full.size, slot, np.asarray(power)),
            _hold(full.size, slot, np.asarray(volts)))


def _naive_minutes(stamp: datetime) -> int:
    """Minutes since 1970-01-01 00:00 of a naive local timestamp (calendar arithmetic only)."""
    return int((stamp - datetime(1970, 1, 1)).total_seconds() // 60)


def _reading(text: str, scale: float) -> float:
    text = text.strip()
    return math.nan if text == "?" else float(text) * scale


def _hold(n: int, slot: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Values at ``slot`` on a grid of ``n`` minutes; NaN and empty minutes hold the last value."""
    out = np.full(n, np.nan)
    out[slot] = values
    valid = np.isfinite(out)
    if not valid.any():
        raise ValueError("UCI text has no valid reading")
    last = np.where(valid, np.arange(n), 0)
    np.maximum.accumulate(last, out=last)
    held = out[last]
    held[: np.argmax(valid)] = out[np.argmax(valid)]
    return held


@lru_cache(maxsize=1)
def _bundled() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ref = resources.files("simulators") / "data" / UCI_FILE
    with ref.open("rb") as raw, gzip.open(raw, "rt", encoding="ascii") as text:
        return parse_uci(text)


def _rows(minute_of_day: np.ndarray, first_minute: int, n: int) -> np.ndarray:
    """Row index of each output minute: start at the first row whose local minute of day is
    ``first_minute``, run to the end of the last whole day, then wrap to the first midnight
    so that the time of day stays continuous."""
    midnights = np.flatnonzero(minute_of_day == 0)
    day_ends = np.flatnonzero(minute_of_day == _MINUTES_PER_DAY - 1)
    if midnights.size == 0 or day_ends.size == 0 or day_ends[-1] < midnights[0]:
        raise ValueError("UCI data must hold at least one whole day to replay")
    loop_start, loop_end = int(midnights[0]), int(day_ends[-1])
    r0 = int(np.flatnonzero(minute_of_day == first_minute)[0])
    rows = r0 + np.arange(n)
    late = rows > loop_end
    rows[late] = loop_start + (rows[late] - loop_start) % (loop_end + 1 - loop_start)
    return rows


def uci_trace(household: str, start: float, hours: float, *, tz: str = "Asia/Shanghai") -> LoadTrace:
    """The bundled real household replayed as ``household`` from ``start`` for ``hours``.

    The file's local time of day is mapped onto local time of day in ``tz``: the first
    sample (at ``start``) is the file's first reading taken at the same local minute of day,
    so the house's nights fall on ``tz``'s nights.  Past the end of the file (about 4.3 days)
    the replay wraps to the file's first midnight.  Missing readings hold the previous value
    (see :func:`parse_uci`).  Parsing is cached.  A DST change in ``tz`` during the replay is
    not followed (the mapping is fixed at ``start``); Asia/Shanghai has none.

    Args:
        household: id of the replayed household.
        start: UTC epoch s of sample 0.
        hours: length (h), > 0.
        tz: IANA zone of the replayed home.

    Returns:
        A trace with ``step_s`` 60, ``power_w`` and ``voltage_v`` of shape
        (ceil(hours * 60),), float64, W and V.

    Raises:
        ValueError: ``hours`` not positive.
    """
    if not hours > 0:
        raise ValueError(f"hours must be > 0, got {hours!r}")
    minute_of_day, power, volts = _bundled()
    local = datetime.fromtimestamp(start, ZoneInfo(tz))
    rows = _rows(minute_of_day, local.hour * 60 + local.minute, math.ceil(hours * 60))
    return LoadTrace(household, float(start), 60.0, power[rows], voltage_v=volts[rows])
