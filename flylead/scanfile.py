"""``flylead scan-file``: e-bike charging sessions in a utility export, in bounded memory.

Input: long-format CSV or Parquet (by extension: ``.parquet``/``.pq`` is Parquet, anything
else CSV, gzip included) with the columns ``meter_id``, ``timestamp`` and exactly one of

* ``power_w``: active power (W) at the timestamp;
* ``energy_kwh``: energy (kWh) in the interval *ending* at the timestamp;
* ``register_kwh``: the cumulative energy register (kWh).

Other columns are ignored; names are matched with surrounding spaces stripped, and a column
read that appears twice in the header is an error.  ``timestamp`` is ISO 8601 text (``2026-11-27T20:15:00Z``,
``...+08:00``, ``2026-11-27 20:15:00``; up to nanoseconds) or, in Parquet, a timestamp
column; a timestamp without an offset is UTC unless ``tz`` names its zone (at a DST change
an ambiguous local time is the earlier instant the first time a meter has it in the file
and the later one when repeated, :func:`resolve_ambiguous`; a non-existent one is counted,
not used).  Lines may end in LF, CRLF or CR; quoted fields may hold line ends.

Output: one row per session, ``meter_id,start,end,energy_kwh,peak_w,profile,confidence``,
timestamps ISO 8601 UTC; CSV, or a JSON array of objects when OUTPUT ends in ``.json``
(the CLI takes only ``.csv`` and ``.json``).
Sessions of one meter are together and sorted by start.

How memory stays bounded (two passes, an external partition by meter):

1. *Partition.*  The file is read in chunks of ``chunk_rows`` rows (pyarrow's streaming CSV
   reader, or Parquet row batches); each row is parsed and checked, its meter id mapped to
   an integer code (a dict of the distinct meter ids, the only state that grows with the
   file: O(meters)), and the row appended as a 20-byte record (code, time ns, value) to one
   of ``B`` temporary bucket files, bucket = code mod B.  ``B`` is chosen from the file's
   size so that a bucket holds about ``bucket_rows`` rows.
2. *Detect.*  Each bucket is loaded whole (records in file order), grouped by meter, sorted
   by time, cleaned (duplicates, counter resets), converted to power and run through the
   detector; its sessions are written out and the bucket is freed.

Peak memory is therefore about ``chunk_rows`` x ~150 B (a parsed chunk with its strings)
plus the largest bucket x ~70 B (records, sort indices and the per-meter arrays) plus
O(meters) for the id map, whatever the file size.  Buckets hold whole meters (the detector
needs a meter's series in one piece), so a bucket exceeds ``bucket_rows`` only when meters'
row counts are very uneven; the largest single meter's rows always fit in one.  The bucket
files need ~20 B per row of temporary disk (``tmp_dir``).

What is done with awkward rows (every row not used is counted, per reason, in
:class:`ScanReport`; nothing is dropped silently):

* malformed text (a timestamp that is not ISO 8601 or outside 1677-09-21 to 2262-04-11, the
  range of int64 ns; a value that is not a number as pyarrow reads one, :data:`_NUMBER_RE`;
  a row with the wrong number of fields) is an error naming the file, line and column
  (:class:`ScanError`), or, with ``skip_malformed``, counted;
* an empty or whitespace-only ``meter_id``, ``timestamp`` or value (a value of ``NA``, ``N/A``, ``NaN``,
  ``null`` and pyarrow's other null markers is missing too, and so is a NaN in any spelling),
  an infinite value, a negative energy or register, a non-existent local time: counted
  (``missing meter_id`` ...);
* rows out of time order: tolerated (sorted; counted in ``notes`` as ``out_of_order``);
* the same meter and timestamp twice: the later row is kept; the earlier counted as
  ``duplicate row`` (same value) or ``conflicting duplicate`` (different value);
* a register going down (meter replaced or rolled over): counted in ``notes`` as
  ``counter_resets``; the accumulation restarts at the new reading (the interval across the
  reset gives no power, never a negative or huge spike);
* gaps: intervals of ``energy_kwh``/``register_kwh`` data longer than 2.5 times the meter's
  median interval give no power (``notes['gaps']``); the detector itself bridges gaps of up
  to 15 min and splits its analysis at longer ones.

Energy and register data are turned into average power over each interval, placed at the
interval's midpoint: ``energy_kwh`` over the meter's median interval (the export's interval
length), ``register_kwh`` as the register's rise over the time between readings.  Meters
whose median interval is 5 min or more are coarse (e.g. 15-min utility interval energy) and
go to :func:`detectors.interval.detect_interval_sessions` with the energy per interval;
finer ones to :func:`detectors.detect_sessions` with the power.  A fine register whose
resolution makes power steps over 10 W (0.001 kWh a minute: 60 W) is differenced over
15-min (or longer) windows and goes to the interval detector (:func:`register_window`).
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import re
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detectors import ChargingSession, DetectorSettings, detect_sessions

QUANTITIES = ("power_w", "energy_kwh", "register_kwh")
COLUMNS = ("meter_id", "timestamp")
#: Median interval (s) from which a meter's data is coarse (interval energy detector).
COARSE_S = 300.0
#: An interval longer than this many times the meter's median gives no power (a gap).
GAP_FACTOR = 2.5
#: Largest power step (W) a register's resolution may make between two readings before
#: the register is differenced over longer windows (:func:`register_window`).
REGISTER_STEP_W = 10.0
#: Longest span (s) a coarse register is differenced over.
REGISTER_WINDOW_S = 1800.0
#: Record of the bucket files: meter code, UTC time (ns), value.
RECORD = np.dtype([("code", "<u4"), ("t", "<i8"), ("v", "<f8")])
#: The meter code's bits of a record's ``code``; the top bit marks a row at an ambiguous
#: local time (read as the earlier instant until pass 2, :func:`resolve_ambiguous`).
CODE_MASK = np.uint32(0x7FFFFFFF)
#: Note of the rows read as the second pass of a repeated local hour (clocks going back).
AMBIGUOUS_NOTE = "ambiguous local time, repeated: read as the later instant"
#: Note of the meters whose register goes down more often than up (no power from those steps).
REGISTER_DOWN_NOTE = "meters whose register went down more often than up (no power; an export register?)"
OUTPUT_FIELDS = ("meter_id", "start", "end", "energy_kwh", "peak_w", "profile", "confidence")


#: What a truncated or damaged gzip stream raises while being read.
GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


class ScanError(Exception):
    """Malformed input: the file, the line (CSV: physical line, 1 = header; Parquet: row,
    1 = first row), the column and what is wrong.  ``str()`` reads
    ``FILE:LINE: column 'COL': PROBLEM``."""

    def __init__(self, path: str | os.PathLike, line: int | None, column: str | None, problem: str) -> None:
        self.path, self.line, self.column, self.problem = str(path), line, column, problem
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"column {column!r}: " if column else ""
        super().__init__(f"{where}: {what}{problem}")


class ScanWriteError(Exception):
    """A file the scan writes could not be written: ``role`` is ``"out"`` (the sessions)
    or ``"tmp"`` (the temporary bucket files), ``path`` the file or folder, ``reason`` the
    system's message."""

    def __init__(self, role: str, path: str | os.PathLike, reason: str) -> None:
        self.role, self.path, self.reason = role, str(path), reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class ScanReport:
    """What a scan did with the rows.

    Attributes:
        rows_read: data rows in the file (CSV blank lines not counted).
        rows_used: rows that went into the analysis (``rows_read`` less ``unusable``).
        unusable: rows not used, per reason.
        notes: tolerated oddities: ``out_of_order`` rows, ``counter_resets``, ``gaps``.
        meters: distinct meter ids with at least one usable row.
        fine_meters, coarse_meters: meters analysed as fine (< 5 min) or coarse data.
        sessions: sessions written.
        quantity: the value column found.
        coarse_skipped: coarse meters not analysed because ``detectors.interval`` is missing.
        seconds_read, seconds_detect: wall time of pass 1 (read, parse, partition) and
            pass 2 (clean, detect, write).
    """

    rows_read: int = 0
    rows_used: int = 0
    unusable: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    meters: int = 0
    fine_meters: int = 0
    coarse_meters: int = 0
    coarse_skipped: int = 0
    sessions: int = 0
    quantity: str = ""
    seconds_read: float = 0.0
    seconds_detect: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"rows_read": self.rows_read, "rows_used": self.rows_used,
                "unusable": dict(sorted(self.unusable.items())), "notes": dict(sorted(self.notes.items())),
                "meters": self.meters, "fine_meters": self.fine_meters, "coarse_meters": self.coarse_meters,
                "coarse_skipped": self.coarse_skipped, "sessions": self.sessions, "quantity": self.quantity,
                "seconds_read": round(self.seconds_read, 3), "seconds_detect": round(self.seconds_detect, 3)}


