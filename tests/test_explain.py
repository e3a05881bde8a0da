"""``flylead explain``: a PNG of a household's load with its sessions, clear errors otherwise."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from typer.testing import CliRunner

from detectors import detect_sessions
from flylead.cli import app
from flylead.explain import ExplainError, from_csv, from_scenario
from simulators.loads import household_trace
from simulators.polling import poll
from simulators.scenario import DEFAULT_START, demo_scenario

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHANGHAI = ZoneInfo("Asia/Shanghai")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_scenario_household_png(tmp_path):
    out = tmp_path / "h02.png"
    res = CliRunner().invoke(app, ["explain", "--scenario-seed", "1", "--household", "h02", "--out", str(out)])
    assert res.exit_code == 0, res.output
    load = from_scenario(1, "h02")
    n = len(detect_sessions(load.t, load.p_w, tz=load.tz))  # 2 when written
    assert n >= 1 and f"h02, {n} session(s) detected" in res.output
    assert png_size(out) == (1540, 935)  # 14 x 8.5 in at 110 dpi: overview and close-ups
    assert out.stat().st_size > 50_000


def test_scenario_household_is_polled_as_evaluate_polls_it():
    load = from_scenario(1, "h05")
    sc = demo_scenario(seed=1)
    rng = np.random.default_rng(1)
    for trace in sc.traces[:5]:
        t, p = poll(trace, rng)
    np.testing.assert_array_equal(load.t, t)
    np.testing.assert_array_equal(load.p_w, p)
    assert load.truth == [(s.start, s.end) for s in sc.truth if s.household == "h05"]


def test_csv_meter_png_with_naive_local_timestamps(tmp_path):
    trace, (true,) = household_trace("m1", DEFAULT_START, 30, 4, step_s=60.0,
                                     appliances={"standby", "fridge"},
                                     sessions=[(DEFAULT_START + 9 * 3600, "lithium")])
    t, p = poll(trace, np.random.default_rng(0))
    csv_path = tmp_path / "meters.csv"
    lines = ["meter_id,timestamp,power_w"]
    for a, b in zip(t, p):  # naive local times (UTC+8), another meter interleaved, reversed
        lines.append(f"m1,{datetime.fromtimestamp(a, SHANGHAI).replace(tzinfo=None).isoformat()},{b:.3f}")
        lines.append(f"m2,{datetime.fromtimestamp(a, UTC).isoformat()},1.0")
    csv_path.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    load = from_csv(csv_path, "m1", tz="Asia/Shanghai")
    np.testing.assert_allclose(load.t, np.round(t, 6), atol=1e-5)
    (s,) = detect_sessions(load.t, load.p_w, tz=load.tz)
    assert abs(s.start - true.start) <= 120
    out = tmp_path / "m1.png"
    res = CliRunner().invoke(app, ["explain", "--csv", str(csv_path), "--meter", "m1", "--tz", "Asia/Shanghai",
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert png_size(out) == (1540, 935)
    # a meter with nothing to show: the overview alone
    out2 = tmp_path / "m2.png"
    res = CliRunner().invoke(app, ["explain", "--csv", str(csv_path), "--meter", "m2", "-o", str(out2)])
    assert res.exit_code == 0 and "0 session(s)" in res.output
    assert png_size(out2) == (1540, 528)


def test_unknown_household_or_meter_exits_2(tmp_path):
    res = CliRunner().invoke(app, ["explain", "--scenario-seed", "1", "--household", "h09",
                                   "-o", str(tmp_path / "x.png")])
    assert res.exit_code == 2
    assert "no household 'h09'" in res.output and "h01, h02" in res.output
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("meter_id,timestamp,power_w\nA1,2026-11-27T00:00:00Z,100\n")
    res = CliRunner().invoke(app, ["explain", "--csv", str(csv_path), "--meter", "B2", "-o", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "no row for meter 'B2' (meters in the file: A1)" in res.output
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("meter_id,time,power_w\n", "line 1: missing column(s) timestamp"),
    ("meter_id,timestamp,power_w\nA1,yesterday,100\n", "line 2, column timestamp: not ISO 8601"),
    ("meter_id,timestamp,power_w\nA1,2026-11-27T00:00:00Z,1O0\n", "line 2, column power_w: not a number"),
])
def test_malformed_csv_is_named(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ExplainError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_csv(path, "A1")
    res = CliRunner().invoke(app, ["explain", "--csv", str(path), "--meter", "A1", "-o", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and message in res.output


def test_input_options_are_checked(tmp_path):
    res = CliRunner().invoke(app, ["explain", "-o", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "either --scenario-seed" in res.output
    res = CliRunner().invoke(app, ["explain", "--csv", str(tmp_path / "none.csv"), "--meter", "A",
                                   "-o", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "none.csv" in res.output
    res = CliRunner().invoke(app, ["explain", "--scenario-seed", "1", "--household", "h02", "--meter", "m1",
                                   "-o", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "--meter goes with --csv" in res.output
    res = CliRunner().invoke(app, ["explain", "--csv", str(tmp_path / "none.csv"), "--meter", "A", "--household",
                                   "h02", "-o", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "--household goes with" in res.output
    assert not (tmp_path / "x.png").exists()


def test_bad_options_are_named_before_any_work(tmp_path):
    run = CliRunner().invoke
    res = run(app, ["explain", "--scenario-seed", "1", "--household", "h02", "--tz", "Bad/Zone",
                    "-o", str(tmp_path / "e.png")])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit)
    assert "flylead explain: --tz: unknown time zone 'Bad/Zone'" in res.output
    res = run(app, ["explain", "--scenario-seed", "-5", "--household", "h02", "-o", str(tmp_path / "e.png")])
    assert res.exit_code == 2 and "--scenario-seed" in res.output
    res = run(app, ["explain", "--scenario-seed", "1", "--household", "h02", "-o", str(tmp_path / "e.txt")])
    assert res.exit_code == 2 and "--out" in res.output and ".png, .pdf, .svg" in res.output
    (tmp_path / "d.png").mkdir()
    res = run(app, ["explain", "--scenario-seed", "1", "--household", "h02", "-o", str(tmp_path / "d.png")])
    assert res.exit_code == 2 and f"flylead explain: --out {tmp_path / 'd.png'}: is a directory" in res.output
    assert not (tmp_path / "e.png").exists()


def test_csv_is_strict_and_counts_what_it_merges(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('meter_id,timestamp,power_w\n"A\n1",2026-11-27T00:00:00Z,5\nA1,2026-11-27T00:01:00Z,100,7\n')
    with pytest.raises(ExplainError, match="line 4: 4 fields, expected 3"):
        from_csv(path, "A1")
    rows = ["meter_id,timestamp,power_w"] + [f"A1,2026-11-27T{h:02d}:{m:02d}:00Z,{100 + m}" for h in range(4)
                                              for m in range(60)]
    rows += ["A1,2026-11-27T00:05:00Z,105", "A1,2026-11-27T00:06:00Z,999", "A1,2026-11-27T00:07:00Z,NaN",
             "A1,2026-11-27T04:00:00Z,NA"]
    path.write_text("\n".join(rows) + "\n")
    load = from_csv(path, "A1")
    assert load.unusable == {"duplicate row": 1, "conflicting duplicate (later row kept)": 2, "missing power_w": 2}
    assert load.t.size == 241 and int(np.isnan(load.p_w).sum()) == 2 and load.p_w[6] == 999.0
    out = tmp_path / "a.svg"
    res = CliRunner().invoke(app, ["explain", "--csv", str(path), "--meter", "A1", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert (f"{out}: A1, 0 session(s) detected (239 readings used, conflicting duplicate (later row kept): 2, "
            "duplicate row: 1, missing power_w: 2)") in res.output.replace("\n", "")
    assert out.read_text().lstrip().startswith("<?xml") and "<svg" in out.read_text()[:1000]


def test_pdf_out_is_a_pdf(tmp_path):
    out = tmp_path / "h02.pdf"
    res = CliRunner().invoke(app, ["explain", "--scenario-seed", "1", "--household", "h02", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:5] == b"%PDF-"


def test_non_utf8_csv_names_the_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"meter_id,timestamp,power_w\nA1,2026-11-27T00:00:00Z,1\nA\xff1,2026-11-27T00:01:00Z,1\n")
    with pytest.raises(ExplainError, match=r"m.csv: line 3: not UTF-8 text: byte 0xff \(byte 2 of the line\)"):
        from_csv(path, "A1")


def test_label_names_the_other_start_when_the_start_is_unsure():
    """Start 21:00 local (13:00 UTC), start confidence 0.55 with the best other switch-on
    73 min earlier: the label says so; at 0.9 it does not."""
    from detectors import ChargingSession
    from flylead.explain import _label

    t = 1795870800.0  # 2026-11-28 13:00 UTC = 21:00 Asia/Shanghai
    unsure = ChargingSession(t, t + 5 * 3600, 0.61, 150.0, 0.9, "lithium",
                             {"start_confidence": 0.55, "start_alternative_offset_s": -73 * 60.0})
    label = _label(unsure, ZoneInfo("Asia/Shanghai"), 1)
    assert label == "#1 Sat 21:00-Sun 02:00\n0.61 kWh, lithium\nconfidence 0.90, start unsure (or 19:47)"
    sure = ChargingSession(t, t + 5 * 3600, 0.61, 150.0, 0.9, "lithium",
                           {"start_confidence": 0.9, "start_alternative_offset_s": -73 * 60.0})
    assert _label(sure, ZoneInfo("Asia/Shanghai"), 1).endswith("confidence 0.90")


def _scan_file_series(tmp_path, path, monkeypatch, tz=None):
    """{meter_id: (t, p)} that ``scan-file`` hands its detector for ``path``."""
    import flylead.scanfile as sf

    got = {}
    real = sf._scan_bucket

    def bucket(path_, names, *args, **kwargs):
        def spy(series, quantity, report, **kw):
            got[len(got)] = (series.t.copy(), series.v.copy())
            return []
        monkeypatch.setattr(sf, "detect_meter", spy)
        return real(path_, names, *args, **kwargs)

    monkeypatch.setattr(sf, "_scan_bucket", bucket)
    report = sf.scan_file(path, tmp_path / "scan.csv", tz=tz)
    monkeypatch.undo()
    return got, report


def test_csv_fields_are_read_as_scan_file_reads_them(tmp_path, monkeypatch):
    """` m1` and `m1` are two meters, as in scan-file (explain stripped ids: one); every
    ISO 8601 and number form scan-file takes gives the same readings, to the nanosecond."""
    path = tmp_path / "m.csv"
    path.write_text("meter_id,timestamp,power_w\n"
                    "m1,2026-11-27T00:00:00Z,100\n"
                    " m1,2026-11-27T00:00:30Z,7\n"
                    "m1,2026-11-27 00:01:00,1e3\n"
                    "m1,2026-11-27T08:02:00+08:00, .5 \n"
                    "m1,2026-11-27T00:03:00.123456789Z,-0.5\n"
                    "m1,2026-11-27T00:04:00Z,inf\n"
                    "NA,2026-11-27T00:05:00Z,1\n")
    load = from_csv(path, "m1")
    assert load.t.tolist() == [1795737600.0, 1795737660.0, 1795737720.0, 1795737780.123456789]
    assert load.p_w.tolist() == [100.0, 1000.0, 0.5, -0.5]
    assert load.unusable == {"non-finite power_w": 1}
    spaced = from_csv(path, " m1")
    assert (spaced.t.tolist(), spaced.p_w.tolist()) == ([1795737630.0], [7.0])
    with pytest.raises(ExplainError, match=r"meters in the file: m1,  m1\)"):
        from_csv(path, "m2")
    got, report = _scan_file_series(tmp_path, path, monkeypatch)
    assert report.meters == 2   # in pass 2 meters go by id: " m1" then "m1"
    for k, mine in ((0, spaced), (1, load)):
        np.testing.assert_array_equal(got[k][0], mine.t)
        np.testing.assert_array_equal(got[k][1], mine.p_w)


@pytest.mark.parametrize(("cells", "message"), [
    ("2026-11-27T00:00:00Z,1_000", "line 2, column power_w: not a number: '1_000'"),
    ("2026-11-27T00:00:00Z,١٠٠", "line 2, column power_w: not a number: '١٠٠'"),
    ("20261126T120000Z,100", "line 2, column timestamp: not ISO 8601: '20261126T120000Z'"),
])
def test_csv_refuses_what_scan_file_refuses(tmp_path, cells, message):
    """Python's float() takes 1_000 and Arabic-Indic digits, datetime.fromisoformat the basic
    form: explain took them, scan-file does not; now neither does."""
    path = tmp_path / "m.csv"
    path.write_text(f"meter_id,timestamp,power_w\nA1,{cells}\n", encoding="utf-8")
    with pytest.raises(ExplainError, match=message):
        from_csv(path, "A1")
    from flylead.scanfile import ScanError, scan_file

    with pytest.raises(ScanError):
        scan_file(path, tmp_path / "o.csv")


def test_csv_dst_fall_back_as_scan_file(tmp_path, monkeypatch):
    """Europe/London 2026-10-25: local 00:45-01:45 BST then 01:00-02:00 GMT read as ten
    instants 15 min apart (2026-10-24T23:45Z to 2026-10-25T02:00Z), as scan-file reads them."""
    local = ["00:45", "01:00", "01:15", "01:30", "01:45", "01:00", "01:15", "01:30", "01:45", "02:00"]
    path = tmp_path / "dst.csv"
    path.write_text("meter_id,timestamp,power_w\n"
                    + "".join(f"m1,2026-10-25 {hm}:00,{i}\n" for i, hm in enumerate(local)))
    load = from_csv(path, "m1", tz="Europe/London")
    start = datetime(2026, 10, 24, 23, 45, tzinfo=UTC).timestamp()
    assert load.t.tolist() == [start + 900.0 * k for k in range(10)]
    assert load.p_w.tolist() == [float(i) for i in range(10)] and load.unusable == {}
    got, _ = _scan_file_series(tmp_path, path, monkeypatch, tz="Europe/London")
    np.testing.assert_array_equal(got[0][0], load.t)
