"""scan-file benchmark: rows per second and peak memory on a utility export of >= 10 M rows.

Generates (in a temporary folder) a long-format export of ``--meters`` households x
``--days`` of one-minute ``power_w`` readings, all meters interleaved minute by minute (the
worst case for grouping by meter: every meter's rows are spread over the whole file), as
CSV and as Parquet.  The load of each meter is one of 32 simulated households
(:func:`simulators.loads.household_trace`, a third of them charging an e-bike on some
nights) with its own meter noise.

Each format is then run twice, each in a child process whose peak RSS (``ru_maxrss``) is
read from ``os.wait4``: the baseline, which only reads the file with the same pyarrow reader
and settings scan-file uses (CSV streaming reader with string columns; Parquet row batches),
and ``flylead scan-file``.  Reported: rows/s and the ratio to the baseline's, the split
between pass 1 (read, parse, partition) and pass 2 (clean, detect, write), peak RSS of
both, sessions found.

Usage: .venv/bin/python bench/bench_scanfile.py [--meters 1000] [--days 7] [--tmp /tmp]
Writes bench/results/scanfile.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulators.loads import household_trace  # noqa: E402
from simulators.scenario import DEFAULT_START  # noqa: E402

BASELINE = r"""
import sys, pyarrow as pa
path, fmt, col = sys.argv[1], sys.argv[2], sys.argv[3]
cols = ["meter_id", "timestamp", col]
n = 0
if fmt == "csv":
    import pyarrow.csv as pcsv
    r = pcsv.open_csv(open(path, "rb"), read_options=pcsv.ReadOptions(block_size=1 << 24),
                      convert_options=pcsv.ConvertOptions(include_columns=cols, column_types={c: pa.string() for c in cols}))
    for b in r:
        n += b.num_rows
else:
    import pyarrow.parquet as pq
    for b in pq.ParquetFile(path).iter_batches(batch_size=500_000, columns=cols):
        n += b.num_rows
print(n)
"""


def households(days: int, pool: int = 32) -> np.ndarray:
    """(pool, days * 1440) float32 W of simulated homes; every third charges on 2 nights."""
    out = []
    for i in range(pool):
        sessions = []
        if i % 3 == 0:
            sessions = [(DEFAULT_START + (8 + 24 * d) * 3600.0 + 600.0 * i, "lead_acid" if i % 2 else "lithium")
                        for d in (1, min(4, days - 2))]
        tr, _ = household_trace(f"b{i}", DEFAULT_START, days * 24, i, step_s=60.0, sessions=sessions)
        out.append(tr.power_w[: days * 1440])
    return np.array(out, dtype=np.float32)


def generate(folder: Path, meters: int, days: int) -> tuple[Path, Path, int]:
    pool = households(days)
    rng = np.random.default_rng(0)
    which = rng.integers(0, pool.shape[0], meters)
    ids = pa.array([f"M{m:06d}" for m in range(meters)])
    csv_path, pq_path = folder / "export.csv", folder / "export.parquet"
    schema = pa.schema([("meter_id", pa.string()), ("timestamp", pa.string()), ("power_w", pa.float64())])
    rows = 0
    with pcsv.CSVWriter(csv_path, schema) as cw, pq.ParquetWriter(pq_path, schema) as pw:
        for day in range(days):
            k = np.arange(day * 1440, (day + 1) * 1440)
            stamps = np.datetime64(int(DEFAULT_START), "s") + (k * 60).astype("timedelta64[s]")
            text = pa.array(np.char.add(np.datetime_as_string(stamps, unit="s"), "Z").astype(object))
            p = pool[which][:, k] + rng.normal(0, 1.5, (meters, k.size)).astype(np.float32)
            table = pa.table({
                "meter_id": ids.take(pa.array(np.tile(np.arange(meters), k.size))),
                "timestamp": text.take(pa.array(np.repeat(np.arange(k.size), meters))),
                "power_w": pa.array(np.round(p.T.ravel().astype(np.float64), 1)),
            })
            cw.write_table(table)
            pw.write_table(table)
            rows += table.num_rows
    return csv_path, pq_path, rows


def run_child(argv: list[str]) -> tuple[float, float, str]:
    """(wall s, peak RSS MB, stdout) of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} failed: {err}")
    return wall, usage.ru_maxrss / 1024.0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meters", type=int, default=1000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="flylead-bench-", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        csv_path, pq_path, rows = generate(folder, args.meters, args.days)
        gen_s = time.perf_counter() - t0
        results = {"rows": rows, "meters": args.meters, "days": args.days, "generate_s": round(gen_s, 1),
                   "csv_mb": round(csv_path.stat().st_size / 1e6, 1), "parquet_mb": round(pq_path.stat().st_size / 1e6, 1)}
        flylead = str(Path(sys.executable).with_name("flylead"))
        for fmt, path in (("csv", csv_path), ("parquet", pq_path)):
            base_s, base_mb, out = run_child([sys.executable, "-c", BASELINE, str(path), fmt, "power_w"])
            assert int(out) == rows, out
            report = folder / f"report-{fmt}.json"
            scan_s, scan_mb, _ = run_child([flylead, "scan-file", str(path), "--out", str(folder / f"sessions-{fmt}.csv"),
                                            "--report", str(report), "--no-progress", "--tmp-dir", str(folder)])
            rep = json.loads(report.read_text())
            results[fmt] = {
                "baseline_read_s": round(base_s, 2), "baseline_rows_per_s": int(rows / base_s),
                "baseline_peak_rss_mb": round(base_mb, 1),
                "scan_s": round(scan_s, 2), "scan_rows_per_s": int(rows / scan_s),
                "ratio_to_baseline": round(base_s / scan_s, 3),
                "pass1_read_partition_s": rep["seconds_read"], "pass2_detect_s": rep["seconds_detect"],
                "scan_peak_rss_mb": round(scan_mb, 1), "sessions": rep["sessions"], "rows_used": rep["rows_used"],
            }
            print(fmt, json.dumps(results[fmt]), flush=True)
        results["cpu_count"] = os.cpu_count()
        out = ROOT / "bench" / "results" / "scanfile.json"
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