# ----------------------------------------------------------------------------- reading


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _select(path: Path, raw: list[str], line: int | None) -> tuple[str, list[str]]:
    """The quantity column and the raw header names of ``meter_id``, ``timestamp`` and the
    quantity (names are matched with surrounding spaces stripped: `` power_w `` is
    ``power_w``; the readers select by the raw name), or ScanError."""
    names = [n.strip() for n in raw]
    quantity = _pick_quantity(path, names, line)
    return quantity, [raw[names.index(c)] for c in (*COLUMNS, quantity)]


def _pick_quantity(path: Path, names: list[str], line: int | None) -> str:
    """The one quantity column among ``names``, or ScanError."""
    for col in (*COLUMNS, *QUANTITIES):
        where = [i + 1 for i, n in enumerate(names) if n == col]
        if len(where) > 1:
            fields = ", ".join(map(str, where[:-1])) + f" and {where[-1]}"
            raise ScanError(path, line, col, f"appears {len(where)} times in the header (fields {fields}); "
                            "rename or remove all but one")
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise ScanError(path, line, missing[0], f"missing; the header has {names}")
    found = [q for q in QUANTITIES if q in names]
    if len(found) != 1:
        raise ScanError(path, line, None, f"need exactly one of {list(QUANTITIES)} as a column, found {found or 'none'}")
    return found[0]


class _Chunk:
    """A parsed chunk: meter ids (pyarrow string array), times (int64 ns UTC, np), values
    (float64, np), each row's first record number (data row 1 = first), a mask of the
    rows usable so far, and a mask of the rows at an ambiguous local time (None: none;
    ``t`` then holds the earlier instant, resolved per meter in pass 2 by
    :func:`resolve_ambiguous`)."""

    __slots__ = ("ids", "t", "v", "first_row", "ok", "amb")

    def __init__(self, ids, t, v, first_row, ok, amb=None) -> None:
        self.ids, self.t, self.v, self.first_row, self.ok, self.amb = ids, t, v, first_row, ok, amb


