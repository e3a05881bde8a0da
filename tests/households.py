"""Simulated households shared by the detector tests."""

from __future__ import annotations

from simulators.loads import household_trace
from simulators.scenario import DEFAULT_START


def quiet_home(profile: str, seed: int):
    """36 h of standby and fridge only, one ``profile`` charging session 10 h in: the
    (trace, truth) of :func:`simulators.loads.household_trace`."""
    return household_trace("q1", DEFAULT_START, 36, seed, appliances={"standby", "fridge"},
                           sessions=[(DEFAULT_START + 10 * 3600.0, profile)])
