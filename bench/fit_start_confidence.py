"""Fit and check the start confidence of the charging detector (``DetectorSettings.start_fit``).

The detector reports, besides a session's confidence, how sure its *start* is: the score
margin from the switch-on it took to the best switch-on candidate more than 30 min away
(``detectors.charging._start_evidence``), mapped to 0..1 by a logistic ``a + b * margin``.
This script fits ``(a, b)`` by maximum likelihood (Newton's method) on sessions whose start
is right to 30 min or not, on seeds that nothing else uses (101-300 of the demo scenario,
2 poll draws each), and prints the calibration on seeds 1-20 and 21-40: the share of
correct starts per band of start confidence.

A "session" here is every charger-like taper inside a true session (from its switch-on to
30 min after its end) for which the detector finds a supported switch-on, confidence gates
not applied (so the fit sees the ambiguous cases the gates would drop too).

Usage: .venv/bin/python bench/fit_start_confidence.py [--train 101-300] [--draws 2]
Writes bench/results/start_confidence.json.  Takes about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detectors import steps  # noqa: E402
from detectors.charging import DetectorSettings, _check, _prepare, _switch_on, _tapers, to_grid  # noqa: E402
from simulators.corpora import sim_corpus  # noqa: E402

BANDS = ((0.0, 0.6), (0.6, 0.8), (0.8, 0.9), (0.9, 1.01))


def margins(seed: int, draws: int) -> list[tuple[float, bool]]:
    """(start margin, start right to 30 min) for every taper inside a true session of one
    seed's households (h08, the real household, has none)."""
    s = DetectorSettings()
    c = sim_corpus([seed], draws=draws)
    truth: dict[str, list] = {}
    for x in c.truth:
        truth.setdefault(x.household, []).append(x)
    out = []
    for ser in c.series:
        if ser.household not in truth:
            continue
        t, p = _check(ser.t, ser.values)
        valid = t[~np.isnan(p)][: s.phase_readings]
        t0, x = to_grid(t, p, s, steps.bin_offset(steps.grid_phase(valid, s.grid_s), s.grid_s))
        load = _prepare(x, s)
        for tp in _tapers(load, s):
            ti = t0 + tp.i0 * s.grid_s
            inside = [T for T in truth[ser.household] if T.start < ti < T.end + 1800.0]
            cand, ev = _switch_on(load, tp, s, set())
            if not inside or cand is None:
                continue
            right = abs(t0 + cand.k * s.grid_s - inside[0].start) <= s.start_alternative_s
            out.append((ev["start_margin"], bool(right)))
    return out


def collect(seeds: range, draws: int) -> np.ndarray:
    with ProcessPoolExecutor(2) as pool:
        rows = sum(pool.map(margins, seeds, [draws] * len(seeds)), [])
    return np.array(rows, dtype=float).reshape(-1, 2)


def fit(rows: np.ndarray) -> tuple[float, float]:
    """Logistic regression of correctness on the margin (Newton, a tiny ridge for safety)."""
    X = np.c_[np.ones(len(rows)), rows[:, 0]]
    y = rows[:, 1]
    w = np.zeros(2)
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-X @ w))
        H = X.T @ (X * (p * (1 - p))[:, None]) + 1e-6 * np.eye(2)
        w = w + np.linalg.solve(H, X.T @ (y - p))
    return float(w[0]), float(w[1])


def calibration(rows: np.ndarray, a: float, b: float) -> list[dict]:
    p = 1.0 / (1.0 + np.exp(-(a + b * rows[:, 0])))
    out = []
    for lo, hi in BANDS:
        sel = rows[(p >= lo) & (p < hi)]
        out.append({"band": [lo, min(hi, 1.0)], "sessions": int(len(sel)),
                    "right": None if not len(sel) else round(float(sel[:, 1].mean()), 3)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", default="101-300")
    ap.add_argument("--draws", type=int, default=2)
    args = ap.parse_args()
    lo, hi = map(int, args.train.split("-"))
    train = collect(range(lo, hi + 1), args.draws)
    a, b = fit(train)
    s = DetectorSettings()
    result = {"train": {"seeds": args.train, "draws": args.draws, "sessions": int(len(train)),
                        "right": round(float(train[:, 1].mean()), 3)},
              "fit": {"a": round(a, 3), "b": round(b, 3)},
              "settings": {"start_fit": list(s.start_fit), "start_margin_cap": s.start_margin_cap},
              "calibration": {"train": calibration(train, a, b)}}
    print(f"train seeds {args.train} x {args.draws} draws: {len(train)} sessions, "
          f"{train[:, 1].mean():.2f} with the start right; fit a={a:.3f} b={b:.3f} "
          f"(settings: {s.start_fit})")
    for name, seeds in (("1-20", range(1, 21)), ("21-40", range(21, 41))):
        rows = collect(seeds, 5)
        cal = calibration(rows, *s.start_fit)
        result["calibration"][name] = cal
        print(f"seeds {name} x 5 draws, settings' fit: " + "; ".join(
            f"{c['band'][0]:.1f}-{c['band'][1]:.1f}: {c['sessions']} sessions, {c['right']} right" for c in cal))
    out = ROOT / "bench" / "results" / "start_confidence.json"
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
