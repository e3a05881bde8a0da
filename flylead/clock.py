"""One clock for simulators, the agent's scheduler and the detectors.

Every timestamp in flylead is UTC, as float seconds since the Unix epoch.  Production
uses :class:`WallClock`.  The demo and the tests use :class:`SimClock`, which runs
``speed`` times faster than real time from a chosen start, so that a day of household
load passes in about a minute (``speed=1440``) and multi-hour charging sessions can be
shown and tested.  Simulated meters answer with the load at ``clock.now()`` and the agent
stamps readings with the same clock, so both sides always agree on time.

Only sleeping is scaled: I/O timeouts (Modbus, MQTT) stay in real seconds.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """What every time-aware component needs."""

    speed: float

    def now(self) -> float:
        """Current time, UTC seconds since the epoch."""

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of this clock's time (s)."""

    async def sleep_until(self, t: float) -> None:
        """Sleep until this clock reads at least ``t`` (UTC epoch s)."""


class WallClock:
    """Real time (``speed`` 1)."""

    speed = 1.0

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def sleep_until(self, t: float) -> None:
        await asyncio.sleep(max(0.0, t - self.now()))


class SimClock:
    """Accelerated simulated time.

    ``now() = start + (monotonic() - t0) * speed``, where ``t0`` is the monotonic time of
    construction (or of :meth:`restart`).  Monotonic, so it never jumps with the host's
    wall clock.

    Args:
        start: simulated time at construction, UTC epoch s (or an aware ``datetime``).
        speed: simulated seconds per real second, > 0 (1440 = one day per minute).

    Raises:
        ValueError: ``speed`` not positive or ``start`` a naive datetime.
    """

    def __init__(self, start: float | datetime, speed: float = 1440.0) -> None:
        if not speed > 0:
            raise ValueError(f"SimClock speed must be > 0, got {speed!r}")
        if isinstance(start, datetime):
            if start.tzinfo is None:
                raise ValueError("SimClock start must be timezone-aware (UTC)")
            start = start.timestamp()
        self.speed = float(speed)
        self.start = float(start)
        self._t0 = time.monotonic()

    def restart(self, *, at: float | None = None) -> None:
        """Set simulated time back to ``start`` now (used once all components are up), or
        at ``time.monotonic()`` reading ``at`` (another process following this clock:
        CLOCK_MONOTONIC is one clock for the whole machine)."""
        self._t0 = time.monotonic() if at is None else float(at)

    @property
    def anchor(self) -> float:
        """The ``time.monotonic()`` reading at which simulated time was ``start``."""
        return self._t0

    def now(self) -> float:
        return self.start + (time.monotonic() - self._t0) * self.speed

    def real_seconds(self, sim_seconds: float) -> float:
        """Real seconds that ``sim_seconds`` of simulated time take."""
        return sim_seconds / self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    async def sleep_until(self, t: float) -> None:
        await asyncio.sleep(max(0.0, t - self.now()) / self.speed)


def iso(t: float) -> str:
    """UTC epoch seconds to ISO 8601 with a ``Z`` suffix, second resolution."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> float:
    """ISO 8601 to UTC epoch seconds; a missing offset means UTC.

    Raises:
        ValueError: ``text`` is not ISO 8601.
    """
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
