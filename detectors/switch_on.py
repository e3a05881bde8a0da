"""Which edge switched the charger on: candidates before a taper scored against the charger
the taper implies.  numpy only, no I/O.

A charger's switch-on step is the one thing in a busy evening tied to its taper hours
later: its size is the charger's power then (the level at the top of the taper, less the
plateau's rise of a few per cent), and the session it opens must hold a plausible energy.
Lamps, TVs and computers of similar size switch within minutes of it; the candidates are
ranked by how close they come to the expected size, with a penalty for an implausible
session energy (:func:`rank_switch_ons`), and the caller takes the best one the load
supports.
"""

from __future__ import annotations

import bisect
from operator import itemgetter
from typing import NamedTuple

from detectors.steps import Edge

_K0 = itemgetter(0)  # an edge's first bin, the key edges are sorted by


class Expectation(NamedTuple):
    """The switch-on step a taper implies under one charger profile.

    Attributes:
        profile: ``"lithium"`` or ``"lead_acid"``.
        step_w: expected step (W).
        sigma_w: its uncertainty (W, one standard deviation).
        level_w: the charger's power at the top of the taper under this profile (W).
    """

    profile: str
    step_w: float
    sigma_w: float
    level_w: float


class Candidate(NamedTuple):
    """A possible switch-on.

    Attributes:
        k: first bin of the step.
        size_w: the step (W): one edge, or two of the same sign within a few bins (a
            switch straddling a dropped poll, or two switchings).
        charger_w: the charger's share of it (W): the whole step, or the expected step
            when the edge is much larger (the charger and another appliance switching on
            in the same minute).
        expectation: the profile it was scored under.
        z: standardised size mismatch.
        energy_kwh: energy of the session it opens (kWh).
        score: lower is better.
    """

    k: int
    size_w: float
    charger_w: float
    expectation: Expectation
    z: float
    energy_kwh: float
    score: float


def expectations(level_w: float, taper_w: float, *, rise: dict[str, float], stage2_w: float,
                 max_residual_w: float, lithium_max_residual_w: float, lithium_taper_share: float,
                 rel_sigma: float, abs_sigma_w: float) -> list[Expectation]:
    """The switch-on steps a taper of amplitude ``taper_w`` implies, per profile.

    When the load at the taper's top above the household's base after it (``level_w``)
    exceeds the taper by little (at most ``max_residual_w``: the household was quiet then),
    it is the charger's power at the top: a lithium taper takes nearly all of it (residual
    under ``lithium_max_residual_w``), a lead-acid one leaves its stage-2 level (residual
    over half that; both when in between).  Otherwise other loads were on and only the taper
    speaks: lithium's fitted amplitude is ``lithium_taper_share`` of its power (the
    exponential stops at ~5 % of it), lead-acid's is its power less a typical ``stage2_w``;
    both are kept, with doubled uncertainty in the part that is not measured.  The step
    is the power at the top less the plateau's ``rise``.  A taper falling further than the
    load stood above the base (beyond 3 sigma) is no charger's: no expectation.

    Args:
        level_w: load at the taper's top above the base after it (W).
        taper_w: amplitude of the fitted exponential (W).
        rise: plateau rise per profile (share: lead-acid 0.08, lithium 0.04).
        rel_sigma, abs_sigma_w: uncertainty of a measured level: share of it plus W.

    Returns:
        Zero, one or two :class:`Expectation`.
    """
    out = []
    residual = level_w - taper_w
    sigma = rel_sigma * level_w + abs_sigma_w
    if residual < -3 * sigma:
        return out
    if residual <= max_residual_w:
        if residual < lithium_max_residual_w:
            out.append(Expectation("lithium", level_w / (1 + rise["lithium"]), sigma, level_w))
        if residual > 0.5 * lithium_max_residual_w:
            out.append(Expectation("lead_acid", level_w / (1 + rise["lead_acid"]), sigma, level_w))
        return out
    li_level = taper_w / lithium_taper_share
    out.append(Expectation("lithium", li_level / (1 + rise["lithium"]),
                           2 * rel_sigma * li_level + abs_sigma_w, li_level))
    la_level = taper_w + stage2_w
    out.append(Expectation("lead_acid", la_level / (1 + rise["lead_acid"]),
                           rel_sigma * la_level + 2 * abs_sigma_w, la_level))
    return out


def _span(edges: list[Edge], lo: int, hi: int) -> range:
    """Indices of the edges (in time order, ``k0`` increasing) that start in bins [lo, hi]."""
    return range(bisect.bisect_left(edges, lo, key=_K0), bisect.bisect_right(edges, hi, key=_K0))


def candidates(edges: list[Edge], lo: int, hi: int, merge_bins: int = 3) -> list[tuple[int, float]]:
    """Up-steps starting in bins [lo, hi]: each up-edge, and each up-edge with the next one
    when that starts within ``merge_bins`` of its end.  ``edges`` in time order (as
    :func:`detectors.steps.find_edges` gives them).  List of (first bin, size W)."""
    out = []
    for n in _span(edges, lo, hi):
        k0, k1, v = edges[n]
        if v <= 0:
            continue
        out.append((k0, v))
        if n + 1 < len(edges):
            q0, _, w = edges[n + 1]
            if w > 0 and q0 - k1 <= merge_bins:
                out.append((k0, v + w))
    return out


