"""The 15-minute interval-energy detector on the demo scenario: precision, recall, F1.

Every household trace of ``demo_scenario(seed)`` is resampled to 15-minute interval energy
aligned to the local quarter-hour (:func:`simulators.sampling.interval_energy`) and run
through :func:`detectors.interval.detect_interval_sessions`; detections are matched to
``sc.truth`` by :func:`detectors.evaluate.match_sessions` (overlap, starts within 30 min).
Seeds 1-20 were used for tuning, seeds 21-40 were not.

    .venv/bin/python bench/bench_interval.py            # figures, seeds 1-20 and 21-40, h08
    .venv/bin/python bench/bench_interval.py --fit      # refit the confidence weights on 1-20
    .venv/bin/python bench/bench_interval.py --json bench/results/interval.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors.evaluate import match_sessions  # noqa: E402
from detectors.interval import (FEATURES, IntervalSettings, feature_vector,  # noqa: E402
                                detect_interval_sessions, interval_candidates)
from simulators.sampling import interval_energy  # noqa: E402
from simulators.scenario import demo_scenario  # noqa: E402


@dataclass(frozen=True)
class Found:
    household: str
    start: float
    end: float
    profile: str


def corpus(seeds):
    """(seed, household, t_end, energy_kwh, truth of that household) for every trace."""
    for seed in seeds:
        sc = demo_scenario(seed)
        for tr in sc.traces:
            t, e = interval_energy(tr, tz=sc.tz)
            yield seed, tr.household, t, e, [s for s in sc.truth if s.household == tr.household], sc.tz


def evaluate(seeds, settings=None):
    found, truth, h08 = [], [], 0
    for _seed, hh, t, e, true, tz in corpus(seeds):
        got = detect_interval_sessions(t, e, tz=tz, settings=settings)
        found += [Found(hh, s.start, s.end, s.profile) for s in got]
        truth += true
        if hh == "h08":
            h08 += len(got)
    m = match_sessions(found, truth)
    named = [(d.profile, tr.profile) for d, tr in m.pairs if d.profile != "unknown"]
    right = sum(a == b for a, b in named)
    return m, h08, (right, len(named), len(m.pairs))


def fit(seeds, l2=0.3, iters=3000):
    """Logistic regression (numpy, gradient descent with L2) of 'this candidate is a true
    session found with its start within 30 min' on the candidate features."""
    rows, labels = [], []
    for _seed, hh, t, e, true, tz in corpus(seeds):
        for c in interval_candidates(t, e, tz=tz):
            ok = any(c.start < tr.end and tr.start < c.end and abs(c.start - tr.start) <= 1800
                     for tr in true)
            rows.append(feature_vector(c.features))
            labels.append(1.0 if ok else 0.0)
    x = np.asarray(rows)
    y = np.asarray(labels)
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = np.c_[np.ones(len(x)), (x - mu) / sd]
    w = np.zeros(z.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-z @ w))
        grad = z.T @ (p - y) / len(y) + l2 * np.r_[0.0, w[1:]] / len(y)
        w -= 0.5 * grad
    # back to unscaled features
    raw = w[1:] / sd
    bias = w[0] - float(np.sum(w[1:] * mu / sd))
    print(f"fitted on {len(y)} candidates ({int(y.sum())} positives)")
    return (round(bias, 3), *(round(float(v), 3) for v in raw))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="refit the confidence weights on seeds 1-20")
    ap.add_argument("--json", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()
    settings = None
    if args.fit:
        weights = fit(range(1, 21))
        print("weights (bias, " + ", ".join(FEATURES) + "):", weights)
        best = None
        for thr in (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5):
            m, h08, _ = evaluate(range(1, 21), IntervalSettings(weights=weights, min_confidence=thr))
            print(f"  min_confidence {thr}: precision {m.precision:.3f} recall {m.recall:.3f} "
                  f"F1 {m.f1:.3f} h08 {h08}")
            if h08 == 0 and (best is None or m.f1 > best[0]):
                best = (m.f1, thr)
        print("min_confidence (best F1 on seeds 1-20 with no h08 session):", best[1])
        settings = IntervalSettings(weights=weights, min_confidence=best[1])
    report = {}
    for name, seeds in (("seeds 1-20 (tuning)", range(1, 21)), ("seeds 21-40 (held out)", range(21, 41))):
        t0 = time.perf_counter()
        m, h08, (right, named, pairs) = evaluate(seeds, settings)
        print(f"{name}: precision {m.precision:.3f} recall {m.recall:.3f} F1 {m.f1:.3f} "
              f"(tp {m.tp} fp {m.fp} fn {m.fn}); h08 sessions {h08}; profile named on {named} "
              f"of {pairs} matches, right on {right}; {time.perf_counter() - t0:.1f} s")
        report[name] = {"precision": m.precision, "recall": m.recall, "f1": m.f1, "tp": m.tp,
                        "fp": m.fp, "fn": m.fn, "h08_sessions": h08,
                        "profile_named": named, "profile_right": right}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
