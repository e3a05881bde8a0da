"""Streaming detector benchmark: cost per poll and state per household.

Feeds every household of the demo scenario (48 h, 60 s polls with +-5 s jitter and 1 %
lost, :func:`simulators.sampling.poll` model) through :class:`detectors.StreamingDetector`
one reading at a time, as the agent does, and reports per household:

- microseconds per poll (mean over the run, core re-runs included) and, as the ratio the
  developer guide asks for, that cost over a baseline run in the same process: appending
  each reading to a one-minute running mean in plain Python (the least any per-poll
  detector must do);
- the detector's state after the run (the ring of one-minute bins plus its bookkeeping),
  measured with tracemalloc as the memory a fresh detector holds after the run.

Targets (issue 4): under 50 us per household per poll, under 64 KiB of state.

``--check`` also runs every household with the re-run trigger off (the core at every
``analysis_interval_s``) and asserts that the sessions reported, and when, are the same:
the trigger only saves work.

Usage: .venv/bin/python bench/bench_streaming.py [--seeds 1 2 ...] [--check]
Writes bench/results/streaming.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detectors import DetectorSettings, StreamingDetector  # noqa: E402
from simulators.scenario import demo_scenario  # noqa: E402


def _poll(trace, rng):
    try:
        from simulators.sampling import poll
    except ImportError:  # older tree: the model lived in the tests
        sys.path.insert(0, str(ROOT / "tests"))
        from test_detector import poll
    return poll(trace, rng)


def _baseline(t: list[float], p: list[float]) -> float:
    """Seconds for a one-minute running mean fed one reading at a time (plain Python)."""
    t0 = time.perf_counter()
    cur, total, count, bins = None, 0.0, 0, []
    for ti, pi in zip(t, p):
        k = int(ti // 60.0)
        if k != cur:
            if count:
                bins.append(total / count)
            cur, total, count = k, 0.0, 0
        total += pi
        count += 1
    return time.perf_counter() - t0


def _run(t: list[float], p: list[float], settings: DetectorSettings, tz: str):
    det = StreamingDetector(settings, tz=tz)
    reported = []
    t0 = time.perf_counter()
    for ti, pi in zip(t, p):
        for s in det.update(ti, pi):
            reported.append((round(s.start), round(s.end), ti))
    for s in det.flush():
        reported.append((round(s.start), round(s.end), None))
    return time.perf_counter() - t0, reported, det


def _state_bytes(t: list[float], p: list[float], tz: str) -> int:
    """Memory held by a detector after the run (bytes), tracemalloc."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    _, _, det = _run(t, p, DetectorSettings(), tz)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(s.size_diff for s in after.compare_to(before, "filename"))
    del det
    return held


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--check", action="store_true", help="compare with the trigger off")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "streaming.json")
    args = ap.parse_args()
    rows, mismatches = [], 0
    for seed in args.seeds:
        sc = demo_scenario(seed=seed)
        rng = np.random.default_rng(seed)
        for trace in sc.traces:
            tt, pp = _poll(trace, rng)
            t, p = tt.tolist(), pp.tolist()
            base_s = min(_baseline(t, p) for _ in range(3))
            run_s, reported, _ = min((_run(t, p, DetectorSettings(), sc.tz) for _ in range(3)),
                                     key=lambda r: r[0])
            row = {
                "seed": seed, "household": trace.household, "polls": len(t),
                "us_per_poll": run_s / len(t) * 1e6,
                "baseline_us_per_poll": base_s / len(t) * 1e6,
                "ratio_to_baseline": run_s / base_s,
                "state_bytes": _state_bytes(t, p, sc.tz),
                "sessions": len(reported),
            }
            if args.check:
                _, always, _ = _run(t, p, DetectorSettings(trigger_fall_w=0.0), sc.tz)
                row["same_as_trigger_off"] = always == reported
                mismatches += always != reported
            rows.append(row)
            print(f"seed {seed} {trace.household}: {row['us_per_poll']:6.1f} us/poll "
                  f"(x{row['ratio_to_baseline']:.0f} baseline), state {row['state_bytes'] / 1024:.1f} KiB"
                  + (f", same as trigger off: {row['same_as_trigger_off']}" if args.check else ""))
    us = np.array([r["us_per_poll"] for r in rows])
    state = max(r["state_bytes"] for r in rows)
    summary = {"mean_us_per_poll": float(us.mean()), "max_us_per_poll": float(us.max()),
               "max_state_kib": state / 1024}
    print(f"mean {summary['mean_us_per_poll']:.1f} us/poll, worst household "
          f"{summary['max_us_per_poll']:.1f} us/poll, largest state {summary['max_state_kib']:.1f} KiB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(), "numpy": np.__version__,
        "note": "us_per_poll: mean over 48 h of 60 s polls of one household, core re-runs included;"
                " ratio_to_baseline: over a plain-Python one-minute running mean in the same process",
        "summary": summary, "results": rows}, indent=2) + "\n")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