class _Columns:
    """Parsing and checking of the three columns (``meter_id``, ``timestamp``, the quantity),
    shared by ``scan-file``'s reader and ``flylead explain``: the one definition of what a
    meter id, a timestamp and a value are.

    Args:
        path: the file (for errors).
        tz: zone of timestamps without an offset (None: UTC).
        skip_malformed: count malformed values instead of raising :class:`ScanError`.
        count: ``count(reason, n)`` books unusable rows.
        quantity: the value column's name.
    """

    def __init__(self, path: Path, tz: str | None, skip_malformed: bool, count: Callable[[str, int], None],
                 quantity: str = "power_w") -> None:
        import pyarrow as pa

        self.pa = pa
        self.path, self.tz, self.quantity = path, tz, quantity
        self.skip_malformed, self.count = skip_malformed, count
        self.parquet = False
        # set by _times for the last column parsed: rows at an ambiguous / non-existent local time
        self.ambiguous: np.ndarray | None = None
        self._gap: np.ndarray | None = None

    def _line(self, row: int) -> int | None:
        """Line (or row) of data record ``row`` (1 = first), for errors."""
        raise NotImplementedError

    def _malformed(self, column: str, reason: str, row: int, bad: np.ndarray, sample: str, ok: np.ndarray) -> None:
        """Rows ``bad`` (mask of this chunk) are malformed: raise for the first, or count."""
        if not self.skip_malformed:
            i = int(np.flatnonzero(bad)[0])
            raise ScanError(self.path, self._line(row + i), column, f"{reason}: {sample!r}")
        self.count(f"malformed {column}", int(np.count_nonzero(bad & ok)))
        ok &= ~bad

    def _ids(self, ids, row: int, ok: np.ndarray):
        pa, pc = self.pa, _pc()
        if not pa.types.is_string(ids.type) and not pa.types.is_large_string(ids.type):
            try:
                ids = pc.cast(ids, pa.string())
            except pa.ArrowInvalid:   # binary that is not UTF-8 (Parquet)
                ids = self._non_utf8_ids(ids, row, ok)
        # null, empty or whitespace-only (utf8_is_space is false for "")
        empty = pc.binary_length(ids).to_numpy(zero_copy_only=False) == 0
        empty |= np.asarray(pc.utf8_is_space(ids).fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
        if ids.null_count:
            empty |= np.asarray(ids.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if empty.any():
            self.count("missing meter_id", int(np.count_nonzero(empty & ok)))
            ok &= ~empty
        return ids

    def _non_utf8_ids(self, ids, row: int, ok: np.ndarray):
        """A binary ``meter_id`` column with values that are not UTF-8: raise for the first
        (or, skipping, count them as malformed) and read them as null."""
        pa, pc = self.pa, _pc()
        raw = ids.to_pylist()
        bad = np.zeros(len(raw), dtype=bool)
        first = None
        for i, x in enumerate(raw):
            if isinstance(x, bytes):
                try:
                    x.decode("utf-8")
                except UnicodeDecodeError as exc:
                    bad[i] = True
                    if first is None:
                        first = (f"not UTF-8 text (byte 0x{x[exc.start]:02x}, byte {exc.start + 1} of the value)", x)
        if first is None:   # not a decoding problem after all
            return pc.cast(ids, pa.string())
        self._malformed("meter_id", first[0], row, bad, first[1], ok)
        fixed = pc.if_else(pa.array(bad), pa.scalar(None, ids.type), ids)
        return pc.cast(fixed, pa.string())

    def _times(self, ts, row: int, ok: np.ndarray) -> np.ndarray:
        """int64 ns UTC; null/malformed rows are counted (or raise) and read 0; rows at a
        non-existent local time (``tz``'s clocks going forward) are counted; rows at an
        ambiguous local time read the earlier instant and are marked in ``self.ambiguous``."""
        pa, pc = self.pa, _pc()
        self._n, self.ambiguous, self._gap = len(ts), None, None
        typ = ts.type
        if pa.types.is_timestamp(typ):
            try:
                ns = pc.cast(ts, pa.timestamp("ns", typ.tz))
            except pa.ArrowInvalid:   # beyond int64 ns
                ts = self._drop_out_of_range(ts, row, ok)
                ns = pc.cast(ts, pa.timestamp("ns", typ.tz))
            if typ.tz is None:
                ns = self._localise(ns)
        elif pa.types.is_string(typ) or pa.types.is_large_string(typ):
            ns = self._parse_times(ts, row, ok)
        else:
            raise ScanError(self.path, self._line(row), "timestamp", f"expected ISO 8601 text or a timestamp type, got {typ}")
        null = np.asarray(ns.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        out = pc.fill_null(pc.cast(ns, pa.timestamp("ns", "UTC")).cast(pa.int64()), 0).to_numpy()
        missing = null & ok
        if missing.any():
            self.count("missing timestamp", int(np.count_nonzero(missing)))
            ok &= ~null
        if self._gap is not None:
            self.count("non-existent local time", int(np.count_nonzero(self._gap & ok)))
            ok &= ~self._gap
        return out

    def _drop_out_of_range(self, ts, row: int, ok: np.ndarray):
        """A timestamp column (any unit) with the instants nanoseconds cannot hold raised
        (or, skipping, counted as malformed and nulled)."""
        pa, pc = self.pa, _pc()
        typ = ts.type
        per_ns = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[ts.type.unit]
        raw = pc.fill_null(ts.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
        bad = (raw < np.iinfo(np.int64).min // per_ns + 1) | (raw > np.iinfo(np.int64).max // per_ns)
        if not bad.any():
            raise ScanError(self.path, self._line(row), "timestamp", f"unreadable timestamps ({typ})")
        try:
            sample = ts[int(np.flatnonzero(bad)[0])].as_py().isoformat()
        except (ValueError, OverflowError):   # beyond Python's datetime (year 9999)
            sample = f"{raw[bad][0]} {ts.type.unit} since 1970"
        self._malformed("timestamp", OUT_OF_RANGE, row, bad, sample, ok)
        return pc.if_else(pa.array(bad), pa.scalar(None, ts.type), ts)

    def _localise(self, naive, where: np.ndarray | None = None):
        """Naive timestamps (ns) as UTC instants: local time in ``tz`` (UTC when None).  An
        ambiguous local time (clocks going back) reads its earlier instant and is marked in
        ``self.ambiguous``; a non-existent one (clocks going forward) in ``self._gap``.
        ``where``: the chunk rows ``naive`` holds (None: all)."""
        pa, pc = self.pa, _pc()
        if self.tz is None:
            return pc.cast(naive.cast(pa.int64()), pa.timestamp("ns", "UTC"))
        try:   # the usual case: no DST change in the chunk, one call
            return pc.assume_timezone(naive, self.tz, ambiguous="raise", nonexistent="raise")
        except pa.ArrowInvalid:
            pass
        early = pc.assume_timezone(naive, self.tz, ambiguous="earliest", nonexistent="earliest")
        late = pc.assume_timezone(naive, self.tz, ambiguous="latest", nonexistent="latest")
        d = pc.fill_null(pc.subtract(late.cast(pa.int64()), early.cast(pa.int64())), 0).to_numpy(zero_copy_only=False)
        # pyarrow: ambiguous -> the two instants (an hour apart, usually); non-existent -> the
        # nanosecond before the change and the change itself
        amb, gap = d >= 10**9, (d > 0) & (d < 10**9)
        where = slice(None) if where is None else where
        for name, mask in (("ambiguous", amb), ("_gap", gap)):
            if mask.any():
                if getattr(self, name) is None:
                    setattr(self, name, np.zeros(self._n, dtype=bool))
                getattr(self, name)[where] |= mask
        return early

    def _parse_times(self, ts, row: int, ok: np.ndarray):
        """ISO 8601 text to a timestamp array (ns, UTC); null stays null."""
        pa, pc = self.pa, _pc()
        utc, naive = pa.timestamp("ns", "UTC"), pa.timestamp("ns")
        ts = pc.utf8_trim_whitespace(ts)
        first = next((x for x in ts.slice(0, 64).to_pylist() if x), "")
        if _has_offset(first):
            try:
                return pc.cast(ts, utc)
            except pa.ArrowInvalid:
                pass
        else:
            try:
                parsed = pc.cast(ts, naive)
            except pa.ArrowInvalid:
                pass
            else:
                return self._localise(parsed)
        # mixed: with and without an offset, or malformed or whitespace-only (missing) somewhere
        off = np.asarray(pc.match_substring_regex(ts, _OFFSET_RE).fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
        out = np.zeros(len(ts), dtype=np.int64)
        null = np.asarray(pc.equal(ts, "").fill_null(True).to_numpy(zero_copy_only=False), dtype=bool)
        for mask, typ in ((off, utc), (~off & ~null, naive)):
            if not mask.any():
                continue
            part = ts.filter(pa.array(mask))
            try:
                parsed = pc.cast(part, typ)
            except pa.ArrowInvalid:
                bad = np.zeros(len(ts), dtype=bool)
                idx = np.flatnonzero(mask)
                for j, text in enumerate(part.to_pylist()):
                    try:
                        pc.cast(pa.array([text]), typ)
                    except pa.ArrowInvalid:
                        bad[idx[j]] = True
                sample = ts[int(np.flatnonzero(bad)[0])].as_py()
                self._malformed("timestamp", _timestamp_problem(sample, typ.tz), row, bad, sample, ok)
                null |= bad
                keep = mask & ~bad
                if not keep.any():
                    continue
                parsed = pc.cast(ts.filter(pa.array(keep)), typ)
                mask = keep
            if typ is naive:
                parsed = self._localise(parsed, np.flatnonzero(mask))
            out[mask] = pc.cast(parsed, utc).cast(pa.int64()).to_numpy()
        return pa.array(out, type=pa.int64(), mask=null).cast(utc)

    def _values(self, vs, row: int, ok: np.ndarray) -> np.ndarray:
        """float64; null/NaN (missing), malformed, infinite, negative (energy, register)
        rows counted (or raise)."""
        pa, pc = self.pa, _pc()
        col = self.quantity
        if pa.types.is_string(vs.type) or pa.types.is_large_string(vs.type):
            vs = pc.utf8_trim_whitespace(vs)
            try:
                num = pc.cast(vs, pa.float64())
            except pa.ArrowInvalid:
                # whitespace-only is empty, i.e. missing; then the cells pyarrow will not read
                # (found with _NUMBER_RE, which accepts what pyarrow's cast accepts: never
                # Python's float(), which also takes 1_000 and non-ASCII digits)
                none = pa.scalar(None, pa.string())
                vs = pc.if_else(pc.equal(vs, ""), none, vs)
                bad = ~np.asarray(pc.match_substring_regex(vs, _NUMBER_RE).fill_null(True)
                                  .to_numpy(zero_copy_only=False), dtype=bool)
                try:
                    num = pc.cast(pc.if_else(pa.array(bad), none, vs) if bad.any() else vs, pa.float64())
                except pa.ArrowInvalid:   # a cell _NUMBER_RE passes but pyarrow refuses: ask pyarrow
                    bad |= np.array([x is not None and not _arrow_number(x) for x in vs.to_pylist()], dtype=bool)
                    num = None
                if bad.any():
                    sample = vs[int(np.flatnonzero(bad)[0])].as_py()
                    self._malformed(col, "not a number", row, bad, sample, ok)
                if num is None:
                    num = pc.cast(pc.if_else(pa.array(bad), none, vs), pa.float64())
        elif pa.types.is_integer(vs.type) or pa.types.is_floating(vs.type) or pa.types.is_decimal(vs.type):
            num = pc.cast(vs, pa.float64())
        else:
            raise ScanError(self.path, self._line(row), col, f"expected numbers, got {vs.type}")
        v = num.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)   # null -> NaN
        # null and NaN (any spelling: NaN, NAN, nan(1), a float NaN in Parquet) are missing
        null = np.isnan(v)
        for reason, bad in (("missing " + col, null),
                            ("non-finite " + col, np.isinf(v)),
                            ("negative " + col, (v < 0) if col != "power_w" else None)):
            if bad is None:
                continue
            hit = bad & ok
            if hit.any():
                self.count(reason, int(np.count_nonzero(hit)))
                ok &= ~bad
        return v


class _Reader(_Columns):
    """Chunks of one file, parsed and checked (the pass-1 half that knows the format).

    Args:
        path: the file.
        tz: zone of timestamps without an offset (None: UTC).
        chunk_rows: rows per chunk (Parquet; CSV reads blocks of about that many rows).
        skip_malformed: count malformed values instead of raising :class:`ScanError`.
        count: ``count(reason, n)`` books unusable rows.
    """

    def __init__(self, path: Path, tz: str | None, chunk_rows: int, skip_malformed: bool,
                 count: Callable[[str, int], None]) -> None:
        super().__init__(path, tz, skip_malformed, count)
        pa = self.pa
        self.chunk_rows = chunk_rows
        self.parquet = _is_parquet(path)
        # the first CSV row with the wrong number of fields (record number, text), kept only
        # when not skipping (then it stops the scan): nothing grows with bad rows
        self.bad_row: tuple[int | None, str] | None = None
        self._no_data = False
        if self.parquet:
            import pyarrow.parquet as pq

            try:
                self._pf = pq.ParquetFile(path)
            except (pa.ArrowException, OSError) as exc:
                raise ScanError(path, None, None, f"not a readable Parquet file ({exc})") from None
            self.quantity, self._cols = _select(path, self._pf.schema_arrow.names, None)
            self.total_rows = self._pf.metadata.num_rows
        else:
            with _open_binary(path) as f:
                head, ending, sample = _header_line(f)
            if not head and not ending:
                raise ScanError(path, None, None, "file is empty (expected a header line: meter_id,timestamp,...)")
            if head.startswith(b"PAR1"):
                raise ScanError(path, None, None, "this is a Parquet file: name it .parquet or .pq")
            try:
                header = head.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise ScanError(path, 1, None, _utf8_problem(head, exc) + " (a binary file? "
                                "the input must be UTF-8 CSV, gzip CSV, or Parquet named .parquet/.pq)") from None
            try:
                raw = next(csv.reader([header]), [])
            except csv.Error as exc:
                raise ScanError(path, 1, None, f"unreadable header ({exc})") from None
            self.quantity, self._cols = _select(path, raw, 1)
            self._names = [n.strip() for n in raw]
            # nothing after the header, not even a line end: no rows (pyarrow would refuse it)
            self._no_data = not ending
            self._raw = open(path, "rb")  # noqa: SIM115 (closed in close())
            gz = self._raw.read(2) == b"\x1f\x8b"
            self._raw.seek(0)
            self._stream = gzip.GzipFile(fileobj=self._raw) if gz else self._raw
            self.total_bytes = os.fstat(self._raw.fileno()).st_size
            lines = sample.count(b"\n") or sample.count(b"\r")   # CR-only line ends (old Mac, Excel)
            per_row = len(sample) / lines if lines else max(len(head), 16)
            self._bytes_per_row = max(per_row, 8.0)
            self._ratio = 4.0 if gz else 1.0   # gzip: ~4x smaller

    def close(self) -> None:
        if not self.parquet:
            self._raw.close()

    def bytes_done(self) -> int:
        """CSV: compressed bytes read so far (for the progress bar)."""
        return self._raw.tell()

    def estimated_rows(self) -> int:
        """Rows in the file: exact for Parquet, from the size and the header's length for CSV
        (a data row is about as long as the header)."""
        if self.parquet:
            return self.total_rows
        return int(self.total_bytes * self._ratio / self._bytes_per_row) + 1

    # -- chunks

    def chunks(self) -> Iterator[_Chunk]:
        """Parsed chunks in file order (record numbers continue across chunks)."""
        row = 1
        for ids, ts, vs in (self._parquet_batches() if self.parquet else self._csv_batches()):
            n = len(ids)
            ok = np.ones(n, dtype=bool)
            t = self._times(ts, row, ok)
            amb = self.ambiguous
            v = self._values(vs, row, ok)
            ids = self._ids(ids, row, ok)
            yield _Chunk(ids, t, v, row, ok, amb)
            row += n

    def _parquet_batches(self):
        for batch in self._pf.iter_batches(batch_size=self.chunk_rows, columns=self._cols):
            yield batch.column(0), batch.column(1), batch.column(2)

    def _csv_batches(self):
        import pyarrow.csv as pcsv

        pa = self.pa
        cols = self._cols   # as spelt in the header (spaces around names kept)
        if self._no_data:
            return

        def invalid(row) -> str:
            if self.skip_malformed:
                self.count("wrong number of fields", 1)
                return "skip"
            if self.bad_row is None:
                self.bad_row = (row.number, row.text)
            return "error"

        block = int(max(1 << 16, min(self.chunk_rows * self._bytes_per_row, 1 << 28)))
        try:
            reader = pcsv.open_csv(
                self._stream,
                read_options=pcsv.ReadOptions(block_size=block, use_threads=True),
                # quoted fields may hold line ends (docs/scan-file.md); without this pyarrow
                # cuts blocks at any line end and fails once such a file exceeds one block
                parse_options=pcsv.ParseOptions(newlines_in_values=True, invalid_row_handler=invalid),
                convert_options=pcsv.ConvertOptions(
                    include_columns=cols, column_types={c: pa.string() for c in cols},
                    strings_can_be_null=True, quoted_strings_can_be_null=True))
            for batch in reader:
                yield batch.column(0), batch.column(1), batch.column(2)
        except pa.ArrowInvalid as exc:
            if self.bad_row is not None and not self.skip_malformed:
                number, text = self.bad_row
                fields = _fields(text)
                line = self._line_of(number, fields)
                problem = f"{len(fields)} fields, expected {len(self._names)}: {text[:80]!r}"
                if text.count('"') % 2:
                    problem = f"a quote opened on this line is never closed ({problem})"
                elif "\n" in text:
                    problem += f" (a quoted field runs over {text.count(chr(10)) + 1} lines: a stray quote?)"
                raise ScanError(self.path, line, None, problem) from None
            if "UTF8" in str(exc) or "UTF-8" in str(exc):
                line, col, problem = self._bad_utf8()
                raise ScanError(self.path, line, col, problem) from None
            if "straddl" in str(exc):   # a quoted field longer than a block: an unclosed quote
                line, problem = self._unclosed_quote()
                raise ScanError(self.path, line, None, problem) from None
            raise ScanError(self.path, None, None, f"unreadable CSV ({exc})") from None

    # -- columns

    def _line(self, row: int) -> int:
        """Physical line (CSV) or row (Parquet) of data record ``row`` (1 = first)."""
        if self.parquet:
            return row
        return self._line_of(row + 1, None)

    def _line_of(self, record: int | None, fields: list[str] | None) -> int | None:
        """Physical line where CSV record ``record`` starts (1 = header; blank lines are not
        records; a quoted field may span lines), or where the first record with ``fields``
        and the wrong number of fields starts when the record number is unknown.  Re-reads
        the file: used only to report an error."""
        want = None if fields is None else [x.strip() for x in fields]
        with _open_text(self.path) as f:
            reader = csv.reader(f)
            rec = prev = 0
            try:
                for row in reader:
                    start, prev = prev + 1, reader.line_num
                    if not row:
                        continue
                    rec += 1
                    if record is not None:
                        if rec == record:
                            return start
                    elif len(row) != len(self._names) and [x.strip() for x in row] == want:
                        return start
            except (csv.Error, UnicodeDecodeError):
                return None
        return None

    def _unclosed_quote(self) -> tuple[int | None, str]:
        """(line, problem) of the record whose quote is never closed: the first that runs
        past Python's field limit (128 KB) or has the wrong number of fields while spanning
        lines.  Re-reads the file: used only to report an error."""
        with _open_text(self.path) as f:
            reader = csv.reader(f)
            prev = 0
            try:
                for row in reader:
                    start, prev = prev + 1, reader.line_num
                    if row and len(row) != len(self._names) and prev > start:
                        return start, (f"a quote opened on this line is never closed ({len(row)} fields, "
                                       f"expected {len(self._names)}; the field runs over {prev - start + 1} lines)")
            except csv.Error as exc:
                return prev + 1, f"a quote opened on this line is never closed ({exc})"
            except UnicodeDecodeError:
                pass
        return None, "a quoted field is longer than pyarrow's read block: a quote never closed?"

    def _bad_utf8(self) -> tuple[int | None, str | None, str]:
        """(line, column, problem) of the first byte that is not UTF-8 (re-reads the file)."""
        with _open_binary(self.path) as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    prefix = raw[:exc.start].decode("utf-8", errors="replace")
                    i = len(next(csv.reader([prefix]), [""])) - 1 if prefix else 0
                    col = self._names[i] if 0 <= i < len(self._names) else None
                    return lineno, col, _utf8_problem(raw, exc)
        return None, None, "not UTF-8 text"


#: Cells pyarrow's CSV reader reads as null (``strings_can_be_null``): missing values.
NULL_MARKERS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                          "1.#QNAN", "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null"})


def missing_meter_id(cell: str) -> bool:
    """Whether a CSV ``meter_id`` cell is missing as ``scan-file`` reads it: a null marker
    (:data:`NULL_MARKERS`, as the cell is), empty or whitespace only.  Ids are otherwise
    taken as they are, spaces included: `` m1`` and ``m1`` are two meters."""
    return cell in NULL_MARKERS or cell.isspace()


class _RowColumns(_Columns):
    """:class:`_Columns` over cells collected from CSV rows, with their lines."""

    def __init__(self, path: Path, tz: str | None, quantity: str, lines: list[int], count) -> None:
        super().__init__(path, tz, False, count, quantity)
        self.lines = lines

    def _line(self, row: int) -> int | None:
        return self.lines[row - 1] if 0 < row <= len(self.lines) else None


def parse_cells(path: str | os.PathLike, times: list[str], values: list[str], lines: list[int], *,
                tz: str | None = None, quantity: str = "power_w",
                count: Callable[[str, int], None] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Timestamps and values of CSV rows (cells as the CSV holds them) read exactly as
    ``scan-file`` reads them (for ``flylead explain``): null markers are missing, ISO 8601
    as pyarrow takes it, numbers as pyarrow takes them, local times in ``tz`` with
    ambiguous ones at their earlier instant (resolve them with :func:`resolve_ambiguous`).

    Args:
        path: the file, for errors.
        times, values: the cells, one per row.
        lines: each row's physical line, for errors.
        tz: zone of timestamps without an offset (None: UTC).
        quantity: the value column's name.
        count: ``count(reason, n)`` books unusable rows (``missing timestamp``, ``missing
            power_w``, ``non-finite power_w``, ``non-existent local time`` ...).

    Returns:
        ``(t_ns, v, time_ok, ok, ambiguous)``, each shape (n,): int64 UTC ns, float64
        values (NaN when missing), the rows with a usable timestamp, the rows usable as a
        whole, the rows at an ambiguous local time.

    Raises:
        ScanError: a malformed timestamp or value (the first), with its line and column.
    """
    import pyarrow as pa

    cols = _RowColumns(Path(path), tz, quantity, lines, count or (lambda reason, n: None))
    none = lambda cells: pa.array([None if c in NULL_MARKERS else c for c in cells], type=pa.string())  # noqa: E731
    time_ok = np.ones(len(times), dtype=bool)
    t = cols._times(none(times), 1, time_ok)
    amb = cols.ambiguous if cols.ambiguous is not None else np.zeros(len(times), dtype=bool)
    ok = time_ok.copy()
    v = cols._values(none(values), 1, ok)
    return t, v, time_ok, ok, amb


def _header_line(f, sample_bytes: int = 1 << 16) -> tuple[bytes, bytes, bytes]:
    """(header line without its end, the line end (b"" at the end of the file), up to
    ``sample_bytes`` after it) of a binary stream; a line ends at LF, CRLF or CR alone."""
    buf = b""
    while True:
        more = f.read(1 << 16)
        buf += more
        cut = re.search(rb"\r\n|\r|\n", buf)
        if cut is not None and (cut.end() < len(buf) or not more or cut.group() == b"\n"):
            head, ending, rest = buf[:cut.start()], cut.group(), buf[cut.end():]
            if len(rest) < sample_bytes:
                rest += f.read(sample_bytes - len(rest))
            return head, ending, rest[:sample_bytes]
        if not more:
            return buf, b"", b""


def _pc():
    import pyarrow.compute as pc

    return pc


#: A number as pyarrow's string-to-double cast reads it (checked against pyarrow 26 on
#: 200,000 random strings): ASCII digits with an optional sign, point and exponent, or
#: nan / inf / infinity in any case (``nan(...)`` too).  Not ``1_000``, ``١٠٠`` or ``1,5``.
_NUMBER_RE = (r"^[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
              r"|[nN][aA][nN](?:\([0-9A-Za-z_]*\))?|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)$")


def _arrow_number(text: str) -> bool:
    """Whether pyarrow reads ``text`` as a double (slow: one cast per cell)."""
    import pyarrow as pa

    try:
        _pc().cast(pa.array([text]), pa.float64())
    except pa.ArrowInvalid:
        return False
    return True


#: Why a timestamp that is a date and time is not usable: int64 nanoseconds since 1970 (pandas,
#: arrow) reach from 1677-09-21T00:12:43.145224193Z to 2262-04-11T23:47:16.854775807Z.
OUT_OF_RANGE = "outside the supported range (1677-09-21 to 2262-04-11)"


def _timestamp_problem(text: str, tz: str | None) -> str:
    """Why ``text``, which pyarrow would not read as a timestamp (ns, with an offset when
    ``tz``), is malformed: finer than nanoseconds, outside the nanosecond range, or not ISO
    8601 at all."""
    digits = re.search(r"\d\d:\d\d:\d\d[.,](\d+)", text)
    if digits is not None and len(digits.group(1)) > 9:
        return (f"not a supported ISO 8601 date and time ({len(digits.group(1))} fraction digits: "
                "more than nanosecond precision)")
    return OUT_OF_RANGE if _iso_seconds(text, tz) else "not an ISO 8601 date and time"


def _iso_seconds(text: str, tz: str | None) -> bool:
    """Whether ``text`` is an ISO 8601 date and time (with an offset when ``tz``) pyarrow
    reads at second resolution, i.e. a date and time that failed at nanoseconds only by its
    range (the fraction of a second is dropped first)."""
    import pyarrow as pa

    text = re.sub(r"(\d\d:\d\d:\d\d)[.,]\d+", r"\1", text)
    try:
        _pc().cast(pa.array([text]), pa.timestamp("s", tz))
    except pa.ArrowInvalid:
        return False
    return True


#: An ISO 8601 time of day followed by a zone offset (``Z``, ``+08``, ``+0800``, ``+08:00``).
_OFFSET_RE = r"\d\d:\d\d(:\d\d(\.\d*)?)?\s*([zZ]|[+-]\d\d(:?\d\d)?)$"


def _has_offset(text: str) -> bool:
    return re.search(_OFFSET_RE, text.strip()) is not None


def _fields(text: str) -> list[str]:
    """The fields of one CSV record's text (which may span lines)."""
    import io

    return next(csv.reader(io.StringIO(text, newline="")), [])


def _utf8_problem(raw: bytes, exc: UnicodeDecodeError) -> str:
    return f"not UTF-8 text: byte 0x{raw[exc.start]:02x} (byte {exc.start + 1} of the line)"


def _open_binary(path: Path):
    """The file's bytes, gunzipped when it is gzip."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")  # noqa: SIM115


def _open_text(path: Path):
    """The file as text (gzip or plain), for the header and for locating an error's line."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    if gz:
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115


# ----------------------------------------------------------------------------- partition


class _Buckets:
    """The temporary bucket files of pass 1."""

    def __init__(self, folder: Path, n: int) -> None:
        self.n = n
        self.paths = [folder / f"bucket{i:04d}.bin" for i in range(n)]
        self.files = [open(p, "wb") for p in self.paths]  # noqa: SIM115 (closed in close())
        self.rows = np.zeros(n, dtype=np.int64)

    def write(self, codes: np.ndarray, t: np.ndarray, v: np.ndarray) -> None:
        rec = np.empty(codes.size, dtype=RECORD)
        rec["code"], rec["t"], rec["v"] = codes, t, v
        if self.n == 1:
            rec.tofile(self.files[0])
            self.rows[0] += rec.size
            return
        b = (codes & CODE_MASK) % self.n
        order = np.argsort(b, kind="stable")
        rec, b = rec[order], b[order]
        cuts = np.searchsorted(b, np.arange(self.n + 1))
        for i in range(self.n):
            if cuts[i + 1] > cuts[i]:
                rec[cuts[i]:cuts[i + 1]].tofile(self.files[i])
                self.rows[i] += cuts[i + 1] - cuts[i]

    def close(self) -> None:
        for f in self.files:
            f.close()


# ----------------------------------------------------------------------------- one meter


@dataclass(frozen=True, slots=True)
class MeterSeries:
    """One meter's cleaned data: shape (n,) arrays, ``t`` float64 UTC epoch s strictly
    increasing, ``v`` float64 in the file's quantity."""

    t: np.ndarray
    v: np.ndarray


def clean_meter(t_ns: np.ndarray, v: np.ndarray, notes: Counter, unusable: Counter) -> MeterSeries:
    """Sort one meter's rows (in file order) by time and drop duplicates (the later row of a
    timestamp is kept); books ``out_of_order`` in ``notes`` and the duplicates in
    ``unusable``.

    Args:
        t_ns: shape (n,), int64, UTC ns, in file order.
        v: shape (n,), float64.
    """
    if t_ns.size > 1:
        late = np.count_nonzero(t_ns[1:] < np.maximum.accumulate(t_ns)[:-1])
        if late:
            notes["out_of_order"] += int(late)
            order = np.argsort(t_ns, kind="stable")
            t_ns, v = t_ns[order], v[order]
        keep = np.r_[t_ns[1:] != t_ns[:-1], True]
        if not keep.all():
            kept = np.flatnonzero(keep)
            drop = np.flatnonzero(~keep)
            same = int(np.count_nonzero(v[drop] == v[kept[np.searchsorted(kept, drop)]]))
            for reason, n in (("duplicate row", same), ("conflicting duplicate (later row kept)", drop.size - same)):
                if n:
                    unusable[reason] += n
            t_ns, v = t_ns[keep], v[keep]
    return MeterSeries(t_ns.astype(np.float64) / 1e9, v)


def resolve_ambiguous(t_ns: np.ndarray, ambiguous: np.ndarray, tz: str, notes: Counter | None = None
                      ) -> np.ndarray:
    """One meter's times, in file order, with repeated ambiguous local times resolved.

    When clocks go back (``tz`` leaving summer time) the local times of the hour before the
    change occur twice: 01:00-01:59 in Europe/London on 2026-10-25 is first BST (00:00-00:59
    UTC), then GMT (01:00-01:59 UTC).  An interval export writes both passes, in order, so a
    row whose ambiguous local time the meter has already had earlier in the file is the
    second pass: it reads the later instant.  A first occurrence keeps the earlier instant.

    Args:
        t_ns: shape (n,), int64 UTC ns, the ambiguous rows at their earlier instant.
        ambiguous: shape (n,), bool, the rows at an ambiguous local time.
        tz: the zone the local times are in.
        notes: counts the rows moved to the later instant under :data:`AMBIGUOUS_NOTE`.

    Returns:
        The times (a copy when any moved).
    """
    import pyarrow as pa

    idx = np.flatnonzero(ambiguous)
    if idx.size < 2:
        return t_ns
    _, first = np.unique(t_ns[idx], return_index=True)
    repeat = np.ones(idx.size, dtype=bool)
    repeat[first] = False
    if not repeat.any():
        return t_ns
    j = idx[repeat]
    pc = _pc()
    local = pc.local_timestamp(pa.array(t_ns[j], type=pa.timestamp("ns", tz)))
    later = pc.assume_timezone(local, tz, ambiguous="latest", nonexistent="latest")
    t_ns = t_ns.copy()
    t_ns[j] = pc.cast(later, pa.int64()).to_numpy()
    if notes is not None:
        notes[AMBIGUOUS_NOTE] += int(j.size)
    return t_ns


def _register_steps(t: np.ndarray, v: np.ndarray, interval: float, notes: Counter
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A register's rises between readings: ``(dt, de, bad)``, shape (m - 1,) each: s, kWh,
    and True where the rise is unusable, a counter reset (the register went down) or a gap
    (over ``GAP_FACTOR`` times ``interval``), both booked in ``notes``."""
    dt, de = np.diff(t), np.diff(v)
    reset = de < 0
    gap = dt > GAP_FACTOR * interval
    if reset.any():
        notes["counter_resets"] += int(np.count_nonzero(reset))
    if (gap & ~reset).any():
        notes["gaps"] += int(np.count_nonzero(gap & ~reset))
    return dt, de, reset | gap


def to_intervals(series: MeterSeries, quantity: str, notes: Counter) -> tuple[np.ndarray, np.ndarray, float]:
    """A meter's data as energy per interval.

    Returns:
        ``(t_end, energy_kwh, interval_s)``: shape (m,) float64 interval ends (UTC epoch s)
        and energies (kWh; NaN where unknown: across a counter reset or a gap), and the
        meter's median interval (s; NaN with fewer than two readings).  ``power_w`` readings
        are read as the average over the interval ending at them.
    """
    t, v = series.t, series.v
    if t.size < 2:
        return t[:0], v[:0], math.nan
    interval = float(np.median(np.diff(t)))
    if quantity == "register_kwh":
        dt, de, bad = _register_steps(t, v, interval, notes)
        e = np.where(bad, np.nan, de * (interval / dt))
        return t[1:], e, interval
    if quantity == "energy_kwh":
        return t, v.copy(), interval
    return t, v * interval / 3.6e6, interval


def to_power(series: MeterSeries, quantity: str, notes: Counter) -> tuple[np.ndarray, np.ndarray]:
    """A meter's data as power readings for :func:`detectors.detect_sessions`: shape (m,)
    float64 times (UTC epoch s, strictly increasing) and W (NaN = unknown).

    ``power_w`` as is; ``energy_kwh`` as the average over the meter's median interval (the
    export's interval length), placed mid-interval; ``register_kwh`` as the register's rise
    over the time between readings, mid-interval, NaN across a counter reset or a gap
    (booked in ``notes``).
    """
    t, v = series.t, series.v
    if quantity == "power_w":
        return t, v
    if t.size < 2:
        return t[:0], v[:0]
    interval = float(np.median(np.diff(t)))
    if quantity == "energy_kwh":
        return t - 0.5 * interval, v * 3.6e6 / interval
    dt, de, bad = _register_steps(t, v, interval, notes)
    p = np.where(bad, np.nan, de * 3.6e6 / dt)
    return t[:-1] + 0.5 * dt, p


def register_resolution(v: np.ndarray) -> float | None:
    """The register's resolution (kWh): the coarsest of 1, 0.1, ... 0.000001 kWh that every
    reading is a whole multiple of, or None (finer: as good as continuous).  Not the
    smallest rise between readings: a household that never draws less than 45 W has no
    rise below 0.75 Wh a minute, however fine its register."""
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return None
    for d in range(7):
        scaled = finite * 10.0**d
        if np.all(np.abs(scaled - np.round(scaled)) < 1e-3):
            return 10.0**-d
    return None


def register_window(v: np.ndarray, interval: float) -> tuple[float, float, float] | None:
    """Whether a register read every ``interval`` s is too coarse for the power detector.

    A register's resolution (:func:`register_resolution`) moves the power in steps of
    resolution / interval (a register kept to 0.001 kWh read once a minute: 60 W steps,
    which drown a 100 W charger).  When a step exceeds :data:`REGISTER_STEP_W` the register
    is differenced over windows long enough to bring it under that (at least 15 min, the
    interval detector's native interval; at most :data:`REGISTER_WINDOW_S`).

    Returns:
        None when the register is fine enough, else ``(resolution_kwh, step_w, window_s)``.
    """
    res = register_resolution(v)
    if res is None or not interval > 0:
        return None
    step = res * 3.6e6 / interval
    if step <= REGISTER_STEP_W:
        return None
    need = res * 3.6e6 / REGISTER_STEP_W
    window = min(max(900.0, math.ceil(need / 900.0 - 1e-9) * 900.0), REGISTER_WINDOW_S)
    return res, step, window


def register_blocks(series: MeterSeries, window: float, notes: Counter) -> tuple[np.ndarray, np.ndarray]:
    """A register's energy per clock-aligned ``window`` (s): shape (m,) float64 interval
    ends (UTC epoch s, on the window's grid) and kWh, from the last reading in one window to
    the last in the next; windows across a counter reset or gap (booked in ``notes``), or
    after a window without readings, are left out."""
    t, v = series.t, series.v
    interval = float(np.median(np.diff(t)))
    dt, de, bad = _register_steps(t, v, interval, notes)
    n_bad = np.r_[0, np.cumsum(bad)]
    slot = np.floor(t / window).astype(np.int64)
    last = np.flatnonzero(np.r_[slot[1:] != slot[:-1], True])
    a, b = last[:-1], last[1:]
    ok = (n_bad[b] == n_bad[a]) & (slot[b] == slot[a] + 1)
    return ((slot[b] + 1) * window)[ok].astype(np.float64), (v[b] - v[a])[ok]


# ----------------------------------------------------------------------------- output


class _Writer:
    """Sessions to CSV or (``.json``) a JSON array, as they come."""

    def __init__(self, path: Path) -> None:
        self.json = path.suffix.lower() == ".json"
        self.f = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self.n = 0
        if self.json:
            self.f.write("[")
        else:
            self.csv = csv.writer(self.f, lineterminator="\n")
            self.csv.writerow(OUTPUT_FIELDS)

    def write(self, meter_id: str, s: ChargingSession) -> None:
        from flylead.clock import iso

        row = (meter_id, iso(s.start), iso(s.end), round(s.energy_kwh, 4), round(s.peak_w, 1), s.profile,
               round(s.confidence, 3))
        if self.json:
            self.f.write(("\n " if self.n == 0 else ",\n ") + json.dumps(dict(zip(OUTPUT_FIELDS, row)), ensure_ascii=False))
        else:
            self.csv.writerow(row)
        self.n += 1

    def close(self) -> None:
        if self.json:
            self.f.write("\n]\n" if self.n else "]\n")
        self.f.close()


# ----------------------------------------------------------------------------- the scan


def _interval_detector():
    """:func:`detectors.interval.detect_interval_sessions`, or None when not there yet."""
    try:
        from detectors.interval import detect_interval_sessions
    except ImportError:
        return None
    return detect_interval_sessions


def _check_register_direction(v: np.ndarray, notes: Counter) -> None:
    """Note a register that goes down more often than up: its falls are read as counter
    resets and give no power, so the meter gives no power at all; say so."""
    d = np.diff(v)
    if np.count_nonzero(d < 0) > np.count_nonzero(d > 0):
        notes[REGISTER_DOWN_NOTE] += 1


def detect_meter(series: MeterSeries, quantity: str, report: ScanReport, *, tz: str,
                 settings: DetectorSettings | None = None) -> list[ChargingSession]:
    """Sessions of one cleaned meter: coarse data (median interval >= 5 min) through the
    interval-energy detector, finer data through :func:`detectors.detect_sessions`."""
    if series.t.size < 2:
        report.fine_meters += 1
        return []
    interval = float(np.median(np.diff(series.t)))
    if quantity == "register_kwh":
        _check_register_direction(series.v, report.notes)
    if interval >= COARSE_S:
        report.coarse_meters += 1
        detect = _interval_detector()
        if detect is None:
            report.coarse_skipped += 1
            return []
        t_end, e, interval = to_intervals(series, quantity, report.notes)
        ok = ~np.isnan(e)
        try:
            return list(detect(t_end[ok], e[ok], interval_s=interval, tz=tz))
        except ValueError:   # irregular intervals the interval detector cannot grid
            report.notes["coarse meters the interval detector refused"] += 1
            return []
    coarse_register = register_window(series.v, interval) if quantity == "register_kwh" else None
    if coarse_register is not None:
        res, step, window = coarse_register
        report.notes[f"meters with a coarse register ({res * 1000:.3g} Wh per {interval:.3g} s = {step:.3g} W "
                      f"steps; differenced over {window / 60:.3g} min)"] += 1
        report.coarse_meters += 1
        detect = _interval_detector()
        if detect is None:
            report.coarse_skipped += 1
            return []
        t_end, e = register_blocks(series, window, report.notes)
        try:
            return list(detect(t_end, e, interval_s=window, tz=tz))
        except ValueError:
            report.notes["coarse meters the interval detector refused"] += 1
            return []
    report.fine_meters += 1
    t, p = to_power(series, quantity, report.notes)
    return detect_sessions(t, p, settings, tz=tz)


def scan_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    tz: str | None = None,
    household_tz: str = "Asia/Shanghai",
    skip_malformed: bool = False,
    chunk_rows: int = 500_000,
    bucket_rows: int = 2_000_000,
    tmp_dir: str | os.PathLike | None = None,
    progress: bool = False,
    settings: DetectorSettings | None = None,
) -> ScanReport:
    """Scan a utility export for charging sessions and write them to ``output_path``.

    Args:
        input_path: long-format CSV (optionally gzip) or Parquet (module docstring).
        output_path: CSV, or JSON when it ends in ``.json``; written even with no session.
        tz: IANA zone of timestamps without an offset (None: they are UTC).
        household_tz: IANA zone of the households, for the detector's night-time feature.
        skip_malformed: count malformed rows instead of stopping at the first.
        chunk_rows: rows parsed at once (pass 1 memory).
        bucket_rows: target rows per bucket (pass 2 memory).
        tmp_dir: where the bucket files go (default: the system's temporary folder).
        progress: show a progress bar (rich) on stderr.
        settings: detector constants.

    Returns:
        The :class:`ScanReport`.

    Raises:
        ScanError: malformed input (file, line, column), unless ``skip_malformed``; a
            missing column or not exactly one quantity column, an empty, unreadable,
            non-UTF-8 or truncated gzip file, a directory always.
        FileNotFoundError: ``input_path`` does not exist.
        ValueError: an unknown time zone; ``output_path`` is the input file.
        ScanWriteError: the output or the temporary files cannot be written.
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    src, dst = Path(input_path), Path(output_path)
    for zone in (tz, household_tz):
        if zone is not None:
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {zone!r} (an IANA name such as Asia/Shanghai)") from None
    if src.is_dir():
        raise ScanError(src, None, None, "is a directory, not a file")
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such file")
    if same_file(src, dst):
        raise ValueError(f"{dst}: the output would overwrite the input file")
    report = ScanReport()

    def count(reason: str, n: int) -> None:
        if n:
            report.unusable[reason] += n

    try:
        reader = _Reader(src, tz, chunk_rows, skip_malformed, count)
    except GZIP_ERRORS as exc:
        raise ScanError(src, None, None, f"truncated or corrupt gzip file ({exc})") from None
    except OSError as exc:
        raise ScanError(src, None, None, exc.strerror or str(exc)) from None
    report.quantity = reader.quantity
    ids: dict[str, int] = {}
    names: list[str] = []
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                   TimeRemainingColumn(), console=Console(stderr=True), disable=not progress, transient=False)
    try:
        tmp_ctx = tempfile.TemporaryDirectory(prefix="flylead-scan-", dir=tmp_dir)
    except OSError as exc:
        reader.close()
        raise ScanWriteError("tmp", tmp_dir or tempfile.gettempdir(), exc.strerror or str(exc)) from None
    with tmp_ctx as tmp, bar:
        clock = time.perf_counter()
        n_buckets = int(min(512, max(1, math.ceil(reader.estimated_rows() / bucket_rows))))
        try:
            buckets = _Buckets(Path(tmp), n_buckets)
        except OSError as exc:
            reader.close()
            raise ScanWriteError("tmp", tmp, exc.strerror or str(exc)) from None
        try:
            read_task = bar.add_task(f"reading {src.name}",
                                     total=reader.total_rows if reader.parquet else reader.total_bytes)
            for chunk in reader.chunks():
                report.rows_read += len(chunk.ok)
                sel = np.flatnonzero(chunk.ok)
                if sel.size:
                    codes = _codes(chunk.ids, sel, ids, names)
                    if chunk.amb is not None:   # flagged in the code's top bit for pass 2
                        codes |= chunk.amb[sel].astype(np.uint32) << np.uint32(31)
                    buckets.write(codes, chunk.t[sel], chunk.v[sel])
                bar.update(read_task, completed=(report.rows_read if reader.parquet else reader.bytes_done()))
        except GZIP_ERRORS as exc:
            raise ScanError(src, None, None, f"truncated or corrupt gzip file ({exc})") from None
        except OSError as exc:   # the bucket files (disk full ...); the input is open already
            raise ScanWriteError("tmp", tmp, exc.strerror or str(exc)) from None
        finally:
            buckets.close()
            reader.close()
        report.seconds_read = time.perf_counter() - clock
        clock = time.perf_counter()
        # rows the CSV parser skipped never reached a chunk
        report.rows_read += report.unusable.get("wrong number of fields", 0)
        try:
            writer = _Writer(dst)
        except OSError as exc:
            raise ScanWriteError("out", dst, exc.strerror or str(exc)) from None
        try:
            det_task = bar.add_task("detecting", total=int(buckets.rows.sum()))
            for path, rows in zip(buckets.paths, buckets.rows):
                if rows:
                    _scan_bucket(path, names, reader.quantity, report, writer, household_tz, settings, tz)
                path.unlink()
                bar.advance(det_task, int(rows))
            writer.close()
        except OSError as exc:
            raise ScanWriteError("out", dst, exc.strerror or str(exc)) from None
        finally:
            if not writer.f.closed:
                writer.f.close()
        report.seconds_detect = time.perf_counter() - clock
    report.meters = len(names)
    report.sessions = writer.n
    report.rows_used = report.rows_read - sum(report.unusable.values())
    return report


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` are the same file (the same inode when both exist, else the
    same resolved path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def _codes(ids, sel: np.ndarray, table: dict[str, int], names: list[str]) -> np.ndarray:
    """Integer codes (uint32) of the meter ids at ``sel``, new ids added to ``table``."""
    import pyarrow as pa

    if len(names) > CODE_MASK:
        raise ValueError(f"more than {int(CODE_MASK)} distinct meter ids")
    pc = _pc()
    enc = pc.dictionary_encode(ids.take(pa.array(sel)))
    local = np.empty(len(enc.dictionary), dtype=np.uint32)
    for i, name in enumerate(enc.dictionary.to_pylist()):
        code = table.get(name)
        if code is None:
            code = table[name] = len(names)
            names.append(name)
        local[i] = code
    return local[enc.indices.to_numpy(zero_copy_only=False)]


def _scan_bucket(path: Path, names: list[str], quantity: str, report: ScanReport, writer: _Writer,
                 tz: str, settings: DetectorSettings | None, naive_tz: str | None = None) -> None:
    """Pass 2 for one bucket file: per meter (by meter id), resolve ambiguous local times
    (``naive_tz``), clean, detect, write."""
    rec = np.fromfile(path, dtype=RECORD)
    amb = rec["code"] >> np.uint32(31) if naive_tz is not None else None
    raw = rec["code"] & CODE_MASK
    order = np.argsort(raw, kind="stable")   # stable: file order within a meter
    codes = raw[order]
    t, v = rec["t"][order], rec["v"][order]
    amb = amb[order].astype(bool) if amb is not None and amb.any() else None
    del rec, raw
    cuts = np.flatnonzero(np.diff(codes)) + 1
    starts, ends = np.r_[0, cuts], np.r_[cuts, codes.size]
    for a, b in sorted(zip(starts.tolist(), ends.tolist()), key=lambda ab: names[codes[ab[0]]]):
        t_m = t[a:b]
        if amb is not None and amb[a:b].any():
            t_m = resolve_ambiguous(t_m, amb[a:b], naive_tz, report.notes)
        series = clean_meter(t_m, v[a:b], report.notes, report.unusable)
        for s in detect_meter(series, quantity, report, tz=tz, settings=settings):
            writer.write(names[codes[a]], s)
