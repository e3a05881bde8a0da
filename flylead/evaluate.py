"""``flylead evaluate``: our detector and two baselines on the same labelled corpora.

Corpora come from :mod:`simulators.corpora` (``sim``, ``uci``, ``uci-neg`` and their
15-minute versions); methods are

* ``flylead``: :func:`detectors.detect_sessions` on polled power;
  ``detectors.interval.detect_interval_sessions`` on 15-minute interval energy, imported
  when it is needed and reported as missing when it is not there;
* ``threshold``: :func:`detectors.baselines.threshold_sessions`;
* ``pelt``: :func:`detectors.baselines.pelt_sessions` (ruptures).

Both baselines read interval energy as the intervals' mean power
(:func:`detectors.baselines.interval_power`) on a 900 s grid.  Scores:
:func:`detectors.evaluate.match_sessions` (session precision, recall, F1: overlap and
starts within 30 min), :func:`detectors.evaluate.household_days` and false alarms
(unmatched detections) per 100 household-weeks.  This module holds the runner, the JSON
and the table; the CLI in :mod:`flylead.cli` only parses options.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detectors.charging import CONFIDENT_START
from detectors.evaluate import false_alarms_per_100_weeks, household_days, household_weeks, match_sessions
from simulators.corpora import CORPORA, NIGHT_WINDOW_H, Corpus, corpora

__all__ = ["CORPORA", "METHODS", "Detection", "MethodResult", "evaluate", "look_alikes", "results_table",
           "run_method", "write_json"]

#: Methods in the order of the table.
METHODS = ("flylead", "threshold", "pelt")



@dataclass(frozen=True, slots=True)
class Detection:
    """A detected session of any method, in the shape the metrics take.

    Attributes:
        household: household id of the corpus.
        start, end: UTC epoch s.
        energy_kwh: energy the method attributes to the session, kWh.
        start_confidence: how sure the method is of the start (0..1), for methods that say
            (ours on polled power: ``evidence["start_confidence"]``); None otherwise.
    """

    household: str
    start: float
    end: float
    energy_kwh: float
    start_confidence: float | None = None


@dataclass(slots=True)
class MethodResult:
    """One method on one corpus.

    ``status`` is ``"ok"``, ``"missing"`` (the method is not installed: ``error`` says what)
    or ``"failed"`` (it raised: ``error``); the figures are None unless ``"ok"``.
    """

    method: str
    status: str
    error: str | None = None
    seconds: float | None = None
    detections: int | None = None
    tp: int | None = None
    fp: int | None = None
    fn: int | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    day: dict[str, float] | None = None
    false_alarms_per_100_household_weeks: float | None = None
    sessions: list[dict[str, Any]] = field(default_factory=list)
    true_found: list[tuple[str, float]] = field(default_factory=list)
    confident_starts: dict[str, Any] | None = None


def _detector(method: str, corpus: Corpus) -> Callable[[str, np.ndarray, np.ndarray], list[Detection]]:
    """The method as ``f(household, t, values) -> detections``; raises ImportError when it
    is not installed."""
    if method == "flylead":
        if corpus.kind == "power":
            from detectors import detect_sessions

            def ours(h: str, t: np.ndarray, v: np.ndarray) -> list[Detection]:
                return [Detection(h, s.start, s.end, s.energy_kwh, s.evidence.get("start_confidence"))
                        for s in detect_sessions(t, v, tz=corpus.tz)]
            return ours
        from detectors.interval import detect_interval_sessions  # written alongside; may be missing

        def ours15(h: str, t: np.ndarray, v: np.ndarray) -> list[Detection]:
            found = detect_interval_sessions(t, v, interval_s=corpus.interval_s, tz=corpus.tz)
            return [Detection(h, s.start, s.end, s.energy_kwh) for s in found]
        return ours15
    from detectors import baselines

    grid = 60.0 if corpus.kind == "power" else float(corpus.interval_s)
    base = {"threshold": lambda t, p: baselines.threshold_sessions(t, p, tz=corpus.tz, grid_s=grid),
            "pelt": lambda t, p: baselines.pelt_sessions(t, p, grid_s=grid)}[method]
    if method == "pelt":
        import ruptures  # noqa: F401  (missing -> reported as missing, not failed)

    def run(h: str, t: np.ndarray, v: np.ndarray) -> list[Detection]:
        if corpus.kind == "interval":
            t, v = baselines.interval_power(t, v, corpus.interval_s)
        return [Detection(h, s.start, s.end, s.energy_kwh) for s in base(t, v)]
    return run


def run_method(corpus: Corpus, method: str) -> MethodResult:
    """Run ``method`` over every household of ``corpus`` and score it."""
    try:
        detect = _detector(method, corpus)
    except ImportError as exc:
        ours = (exc.name or "").split(".")[0] in ("detectors", "simulators", "flylead")
        hint = "" if ours else "; pip install 'flylead[eval]'"
        return MethodResult(method, "missing", error=f"{type(exc).__name__}: {exc}{hint}")
    t0 = time.perf_counter()
    found: list[Detection] = []
    try:
        for s in corpus.series:
            found += detect(s.household, s.t, s.values)
    except Exception as exc:  # noqa: BLE001  -- one broken method must not hide the others
        return MethodResult(method, "failed", error=f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - t0
    spans = corpus.spans
    m = match_sessions(found, corpus.truth)
    d = household_days(found, corpus.truth, spans, tz=corpus.tz)
    matched = {id(a) for a, _ in m.pairs}
    sure = None
    if any(f.start_confidence is not None for f in found):
        kept = [f for f in found if f.start_confidence is not None and f.start_confidence >= CONFIDENT_START]
        mc = match_sessions(kept, corpus.truth)
        sure = {"threshold": CONFIDENT_START, "detections": len(kept), "tp": mc.tp,
                "precision": mc.precision, "recall": mc.recall}
    return MethodResult(
        method, "ok", seconds=round(seconds, 3), detections=len(found), tp=m.tp, fp=m.fp, fn=m.fn,
        precision=m.precision, recall=m.recall, f1=m.f1,
        day={k: v for k, v in asdict(d).items()},
        false_alarms_per_100_household_weeks=false_alarms_per_100_weeks(m.fp, spans),
        sessions=[{"household": s.household, "start": s.start, "end": s.end, "energy_kwh": s.energy_kwh,
                   "start_confidence": s.start_confidence, "matched": id(s) in matched} for s in found],
        true_found=[(t.household, t.start) for _, t in m.pairs],
        confident_starts=sure,
    )


def _job(args: tuple[Corpus, str]) -> tuple[str, str, MethodResult]:
    corpus, method = args
    return corpus.name, method, run_method(corpus, method)


def evaluate(names: Sequence[str] = CORPORA, *, seeds: Sequence[int] = range(1, 21), replicas: int = 20,
             uci_seed: int = 1, uci_window_h: tuple[float, float] = NIGHT_WINDOW_H,
             methods: Sequence[str] = METHODS, workers: int = 1, draws: int = 5,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build the corpora, run every method on each, and gather the figures.

    Args:
        names: corpora (see :data:`simulators.corpora.CORPORA`).
        seeds: scenario seeds of ``sim``/``sim15``.
        replicas: replicas of the UCI household.
        uci_seed: seed of the UCI injections and polls.
        uci_window_h: local hours (from, to) of the UCI session starts.
        methods: some of :data:`METHODS`.
        workers: processes (1 = in this process); each (corpus, method) is one job.
        draws: poll draws per seed of ``sim`` (:func:`simulators.corpora.sim_corpus`): the
            figures of one draw move by about 0.1 in F1 with the instants the polls hit.
        progress: called with a short line as each (corpus, method) finishes.

    Returns:
        JSON-ready dict: ``settings``, ``corpora`` (name -> ``note``, ``kind``,
        ``households``, ``household_days``, ``household_weeks``, ``true_sessions``,
        ``methods`` (name -> :class:`MethodResult` as a dict), and for the simulated
        corpora ``look_alike_starts`` (:func:`look_alikes`) and each method's
        ``recall_look_alike`` and ``recall_other``), ``seconds``.

    Raises:
        ValueError: unknown corpus or method name, no seed, ``replicas`` < 1, ``draws`` < 1.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; expected some of {', '.join(METHODS)}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("no scenario seed given")
    kw = {"seeds": seeds, "replicas": replicas, "uci_seed": uci_seed, "uci_window_h": tuple(uci_window_h),
          "draws": draws}
    t0 = time.perf_counter()
    built = {c.name: c for c in corpora(names, **kw)}  # validates the names
    out: dict[str, Any] = {"corpora": {}}
    for name, c in built.items():
        spans = c.spans
        days = household_days([], [], spans, tz=c.tz).days
        out["corpora"][name] = {
            "note": c.note, "kind": c.kind, "interval_s": c.interval_s, "tz": c.tz,
            "households": len(c.series), "household_days": days,
            "household_weeks": round(household_weeks(spans), 3), "true_sessions": len(c.truth),
            "methods": {},
        }
    if any(c.name.startswith("sim") for c in built.values()):
        look = look_alikes(seeds)
        for name in built:
            if name.startswith("sim"):
                out["corpora"][name]["look_alike_starts"] = look
    jobs = [(c, m) for c in built.values() for m in methods]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_job, jobs)
            for name, method, r in results:
                out["corpora"][name]["methods"][method] = asdict(r)
                if progress:
                    progress(f"{name} {method}: {r.status}")
    else:
        for corpus, method in jobs:
            r = run_method(corpus, method)
            out["corpora"][corpus.name]["methods"][method] = asdict(r)
            if progress:
                progress(f"{corpus.name} {method}: {r.status}")
    for name, c in out["corpora"].items():
        if "look_alike_starts" in c:
            _recall_split(c, built[name])
    out["settings"] = {"corpora": list(built), "methods": list(methods), "seeds": seeds,
                       "uci_replicas": replicas, "uci_seed": uci_seed,
                       "uci_start_window_h": list(uci_window_h), "workers": workers, "draws": draws,
                       "match": "overlap and starts within 1800 s",
                       "poll": "60 s +-5 s jitter, 1 % lost; draw 0 default_rng(seed), draw d default_rng([seed, d]), "
                               "each shared by a scenario's households"}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def look_alikes(seeds: Sequence[int]) -> dict[str, Any]:
    """How many of the scenario's true sessions (one copy per seed, whatever the poll
    draws) have a lamp, TV or computer of the same size switching on 30-120 min from the
    charger (:func:`simulators.scenario.look_alike_switch_ons`): in active power those starts
    are not told apart, and taking the look-alike misses the 30-min match.

    Returns:
        ``{"sessions": n, "of": total, "by_appliance": {name: n}, "window_min": [30, 120],
        "tolerance": "10 % + 5 W", "starts": [(seed, household, UTC epoch s), ...]}``, the
        flagged sessions listed.
    """
    from simulators.scenario import look_alike_switch_ons

    n = total = 0
    by: dict[str, int] = {}
    starts: list[tuple[int, str, float]] = []
    for seed in seeds:
        for session, found in look_alike_switch_ons(seed):
            total += 1
            n += bool(found)
            if found:
                starts.append((seed, session.household, session.start))
            for app in sorted({a for _, a, _ in found}):
                by[app] = by.get(app, 0) + 1
    return {"sessions": n, "of": total, "by_appliance": by, "window_min": [30, 120], "tolerance": "10 % + 5 W",
            "starts": starts}


def _recall_split(entry: dict[str, Any], corpus: Corpus) -> None:
    """Add ``recall_look_alike`` and ``recall_other`` to each ok method of a simulated corpus
    ``entry``: its recall on the true sessions :func:`look_alikes` flagged, and on the rest.
    Corpus households are ``s<seed>/hXX`` or ``s<seed>.<draw>/hXX``."""
    flagged = {(seed, h, start) for seed, h, start in entry["look_alike_starts"]["starts"]}

    def key(household: str, start: float) -> tuple[int, str, float]:
        prefix, h = household.split("/", 1)
        return int(prefix[1:].split(".")[0]), h, start

    is_flagged = [key(t.household, t.start) in flagged for t in corpus.truth]
    for r in entry["methods"].values():
        if r["status"] != "ok":
            continue
        found = {(h, start) for h, start in r["true_found"]}
        hit = [(t.household, t.start) in found for t in corpus.truth]
        for label, want in (("recall_look_alike", True), ("recall_other", False)):
            n = sum(1 for f in is_flagged if f == want)
            r[label] = None if n == 0 else sum(1 for f, x in zip(is_flagged, hit) if f == want and x) / n


def write_json(result: dict[str, Any], path: Path) -> None:
    """Write :func:`evaluate`'s result as indented JSON (UTF-8)."""
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def results_table(result: dict[str, Any]):
    """A :class:`rich.table.Table` of :func:`evaluate`'s result, one row per corpus and method."""
    from rich.table import Table

    table = Table(title="flylead evaluate: session match = overlap and start within 30 min; "
                        "FA = unmatched detections per 100 household-weeks")
    for col in ("corpus", "method", "true", "found", "P", "R", "F1", "day P", "day R", "day acc",
                "FA/100hw", "s"):
        table.add_column(col, justify="left" if col in ("corpus", "method") else "right")

    def f(x: float | None, nd: int = 2) -> str:
        return "-" if x is None else f"{x:.{nd}f}"

    for name, c in result["corpora"].items():
        label = name
        for method, r in c["methods"].items():
            if r["status"] != "ok":
                table.add_row(label, method, str(c["true_sessions"]), r["status"], "", "", "", "", "", "", "",
                              "", style="dim")
                continue
            neg = c["true_sessions"] == 0  # precision/recall mean nothing without a true session
            d = r["day"]
            table.add_row(
                label, method, str(c["true_sessions"]), str(r["detections"]),
                "-" if neg else f(r["precision"]), "-" if neg else f(r["recall"]),
                "-" if neg else f(r["f1"]), "-" if neg else f(d["precision"]),
                "-" if neg else f(d["recall"]), f(d["accuracy"]),
                f(r["false_alarms_per_100_household_weeks"], 1), f(r["seconds"], 1))
            label = ""
    return table
