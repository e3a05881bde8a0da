"""``flylead scan-file``: utility exports (CSV, Parquet; power, interval energy, register)
to charging sessions, with every unusable row counted and malformed input named by file,
line and column.

The household is a quiet home (standby and fridge) with one lead-acid session starting at
2026-11-27T14:00:00Z, read once a minute; the detector finds its start to the minute on
clean data (tests/test_detector.py), so every variant here must too.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from flylead.cli import app
from flylead.scanfile import _NUMBER_RE, ScanError, _arrow_number, scan_file
from simulators.loads import household_trace
from simulators.scenario import DEFAULT_START

H = 3600.0
TRUE_START = DEFAULT_START + 10 * H          # 2026-11-27T14:00:00Z
runner = CliRunner()


def _iso(t: float, tz: str | None = None, offset: bool = True) -> str:
    d = datetime.fromtimestamp(t, UTC)
    if tz:
        d = d.astimezone(ZoneInfo(tz))
    text = d.strftime("%Y-%m-%dT%H:%M:%S")
    if offset:
        text += "Z" if tz is None else d.strftime("%z")[:3] + ":" + d.strftime("%z")[3:]
    return text


@pytest.fixture(scope="module")
def home():
    """(t, p_w, truth): one minute readings (read at :30) of the quiet home, 36 h."""
    trace, truth = household_trace("q1", DEFAULT_START, 36, 4, step_s=60.0, appliances={"standby", "fridge"},
                                   sessions=[(TRUE_START, "lead_acid")])
    t = trace.start + np.arange(trace.power_w.size) * 60.0 + 30.0
    return t, trace.power_w, truth[0]


def _rows(t, p, quantity, meter="m1"):
    if quantity == "power_w":
        vals = p
    elif quantity == "energy_kwh":   # energy in the minute ending at t
        vals = p * 60.0 / 3.6e6
    else:
        vals = 1234.5 + np.cumsum(p * 60.0 / 3.6e6)
    return [(meter, tt, float(v)) for tt, v in zip(t, vals)]


def _write_csv(path: Path, rows, quantity, fmt=lambda t: _iso(t)) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["meter_id", "timestamp", quantity])
        for m, t, v in rows:
            w.writerow([m, fmt(t) if isinstance(t, float) else t, f"{v:.6f}" if isinstance(v, float) else v])
    return path


def _sessions(path: Path) -> list[dict]:
    if path.suffix == ".json":
        return json.loads(path.read_text())
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _start(row) -> float:
    return datetime.fromisoformat(row["start"].replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("quantity", ["power_w", "energy_kwh", "register_kwh"])
def test_csv_each_quantity_finds_the_session(tmp_path, home, quantity):
    t, p, true = home
    src = _write_csv(tmp_path / "in.csv", _rows(t, p, quantity), quantity)
    out = tmp_path / "out.csv"
    report = scan_file(src, out)
    assert report.quantity == quantity
    assert (report.rows_read, report.rows_used, report.meters) == (2160, 2160, 1)
    (row,) = _sessions(out)
    assert list(row) == ["meter_id", "start", "end", "energy_kwh", "peak_w", "profile", "confidence"]
    assert row["meter_id"] == "m1" and row["profile"] == "lead_acid"
    assert abs(_start(row) - true.start) <= 120
    assert row["start"].endswith("Z")
    assert float(row["energy_kwh"]) == pytest.approx(true.energy_kwh, rel=0.2)


def test_parquet_with_timestamp_type_and_json_output(tmp_path, home):
    t, p, true = home
    table = pa.table({
        "meter_id": pa.array(["m1"] * t.size),
        "timestamp": pa.array((t * 1e6).astype("int64"), type=pa.timestamp("us", "UTC")),
        "energy_kwh": pa.array(p * 60.0 / 3.6e6),
        "voltage_v": pa.array(np.full(t.size, 220.0)),  # other columns are ignored
    })
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=500)
    report = scan_file(tmp_path / "in.parquet", tmp_path / "out.json", chunk_rows=700)
    assert (report.rows_read, report.rows_used) == (2160, 2160)
    (row,) = _sessions(tmp_path / "out.json")
    assert abs(_start(row) - true.start) <= 120 and row["profile"] == "lead_acid"


def test_parquet_iso_text_column(tmp_path, home):
    t, p, true = home
    table = pa.table({"meter_id": ["m1"] * t.size, "timestamp": [_iso(x) for x in t], "power_w": p})
    pq.write_table(table, tmp_path / "in.pq")
    scan_file(tmp_path / "in.pq", tmp_path / "out.csv")
    (row,) = _sessions(tmp_path / "out.csv")
    assert abs(_start(row) - true.start) <= 120


def test_local_time_with_tz_and_mixed_offsets(tmp_path, home):
    """Naive local times with --tz, and the same instants with +08:00 and Z mixed, give the
    same session as UTC."""
    t, p, _ = home
    rows = _rows(t, p, "power_w")
    naive = _write_csv(tmp_path / "naive.csv", rows, "power_w", fmt=lambda x: _iso(x, "Asia/Shanghai", offset=False))
    mixed = _write_csv(tmp_path / "mixed.csv",
                       [(m, _iso(x, "Asia/Shanghai") if i % 2 else _iso(x), v) for i, (m, x, v) in enumerate(rows)],
                       "power_w")
    utc = _write_csv(tmp_path / "utc.csv", rows, "power_w")
    scan_file(utc, tmp_path / "utc.out.csv")
    scan_file(naive, tmp_path / "naive.out.csv", tz="Asia/Shanghai")
    scan_file(mixed, tmp_path / "mixed.out.csv")
    expect = _sessions(tmp_path / "utc.out.csv")
    assert len(expect) == 1
    assert _sessions(tmp_path / "naive.out.csv") == expect
    assert _sessions(tmp_path / "mixed.out.csv") == expect
    # without --tz the naive local times are read as UTC: 8 h later
    scan_file(naive, tmp_path / "as_utc.csv")
    assert _start(_sessions(tmp_path / "as_utc.csv")[0]) - _start(expect[0]) == 8 * H


def test_messy_register_export(tmp_path, home):
    """Shuffled rows, duplicates (5 identical, 2 with another value), a counter reset
    (meter replaced at 03:00 UTC, long before the session), a 40-min gap, empty cells and a
    second meter interleaved: every oddity counted, the session still found."""
    t, p, true = home
    rows = _rows(t, p, "register_kwh")
    reset_at = int((DEFAULT_START + 23 * H - t[0]) // 60)          # 03:00 next day
    rows = rows[:reset_at] + [(m, x, v - 1200.0) for m, x, v in rows[reset_at:]]
    del rows[100:140]                                              # 40-min gap
    rng = np.random.default_rng(3)
    dups = [rows[i] for i in (10, 20, 30, 40, 50)]
    conflicting = [(m, x, v - 1e-4) for m, x, v in (rows[60], rows[70])]
    other = [("m2", x, 10.0 + i * 0.001) for i, x in enumerate(t[::10])]
    empty = [("", _iso(t[5]), 1.0), ("m2", "", 1.0), ("m2", _iso(t[7]), "")]
    allrows = rows + dups + conflicting + other + empty
    order = rng.permutation(len(allrows))
    src = _write_csv(tmp_path / "in.csv", [allrows[i] for i in order], "register_kwh")
    report = scan_file(src, tmp_path / "out.csv", bucket_rows=10_000)
    assert report.rows_read == len(allrows) == 2120 + 5 + 2 + 216 + 3
    assert dict(report.unusable) == {
        "duplicate row": 5, "conflicting duplicate (later row kept)": 2,
        "missing meter_id": 1, "missing timestamp": 1, "missing register_kwh": 1}
    assert report.rows_used == report.rows_read - 10
    assert report.notes["counter_resets"] == 1
    assert report.notes["gaps"] == 1
    assert report.notes["out_of_order"] > 1000
    assert report.meters == 2
    (row,) = _sessions(tmp_path / "out.csv")
    assert row["meter_id"] == "m1" and abs(_start(row) - true.start) <= 120


def test_many_meters_spread_over_buckets_give_the_same_sessions(tmp_path, home):
    """Three meters' rows interleaved; one bucket or several (bounded memory) alike."""
    t, p, _ = home
    rows = []
    for m in ("a", "b", "c"):
        rows += _rows(t, p if m == "b" else np.full(t.size, 80.0), "power_w", meter=m)
    rows.sort(key=lambda r: r[1])
    src = _write_csv(tmp_path / "in.csv", rows, "power_w")
    one = scan_file(src, tmp_path / "one.csv", bucket_rows=10**7, chunk_rows=1000)
    many = scan_file(src, tmp_path / "many.csv", bucket_rows=2000, chunk_rows=1000)
    assert (one.meters, many.meters) == (3, 3)
    assert _sessions(tmp_path / "one.csv") == _sessions(tmp_path / "many.csv")
    assert [r["meter_id"] for r in _sessions(tmp_path / "one.csv")] == ["b"]


