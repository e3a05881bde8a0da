"""The agent's view of a load trace: polls with jitter and losses (the evaluation's poll model).

The detector is measured on what the gateway sees, not on the simulator's grid: a poll every
``period`` seconds, each early or late by up to ``jitter`` seconds (scheduling, bus
latency), a share ``drop`` of them lost (timeouts).  One :class:`numpy.random.Generator`
drives everything; the evaluation shares one generator, ``default_rng(seed)``, across the
households of a scenario in their order, so the same seed gives the same polls.
"""

from __future__ import annotations

import numpy as np

from simulators.trace import LoadTrace

__all__ = ["poll"]


def poll(trace: LoadTrace, rng: np.random.Generator, period: float = 60.0, jitter: float = 5.0,
         drop: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Poll ``trace`` every ``period`` s with uniform jitter and independent losses.

    Poll ``k`` is due at ``trace.start + k * period`` (``k = 0 .. (end - start) // period -
    1``) and happens at that time plus a uniform draw in ``[-jitter, jitter)``; polls that
    fall outside ``[trace.start, trace.end)`` are not taken, then each remaining one is lost
    with probability ``drop``.  A poll reads the trace sample covering its time (the
    meter's instantaneous power; no averaging).

    The generator is consumed in this order: ``n`` jitter draws, then one loss draw per
    poll inside the trace, so results are reproducible for a given generator state.

    Args:
        trace: the household's load (any ``step_s``).
        rng: source of jitter and losses; advanced by the call.
        period: nominal poll interval (s), > 0 (the agent's default: 60 s).
        jitter: largest deviation from the nominal time (s), >= 0.
        drop: probability that a poll is lost, 0..1.

    Returns:
        ``(t, p_w)``: shapes (m,), float64; UTC epoch s of the polls (increasing when
        ``2 * jitter < period``) and the power read, W.  ``m`` is about ``n * (1 - drop)``.
    """
    n = int((trace.end - trace.start) // period)
    t = trace.start + np.arange(n) * period + rng.uniform(-jitter, jitter, n)
    t = t[(t >= trace.start) & (t < trace.end)]
    t = t[rng.random(t.size) >= drop]
    return t, trace.power_w[((t - trace.start) // trace.step_s).astype(int)]
