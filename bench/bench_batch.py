"""Batch-scan benchmark: one-minute data of many households, samples per second on one core.

Builds (households x one week of one-minute bins) float32 arrays from 64 simulated homes
(:func:`simulators.loads.household_trace`), tiled to ``--households`` rows, for three
populations: ``busy`` (every appliance; a third charge an e-bike on two nights), ``quiet``
(standby and fridge only, a third charging) and ``steady`` (a steady standby load with meter
noise: vacant flats, the screen's best case).  For each it reports, as samples per second
and as a ratio to one numpy reduction pass over the same array in the same run
(``power.sum()``, best of 5):

- the vectorised screen (:func:`detectors.batch.screen`) alone;
- the share of households the screen hands to the core;
- the whole batch scan (:func:`detectors.batch.scan_batch`), measured on the 64 distinct
  homes (the core's cost for a tiled copy is the same) and extrapolated to the full array
  as screen time + core time per kept household x kept households.

numpy runs these passes on one thread, so samples/s here is per core.

Usage: .venv/bin/python bench/bench_batch.py [--households 1024] [--days 7]
Writes bench/results/batch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detectors.batch import scan_batch, screen  # noqa: E402
from simulators.loads import household_trace  # noqa: E402
from simulators.scenario import DEFAULT_START  # noqa: E402

POOL = 64


def population(kind: str, days: int) -> np.ndarray:
    n = days * 1440
    rng = np.random.default_rng(1)
    if kind == "steady":
        return (rng.uniform(30, 120, (POOL, 1)) + rng.normal(0, 2.0, (POOL, n))).astype(np.float32)
    rows = []
    for i in range(POOL):
        sessions = []
        if i % 3 == 0:
            sessions = [(DEFAULT_START + (8 + 24 * d) * 3600.0 + 600.0 * (i % 12), "lead_acid" if i % 2 else "lithium")
                        for d in (1, min(4, days - 2))]
        apps = {"standby", "fridge"} if kind == "quiet" else None
        tr, _ = household_trace(f"{kind}{i}", DEFAULT_START, days * 24, 1000 + i, step_s=60.0,
                                sessions=sessions, appliances=apps)
        rows.append(tr.power_w[:n])
    return np.array(rows, dtype=np.float32)


def best(f, repeat: int) -> float:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        out.append(time.perf_counter() - t0)
    return min(out)


def bench(kind: str, households: int, days: int) -> dict:
    pool = population(kind, days)
    t = DEFAULT_START + 30.0 + 60.0 * np.arange(pool.shape[1])
    big = np.tile(pool, (households // POOL + 1, 1))[:households]
    samples = big.size
    sum_s = best(lambda: big.sum(), 5)
    screen_s = best(lambda: screen(t, big), 3)
    kept = screen(t, big)
    # the core on the distinct homes: per kept household
    t0 = time.perf_counter()
    found = scan_batch(t, pool)
    pool_s = time.perf_counter() - t0
    kept_pool = screen(t, pool)
    core_s = max(pool_s - best(lambda: screen(t, pool), 3), 0.0)
    core_per_kept = core_s / int(kept_pool.sum()) if kept_pool.any() else 0.0
    total_s = screen_s + core_per_kept * int(kept.sum())
    return {
        "households": households, "samples": samples, "dtype": str(big.dtype),
        "sum_samples_per_s": round(samples / sum_s / 1e6, 1),
        "screen_samples_per_s_M": round(samples / screen_s / 1e6, 1),
        "screen_ratio_to_sum": round(sum_s / screen_s, 4),
        "kept_share": round(float(kept.mean()), 3),
        "core_ms_per_kept_household": round(core_per_kept * 1e3, 1),
        "scan_samples_per_s_M": round(samples / total_s / 1e6, 2),
        "scan_ratio_to_sum": round(sum_s / total_s, 5),
        "sessions_in_distinct_homes": sum(map(len, found)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--households", type=int, default=1024)
    ap.add_argument("--days", type=int, default=7)
    args = ap.parse_args()
    results = {kind: bench(kind, args.households, args.days) for kind in ("steady", "quiet", "busy")}
    results["cpu_count"] = os.cpu_count()
    results["numpy"] = np.__version__
    out = ROOT / "bench" / "results" / "batch.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