def energy_kwh(charger_w: float, exp: Expectation, plateau_bins: int, grid_s: float,
               taper_wh: float, tail_wh: dict[str, float]) -> float:
    """Energy of a session (kWh): a plateau rising from ``charger_w`` to the level, the
    taper and the profile's tail (stage 2 and float)."""
    plateau_wh = 0.5 * (charger_w + exp.level_w) * plateau_bins * grid_s / 3600.0
    return (plateau_wh + taper_wh + tail_wh[exp.profile]) / 1000.0


def score(z: float, energy: float, energy_soft_kwh: float, energy_width_kwh: float) -> float:
    """Lower is better: the squared size mismatch, plus a penalty for energy above
    ``energy_soft_kwh`` (quadratic in ``energy_width_kwh`` units)."""
    over = max(0.0, energy - energy_soft_kwh) / energy_width_kwh
    return z * z + over * over


def undone_later(edges: list[Edge], k: int, size_w: float, until: int, rel: float, abs_w: float) -> bool:
    """Whether a down-edge after bin ``k`` and before ``until`` takes back ``size_w`` (W)
    within ``rel`` of it plus ``abs_w``: an appliance switching off again.  ``edges`` in
    time order."""
    tol = rel * size_w + abs_w
    return any(abs(size_w + edges[n].size) <= tol for n in _span(edges, k + 1, until - 1) if edges[n].size < 0)


def short_pulse(edges: list[Edge], k: int, size_w: float, height_w: float, lo_bins: int, hi_bins: int,
                band: float, ratio_lo: float) -> bool:
    """Whether the up-step of ``size_w`` (W) at bin ``k`` looks like a run of the household's
    recurring short pulse (a fridge compressor): within ``band`` (share) of its height
    ``height_w`` (W) and a down-edge starting ``lo_bins``..``hi_bins`` later that takes back
    ``ratio_lo``..``2 - ratio_lo`` of it.  ``edges`` in time order."""
    if not abs(size_w / height_w - 1.0) <= band:
        return False
    for n in _span(edges, k + lo_bins, k + hi_bins):
        r = -edges[n].size / size_w
        if ratio_lo <= r <= 2.0 - ratio_lo:
            return True
    return False


def rank_switch_ons(edges: list[Edge], lo: int, hi: int, i0: int, exps: list[Expectation], *,
                    grid_s: float, taper_wh: float, tail_wh: dict[str, float], max_z: float,
                    merged_factor: float, merged_max_w: float, pairing_bins: int,
                    pair_match: tuple[float, float], energy_soft_kwh: float,
                    energy_width_kwh: float, used: set[int],
                    plateau_cost_per_h: float = 0.0, pulse: tuple[float, int, int, float, float] | None = None,
                    pulse_cost: float = 0.0) -> list[Candidate]:
    """Switch-ons in bins [lo, hi] before the taper at ``i0``, best first (``edges`` in time
    order, as :func:`detectors.steps.find_edges` gives them).

    Each candidate step is tried under each expectation (the better score kept); a step
    much larger than expected (over ``merged_factor`` times, at most ``merged_max_w``) is
    taken as the charger plus another appliance switching on in the same minute, if a later
    down-edge (within ``pairing_bins``, matching within ``pair_match``: share of it plus W)
    takes that appliance back; the charger's share is
    then the expected step, at a cost of ``max_z / 2``.  Candidates whose mismatch exceeds
    ``max_z`` or whose bin is in ``used`` are dropped.  Each candidate's score (lower is
    better) is :func:`score` plus ``plateau_cost_per_h`` per hour from it to the taper's
    onset ``i0`` (a prior for the later of two equally fitting switch-ons), plus
    ``pulse_cost`` when the step looks like a run of the household's recurring short pulse
    (:func:`short_pulse` with ``pulse``: height W, shortest and longest run in bins, band,
    lowest off/on ratio; None when the household has none).
    """
    best: dict[tuple[int, float], Candidate] = {}
    for k, size in candidates(edges, lo, hi):
        if k in used:
            continue
        # the step's own cost, the same under every expectation
        own = pulse_cost if pulse_cost and pulse is not None and short_pulse(edges, k, size, *pulse) else 0.0
        for exp in exps:
            z = (size - exp.step_w) / exp.sigma_w
            charger = size
            if size > merged_factor * exp.step_w:
                rest = size - exp.step_w
                if size > merged_max_w or not undone_later(edges, k, rest, k + pairing_bins, *pair_match):
                    continue
                charger, z = exp.step_w, 0.5 * max_z
            if abs(z) > max_z:
                continue
            e = energy_kwh(charger, exp, i0 - k, grid_s, taper_wh, tail_wh)
            cost = score(z, e, energy_soft_kwh, energy_width_kwh) + plateau_cost_per_h * (i0 - k) * grid_s / 3600.0
            cost += own
            cand = Candidate(k, size, charger, exp, z, e, cost)
            if (k, size) not in best or cand.score < best[(k, size)].score:
                best[(k, size)] = cand
    return sorted(best.values(), key=lambda c: c.score)