def test_coarse_interval_energy_goes_to_the_interval_detector(tmp_path, home):
    t, p, _ = home
    e15 = p[: p.size // 15 * 15].reshape(-1, 15).sum(axis=1) * 60.0 / 3.6e6
    t15 = DEFAULT_START + 900.0 * np.arange(1, e15.size + 1)
    src = _write_csv(tmp_path / "in.csv", [("m1", x, float(v)) for x, v in zip(t15, e15)], "energy_kwh")
    report = scan_file(src, tmp_path / "out.csv")
    assert (report.coarse_meters, report.fine_meters, report.coarse_skipped) == (1, 0, 0)
    from detectors.interval import detect_interval_sessions

    expect = detect_interval_sessions(t15, e15, interval_s=900.0, tz="Asia/Shanghai")
    assert len(_sessions(tmp_path / "out.csv")) == len(expect)


# ----------------------------------------------------------------------------- errors


def _cli(*args):
    return runner.invoke(app, ["scan-file", *map(str, args)])


@pytest.mark.parametrize(("text", "line", "column", "problem"), [
    ("meter_id,timestamp,power_w\nm1,2026-11-27T00:00:00Z,1\n\nm1,2026-11-27T00:01:00Z,1,5\n", 4, None, "4 fields, expected 3"),
    ("meter_id,timestamp,power_w\nm1,2026-11-27T00:00:00Z,1\nm1,2026-11-27T00:01:00Z,1\n\nm1,2026-11-27T00:02:00Z,1.2.3\n", 5, "power_w", "not a number"),
    ("meter_id,timestamp,power_w\nm1,2026-11-27T00:00:00Z,1\nm1,27/11/2026 00:01,1\n", 3, "timestamp", "not an ISO 8601"),
    ("meter_id,time,power_w\nm1,2026-11-27T00:00:00Z,1\n", 1, "timestamp", "missing"),
    ("meter_id,timestamp,power_w,energy_kwh\nm1,2026-11-27T00:00:00Z,1,2\n", 1, None, "need exactly one of"),
])
def test_malformed_input_names_file_line_and_column(tmp_path, text, line, column, problem):
    src = tmp_path / "bad.csv"
    src.write_text(text)
    with pytest.raises(ScanError) as err:
        scan_file(src, tmp_path / "out.csv")
    assert (err.value.line, err.value.column) == (line, column)
    assert problem in err.value.problem
    res = _cli(src, "--out", tmp_path / "out.csv")
    assert res.exit_code == 2
    assert f"bad.csv:{line}:" in res.output and problem in res.output


def test_skip_malformed_counts_instead(tmp_path):
    src = tmp_path / "bad.csv"
    src.write_text("meter_id,timestamp,power_w\nm1,2026-11-27T00:00:00Z,1\nm1,2026-11-27T00:01:00Z,x\n"
                   "m1,yesterday,1\nm1,2026-11-27T00:03:00Z,1,9\nm1,2026-11-27T00:04:00Z,inf\n"
                   "m1,2026-11-27T00:05:00Z,NA\n")
    report = scan_file(src, tmp_path / "out.csv", skip_malformed=True)
    assert report.rows_read == 6 and report.rows_used == 1
    assert dict(report.unusable) == {"malformed power_w": 1, "malformed timestamp": 1, "wrong number of fields": 1,
                                     "non-finite power_w": 1, "missing power_w": 1}


def test_cli_prints_the_accounting_and_no_progress_bar_off_a_terminal(tmp_path, home):
    t, p, _ = home
    rows = _rows(t, p, "power_w")
    src = _write_csv(tmp_path / "in.csv", rows + [rows[0], ("m1", _iso(t[-1] + 60), "")], "power_w")
    res = _cli(src, "--out", tmp_path / "out.csv", "--report", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    assert "1 session from 1 meter (2160 of 2162 rows used, power_w)" in res.output
    assert "not used: duplicate row: 1" in res.output and "not used: missing power_w: 1" in res.output
    assert "reading" not in res.output and "━" not in res.output     # no bar when not a TTY
    assert json.loads((tmp_path / "r.json").read_text())["unusable"] == {"duplicate row": 1, "missing power_w": 1}
    assert _cli(tmp_path / "nope.csv", "--out", tmp_path / "o.csv").exit_code == 2
    assert _cli(src, "--out", tmp_path / "o.csv", "--tz", "Mars/Olympus").exit_code == 2


# ----------------------------------------------------------------------------- a new user's mistakes


def test_output_or_report_equal_to_the_input_is_refused(tmp_path, home):
    t, p, _ = home
    src = _write_csv(tmp_path / "same.csv", _rows(t[:100], p[:100], "power_w"), "power_w")
    before = src.read_bytes()
    res = _cli(src, "--out", src)
    assert res.exit_code == 2
    assert f"error: --out {src}: is the input file {src}; refusing to overwrite it" in res.output
    res = _cli(src, "--out", tmp_path / "o.csv", "--report", tmp_path / "." / "same.csv")
    assert res.exit_code == 2 and "error: --report" in res.output and "is the input file" in res.output
    assert src.read_bytes() == before and not (tmp_path / "o.csv").exists()
    with pytest.raises(ValueError, match="would overwrite the input"):
        scan_file(src, tmp_path / "x" / ".." / "same.csv")


def test_unwritable_outputs_are_named_before_the_scan(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("meter_id,timestamp,power_w\nm1,2026-11-27T00:00:00Z,1\n")
    (tmp_path / "adir").mkdir()
    cases = [
        (["--out", tmp_path / "adir"], f"error: --out {tmp_path / 'adir'}: is a directory"),
        (["--out", tmp_path / "o.csv", "--report", tmp_path / "nope" / "r.json"],
         f"error: --report {tmp_path / 'nope' / 'r.json'}: folder {tmp_path / 'nope'} does not exist"),
        (["--out", tmp_path / "o.csv", "--tmp-dir", tmp_path / "nope"], f"error: --tmp-dir {tmp_path / 'nope'}: does not exist"),
        (["--out", tmp_path / "o.csv", "--tmp-dir", src], f"error: --tmp-dir {src}: is not a directory"),
        (["--out", "/proc/flylead-x.csv"], "error: --out /proc/flylead-x.csv: folder /proc is not writable"),
        (["--out", tmp_path / "o.parquet"],
         f"error: --out {tmp_path / 'o.parquet'}: the sessions are written as CSV or JSON; end the name in .csv or .json"),
        (["--out", tmp_path / "o.csv", "--report", tmp_path / "o.csv"],
         f"error: --report {tmp_path / 'o.csv'}: is also the --out file {tmp_path / 'o.csv'}; give another name"),
    ]
    for args, message in cases:
        res = _cli(src, *args)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output and "Traceback" not in res.output
        assert isinstance(res.exception, SystemExit)
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize(("data", "line", "column", "problem"), [
    (b"", None, None, "file is empty"),
    (b"PAR1\x15\x04\x15\x80\x01\x15\x00", None, None, "this is a Parquet file: name it .parquet or .pq"),
    (b"\x89PNG\r\n\x1a\n\x00", 1, None, "not UTF-8 text: byte 0x89 (byte 1 of the line)"),
    (b"meter_id,timestamp,power_w\nm1,2026-11-27T00:00:00Z,1\nm1,2026-11-27T00:01:00Z,1\xff\n", 3, "power_w",
     "not UTF-8 text: byte 0xff (byte 26 of the line)"),
    # a quoted newline: later lines are still named right
    (b'meter_id,timestamp,power_w\n"m\n1",2026-11-27T00:00:00Z,1\nm1,yesterday,1\n', 4, "timestamp", "not an ISO 8601"),
    (b'meter_id,timestamp,power_w\n"m\n1",2026-11-27T00:00:00Z,1\nm1,2026-11-27T00:01:00Z,1,9\n', 4, None,
     "4 fields, expected 3"),
    (b'meter_id,timestamp,power_w\nm1,2026-11-27T00:00:00Z,1\nm1,"2026-11-27T00:01:00Z,1\nm1,2026-11-27T00:02:00Z,1\n',
     3, None, "a quote opened on this line is never closed (2 fields, expected 3"),
])
def test_unreadable_files_are_named(tmp_path, data, line, column, problem):
    src = tmp_path / "bad.csv"
    src.write_bytes(data)
    with pytest.raises(ScanError) as err:
        scan_file(src, tmp_path / "out.csv")
    assert (err.value.line, err.value.column) == (line, column)
    assert problem in err.value.problem
    res = _cli(src, "--out", tmp_path / "out.csv")
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit)
    assert res.output.startswith(f"error: {src}{'' if line is None else f':{line}'}: ") and problem in res.output


def test_truncated_gzip_and_directory_input(tmp_path, home):
    import gzip

    t, p, _ = home
    plain = _write_csv(tmp_path / "in.csv", _rows(t, p, "power_w"), "power_w")
    whole = gzip.compress(plain.read_bytes())
    for name, data in (("head.csv.gz", whole[:100]), ("half.csv.gz", whole[: len(whole) // 2])):
        (tmp_path / name).write_bytes(data)
        res = _cli(tmp_path / name, "--out", tmp_path / "o.csv")
        assert res.exit_code == 2, res.output
        assert res.output.startswith(f"error: {tmp_path / name}: truncated or corrupt gzip file")
    res = _cli(tmp_path, "--out", tmp_path / "o.csv")
    assert res.exit_code == 2 and f"error: {tmp_path}: is a directory, not a file" in res.output


def test_coarse_register_is_differenced_over_15_minutes(tmp_path):
    """A register kept to 0.001 kWh read once a minute moves in 60 W steps: read reading by
    reading it hides the charger; over 15-minute windows the session is found."""
    start = DEFAULT_START + 10 * H
    trace, (true,) = household_trace("q1", DEFAULT_START, 36, 4, step_s=60.0, appliances={"standby", "fridge"},
                                     sessions=[(start, "lithium")])
    t = trace.start + np.arange(trace.power_w.size) * 60.0 + 30.0
    reg = np.round(1234.5 + np.cumsum(trace.power_w * 60.0 / 3.6e6), 3)
    src = tmp_path / "reg.csv"
    src.write_text("meter_id,timestamp,register_kwh\n" + "".join(f"m1,{_iso(a)},{b:.3f}\n" for a, b in zip(t, reg)))
    res = _cli(src, "--out", tmp_path / "out.csv", "--report", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    note = "meters with a coarse register (1 Wh per 60 s = 60 W steps; differenced over 15 min)"
    assert f"note: {note}: 1" in res.output
    assert "gaps" not in res.output and "counter_resets" not in res.output   # no zero counts
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["notes"] == {note: 1}
    assert (report["coarse_meters"], report["fine_meters"]) == (1, 0)
    (row,) = _sessions(tmp_path / "out.csv")
    assert abs(_start(row) - true.start) <= 1800
    assert float(row["energy_kwh"]) == pytest.approx(true.energy_kwh, rel=0.2)


def test_household_tz_does_not_follow_tz(tmp_path, home):
    """--tz says how to read timestamps without an offset; the night-time feature keeps the
    household's zone (Asia/Shanghai) unless --household-tz says otherwise."""
    t, p, _ = home
    e15 = p[: p.size // 15 * 15].reshape(-1, 15).sum(axis=1) * 60.0 / 3.6e6
    t15 = DEFAULT_START + 900.0 * np.arange(1, e15.size + 1)
    src = _write_csv(tmp_path / "e15.csv", [("m1", x, float(v)) for x, v in zip(t15, e15)], "energy_kwh")
    assert _cli(src, "--out", tmp_path / "a.csv").exit_code == 0
    assert _cli(src, "--out", tmp_path / "b.csv", "--tz", "UTC").exit_code == 0
    assert _cli(src, "--out", tmp_path / "c.csv", "--tz", "UTC", "--household-tz", "Asia/Shanghai").exit_code == 0
    expect = _sessions(tmp_path / "a.csv")
    assert len(expect) == 1      # with the night-time feature in UTC there is none
    assert _sessions(tmp_path / "b.csv") == expect == _sessions(tmp_path / "c.csv")


# ----------------------------------------------------------------------------- a new user's trial


@pytest.mark.parametrize("value", ["1_000", "0_0", "١٠٠"])
def test_numbers_python_reads_but_pyarrow_does_not_are_malformed(tmp_path, value):
    """float() takes 1_000, 0_0 and Arabic-Indic digits, pyarrow does not: the cell is named
    like any other non-number (it once crashed with an IndexError), or counted when skipping."""
    src = tmp_path / "v.csv"
    src.write_text(f"meter_id,timestamp,power_w\nm1,2026-11-27T00:00:00Z,{value}\nm1,2026-11-27T00:01:00Z,1e3\n"
                   "m1,2026-11-27T00:02:00Z,+.5\n")
    res = _cli(src, "--out", tmp_path / "out.csv")
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit)
    assert res.output == f"error: {src}:2: column 'power_w': not a number: {value!r}\n"
    report = scan_file(src, tmp_path / "out.csv", skip_malformed=True)
    assert (report.rows_read, report.rows_used) == (3, 2)
    assert dict(report.unusable) == {"malformed power_w": 1}


def test_number_pattern_agrees_with_pyarrow():
    """The pattern that finds the cells pyarrow's cast refuses accepts exactly what it accepts."""
    rng = random.Random(7)
    alphabet = "0123456789.eE+-_naifty() ١,x"
    texts = ["1", "1.", ".5", ".", "+.5", "1e5", "1E-5", "1e", "e5", "00012", "1e500", "-0", "NaN", "-nan", "INF",
             "-Infinity", "infinit", "nan(12_a)", "snan", "0x10", "1,5", "1_000", "١٠٠", "１", "1.2.3", "+-1"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(5000)]
    ours = pc.match_substring_regex(pa.array(texts), _NUMBER_RE).to_pylist()
    assert [t for t, m in zip(texts, ours) if m != _arrow_number(t)] == []


@pytest.mark.parametrize("header", [" meter_id , timestamp , power_w ", "meter_id,timestamp,power_w ",
                                    '"meter_id ",\ttimestamp,power_w'])
def test_header_with_spaces_around_names_reads_like_a_clean_one(tmp_path, home, header):
    t, p, _ = home
    clean = _write_csv(tmp_path / "clean.csv", _rows(t, p, "power_w"), "power_w")
    text = clean.read_text()
    spaced = tmp_path / "spaced.csv"
    spaced.write_text(header + "\n" + text.split("\n", 1)[1])
    expect = scan_file(clean, tmp_path / "clean.out.csv")
    got = scan_file(spaced, tmp_path / "spaced.out.csv")
    assert (got.rows_read, got.rows_used, got.meters, got.sessions) == (2160, 2160, 1, 1)
    assert (got.rows_used, got.sessions) == (expect.rows_used, expect.sessions)
    assert _sessions(tmp_path / "spaced.out.csv") == _sessions(tmp_path / "clean.out.csv")
    res = _cli(spaced, "--out", tmp_path / "cli.csv")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cli.csv").read_text() == (tmp_path / "clean.out.csv").read_text()


def test_parquet_column_names_with_spaces_are_matched(tmp_path):
    table = pa.table({" meter_id": ["m1", "m2"], "timestamp ": ["2026-11-27T00:00:00Z"] * 2, " power_w ": [1.0, 2.0]})
    pq.write_table(table, tmp_path / "in.parquet")
    report = scan_file(tmp_path / "in.parquet", tmp_path / "out.csv")
    assert (report.rows_read, report.rows_used, report.meters, report.quantity) == (2, 2, 2, "power_w")


@pytest.mark.parametrize(("header", "column", "problem"), [
    ("meter_id,timestamp,power_w,power_w", "power_w", "appears 2 times in the header (fields 3 and 4)"),
    ("meter_id,timestamp, meter_id,power_w", "meter_id", "appears 2 times in the header (fields 1 and 3)"),
    ("timestamp,meter_id,timestamp,power_w,timestamp", "timestamp",
     "appears 3 times in the header (fields 1, 3 and 5)"),
])
def test_duplicate_columns_are_an_error(tmp_path, header, column, problem):
    src = tmp_path / "dup.csv"
    src.write_text(header + "\n" + ",".join(["m1"] * header.count(",")) + ",1\n")
    with pytest.raises(ScanError) as err:
        scan_file(src, tmp_path / "out.csv")
    assert (err.value.line, err.value.column) == (1, column)
    assert err.value.problem == problem + "; rename or remove all but one"
    res = _cli(src, "--out", tmp_path / "out.csv")
    assert res.exit_code == 2
    assert res.output == f"error: {src}:1: column {column!r}: {problem}; rename or remove all but one\n"


def test_duplicate_columns_the_scan_ignores_are_fine(tmp_path):
    """Columns the scan does not read may repeat (two notes, or the empty names of trailing commas)."""
    src = tmp_path / "in.csv"
    src.write_text("meter_id,note,timestamp,power_w,note,,\nm1,a,2026-11-27T00:00:00Z,5,b,,\n")
    report = scan_file(src, tmp_path / "out.csv")
    assert (report.rows_read, report.rows_used, report.meters) == (1, 1, 1)


def test_whitespace_only_cells_are_missing(tmp_path):
    """A cell of spaces or tabs is empty, i.e. missing, in every column, never malformed."""
    src = tmp_path / "ws.csv"
    src.write_text("meter_id,timestamp,power_w\nm1,2026-11-27T00:00:00Z, \nm1,2026-11-27T00:01:00Z,\t\n"
                   " ,2026-11-27T00:02:00Z,1\nm1,  ,1\nm1,2026-11-27T00:04:00Z,1\nm1,2026-11-27T00:05:00Z,\n")
    res = _cli(src, "--out", tmp_path / "out.csv", "--report", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    assert "0 sessions from 1 meter (1 of 6 rows used, power_w)" in res.output
    assert json.loads((tmp_path / "r.json").read_text())["unusable"] == {
        "missing meter_id": 1, "missing power_w": 3, "missing timestamp": 1}


@pytest.mark.parametrize(("stamp", "problem"), [
    ("1600-01-01T00:00:00Z", "outside the supported range (1677-09-21 to 2262-04-11)"),
    ("2300-01-01T00:00:00Z", "outside the supported range (1677-09-21 to 2262-04-11)"),
    ("2300-01-01 00:00:00.123456789", "outside the supported range (1677-09-21 to 2262-04-11)"),
    ("2300-13-01T00:00:00Z", "not an ISO 8601 date and time"),
])
def test_timestamps_outside_the_nanosecond_range_are_named_so(tmp_path, stamp, problem):
    src = tmp_path / "t.csv"
    src.write_text(f"meter_id,timestamp,power_w\nm1,2026-11-27T00:00:00Z,1\nm1,{stamp},1\n")
    res = _cli(src, "--out", tmp_path / "out.csv")
    assert res.exit_code == 2
    assert res.output == f"error: {src}:3: column 'timestamp': {problem}: {stamp!r}\n"
    report = scan_file(src, tmp_path / "out.csv", skip_malformed=True)
    assert dict(report.unusable) == {"malformed timestamp": 1}


def test_parquet_timestamps_outside_the_nanosecond_range_are_named_so(tmp_path):
    stamps = pa.array([datetime(2026, 11, 27), datetime(1600, 1, 1), datetime(2026, 11, 27, 0, 1)],
                      type=pa.timestamp("us", "UTC"))
    table = pa.table({"meter_id": ["m1"] * 3, "timestamp": stamps, "power_w": [1.0] * 3})
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(ScanError) as err:
        scan_file(tmp_path / "t.parquet", tmp_path / "out.csv")
    assert str(err.value) == (f"{tmp_path / 't.parquet'}:2: column 'timestamp': outside the supported range "
                              "(1677-09-21 to 2262-04-11): '1600-01-01T00:00:00+00:00'")
    report = scan_file(tmp_path / "t.parquet", tmp_path / "out.csv", skip_malformed=True)
    assert (report.rows_used, dict(report.unusable)) == (2, {"malformed timestamp": 1})


# ----------------------------------------------------------------------------- tester's bugs (Nov 2026)


def _spy_series(monkeypatch):
    """{meter order: (t UTC ISO list, values)} of the series pass 2 hands the detector."""
    import flylead.scanfile as sf

    got = []

    def spy(series, quantity, report, **kw):
        got.append(([datetime.fromtimestamp(x, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for x in series.t],
                    series.v.tolist()))
        return []

    monkeypatch.setattr(sf, "detect_meter", spy)
    return got


def test_quoted_newlines_in_a_file_of_many_read_blocks(tmp_path):
    """Ids with a quoted line end ("M\\n000001"), 100,000 rows = 3.7 MB, read in 64 kB
    blocks (chunk_rows=100): every row read, 10 meters.  (Failed once past pyarrow's first
    blocks: "CSV parser got out of sync with chunker", or "a quote opened on this line is
    never closed (1 fields ...)"; at the default chunk size from 9 MB on.)"""
    src = tmp_path / "nl.csv"
    with open(src, "w", newline="") as f:
        f.write("meter_id,timestamp,power_w\n")
        for k in range(10_000):
            for m in range(10):
                f.write(f'"M\n{m:06d}",2026-11-{20 + k // 1440}T{k // 60 % 24:02d}:{k % 60:02d}:00Z,{50 + m}.5\n')
    report = scan_file(src, tmp_path / "out.csv", chunk_rows=100)
    assert (report.rows_read, report.rows_used, report.meters, dict(report.unusable)) == (100_000, 100_000, 10, {})
    # a quote never closed in a file of many blocks is still named, with its line (the
    # field would run to the end of the file: pyarrow gives up at a block's end)
    lines = ["meter_id,timestamp,power_w"] + [f"m{k % 10},2026-11-20T{k // 600:02d}:{k // 10 % 60:02d}:00Z,50"
                                              for k in range(6000)]
    lines[7] = 'm7,"2026-11-20T00:00:00Z,1'
    bad = tmp_path / "stray.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ScanError) as err:
        scan_file(bad, tmp_path / "out.csv", chunk_rows=100)
    assert (err.value.line, err.value.column) == (8, None)
    assert err.value.problem.startswith("a quote opened on this line is never closed")


def test_skip_malformed_keeps_no_bad_row_in_memory(tmp_path):
    """50,000 rows with a trailing comma, skipped: counted, and the reader keeps nothing of
    them (it kept every row's number and text: 7.1 MB here, 1.2 GB at 10 M rows)."""
    import tracemalloc

    from flylead.scanfile import _Reader

    src = tmp_path / "commas.csv"
    with open(src, "w") as f:
        f.write("meter_id,timestamp,power_w\n")
        for k in range(50_000):
            f.write(f"m{k % 7},2026-11-27T{k // 3600 % 24:02d}:{k // 60 % 60:02d}:{k % 60:02d}Z,100,\n")
    report = scan_file(src, tmp_path / "out.csv", skip_malformed=True)
    assert (report.rows_read, report.rows_used) == (50_000, 0)
    assert dict(report.unusable) == {"wrong number of fields": 50_000}
    counts = Counter()
    tracemalloc.start()
    try:
        reader = _Reader(src, None, 500_000, True, lambda reason, n: counts.update({reason: n}))
        for _ in reader.chunks():
            pass
        kept = tracemalloc.get_traced_memory()[0]   # what the reader holds after the whole file
        reader.close()
    finally:
        tracemalloc.stop()
    assert counts == {"wrong number of fields": 50_000}
    assert kept < 200_000, kept


def test_cr_only_line_ends_are_read(tmp_path):
    """Old Mac / Excel line ends (CR alone): read, and lines named right (was a traceback:
    "new-line character seen in unquoted field")."""
    src = tmp_path / "cr.csv"
    src.write_bytes(b"meter_id,timestamp,power_w\rm1,2026-11-27T20:15:00Z,100\rm1,2026-11-27T20:16:00Z,101\r")
    res = _cli(src, "--out", tmp_path / "o.csv")
    assert res.exit_code == 0, res.output
    assert "0 sessions from 1 meter (2 of 2 rows used, power_w)" in res.output
    src.write_bytes(b"meter_id,timestamp,power_w\rm1,2026-11-27T20:15:00Z,100\rm1,yesterday,101\r")
    res = _cli(src, "--out", tmp_path / "o.csv")
    assert res.exit_code == 2
    assert res.output == f"error: {src}:3: column 'timestamp': not an ISO 8601 date and time: 'yesterday'\n"


#: Europe/London leaves BST at 2026-10-25 01:00 UTC: local 01:00-01:59 happen twice.
FALL_BACK_LOCAL = ["00:45", "01:00", "01:15", "01:30", "01:45", "01:00", "01:15", "01:30", "01:45", "02:00"]
FALL_BACK_UTC = ["2026-10-24T23:45:00Z", "2026-10-25T00:00:00Z", "2026-10-25T00:15:00Z", "2026-10-25T00:30:00Z",
                 "2026-10-25T00:45:00Z", "2026-10-25T01:00:00Z", "2026-10-25T01:15:00Z", "2026-10-25T01:30:00Z",
                 "2026-10-25T01:45:00Z", "2026-10-25T02:00:00Z"]


def test_dst_fall_back_repeated_local_times_read_as_the_later_instant(tmp_path, monkeypatch):
    """Naive local times in Europe/London across the fall-back (BST 00:45-01:45, then GMT
    01:00-02:00), two meters interleaved: each gives the 10 instants 15 min apart, no
    duplicate, nothing out of order; as Parquet (a naive timestamp column) too."""
    got = _spy_series(monkeypatch)
    src = tmp_path / "dst.csv"
    lines = ["meter_id,timestamp,power_w"]
    for i, hm in enumerate(FALL_BACK_LOCAL):
        lines += [f"m1,2026-10-25 {hm}:00,{100 + i}", f"m2,2026-10-25T{hm}:00,{200 + i}"]
    src.write_text("\n".join(lines) + "\n")
    report = scan_file(src, tmp_path / "out.csv", tz="Europe/London")
    assert got == [(FALL_BACK_UTC, [100.0 + i for i in range(10)]), (FALL_BACK_UTC, [200.0 + i for i in range(10)])]
    assert dict(report.unusable) == {}
    assert dict(report.notes) == {"ambiguous local time, repeated: read as the later instant": 8}
    got.clear()
    naive = [datetime.fromisoformat(f"2026-10-25T{hm}:00") for hm in FALL_BACK_LOCAL]
    pq.write_table(pa.table({"meter_id": ["m1"] * 10, "timestamp": pa.array(naive, pa.timestamp("s")),
                             "power_w": [float(i) for i in range(10)]}), tmp_path / "dst.parquet")
    report = scan_file(tmp_path / "dst.parquet", tmp_path / "out.csv", tz="Europe/London")
    assert got == [(FALL_BACK_UTC, [float(i) for i in range(10)])]
    assert dict(report.unusable) == {}


def test_dst_spring_forward_non_existent_local_times_are_counted(tmp_path, monkeypatch):
    """Europe/London skips 01:00-01:59 on 2026-03-29: such rows are not used, counted as
    `non-existent local time` (they all read 00:59:59.999999999 UTC before: duplicates)."""
    got = _spy_series(monkeypatch)
    src = tmp_path / "spring.csv"
    src.write_text("meter_id,timestamp,power_w\n" + "".join(
        f"m1,2026-03-29 {hm}:00,{i}\n" for i, hm in enumerate(["00:45", "01:00", "01:15", "01:30", "01:45", "02:00"])))
    report = scan_file(src, tmp_path / "out.csv", tz="Europe/London")
    assert got == [(["2026-03-29T00:45:00Z", "2026-03-29T01:00:00Z"], [0.0, 5.0])]
    assert dict(report.unusable) == {"non-existent local time": 4} and report.rows_used == 2


def test_parquet_binary_meter_id_not_utf8_is_named(tmp_path):
    table = pa.table({"meter_id": pa.array([b"m1", b"m\xff2", b"m1"], pa.binary()),
                      "timestamp": ["2026-11-27T00:00:00Z", "2026-11-27T00:01:00Z", "2026-11-27T00:02:00Z"],
                      "power_w": [1.0, 2.0, 3.0]})
    src = tmp_path / "p_bin.parquet"
    pq.write_table(table, src)
    res = _cli(src, "--out", tmp_path / "o.csv")
    assert res.exit_code == 2
    assert res.output == (f"error: {src}:2: column 'meter_id': not UTF-8 text (byte 0xff, byte 2 of the value): "
                          "b'm\\xff2'\n")
    report = scan_file(src, tmp_path / "o.csv", skip_malformed=True)
    assert (report.rows_used, report.meters, dict(report.unusable)) == (2, 1, {"malformed meter_id": 1})


@pytest.mark.parametrize("data", [b"meter_id,timestamp,power_w", b"meter_id,timestamp,power_w\n",
                                  b"meter_id,timestamp,power_w\r\n", b"meter_id,timestamp,power_w\r"])
def test_header_only_file_has_no_rows(tmp_path, data):
    src = tmp_path / "h.csv"
    src.write_bytes(data)
    res = _cli(src, "--out", tmp_path / "o.csv")
    assert res.exit_code == 0, res.output
    assert "0 sessions from 0 meters (0 of 0 rows used, power_w)" in res.output
    assert (tmp_path / "o.csv").read_text() == "meter_id,start,end,energy_kwh,peak_w,profile,confidence\n"


def test_finer_than_nanoseconds_is_not_called_out_of_range(tmp_path):
    src = tmp_path / "f.csv"
    src.write_text("meter_id,timestamp,power_w\nm1,2026-11-27T20:15:00Z,1\nm1,2026-11-27T20:16:00.1234567891Z,1\n")
    res = _cli(src, "--out", tmp_path / "o.csv")
    assert res.exit_code == 2
    assert res.output == (f"error: {src}:3: column 'timestamp': not a supported ISO 8601 date and time "
                          "(10 fraction digits: more than nanosecond precision): '2026-11-27T20:16:00.1234567891Z'\n")
    src.write_text("meter_id,timestamp,power_w\nm1,2026-11-27T20:16:00.123456789Z,1\n")
    assert scan_file(src, tmp_path / "o.csv").rows_used == 1


def test_every_nan_spelling_is_missing(tmp_path):
    """NaN in any spelling pyarrow reads (NaN, nan, NAN, nan(1), -nan) and a Parquet float NaN
    are missing values, as documented; only infinities are non-finite."""
    src = tmp_path / "nan.csv"
    src.write_text("meter_id,timestamp,power_w\n" + "".join(
        f"m1,2026-11-27T00:0{i}:00Z,{v}\n" for i, v in enumerate(["NaN", "nan", "NAN", "nan(1)", "-nan", "inf", "1"])))
    report = scan_file(src, tmp_path / "o.csv")
    assert dict(report.unusable) == {"missing power_w": 5, "non-finite power_w": 1}
    pq.write_table(pa.table({"meter_id": ["m1"] * 3, "timestamp": ["2026-11-27T00:00:00Z", "2026-11-27T00:01:00Z",
                                                                   "2026-11-27T00:02:00Z"],
                             "power_w": [float("nan"), float("inf"), 1.0]}), tmp_path / "nan.parquet")
    report = scan_file(tmp_path / "nan.parquet", tmp_path / "o.csv")
    assert dict(report.unusable) == {"missing power_w": 1, "non-finite power_w": 1}


def test_register_going_down_throughout_is_noted(tmp_path):
    src = tmp_path / "down.csv"
    src.write_text("meter_id,timestamp,register_kwh\n" + "".join(
        f"m1,2026-11-27T{k // 60:02d}:{k % 60:02d}:00Z,{1000 - 0.002 * k:.3f}\n" for k in range(120)))
    res = _cli(src, "--out", tmp_path / "o.csv", "--report", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    notes = json.loads((tmp_path / "r.json").read_text())["notes"]
    assert notes["meters whose register went down more often than up (no power; an export register?)"] == 1
    assert notes["counter_resets"] == 119
    assert "note: meters whose register went down more often than up" in res.output
