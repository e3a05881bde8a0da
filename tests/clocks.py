"""Test clocks shared by the agent and hazard tests."""

from __future__ import annotations

import asyncio


class StepClock:
    """A clock the test sets (UTC epoch s): the simulated devices answer and the driver
    stamps at exactly ``t``; sleeping only yields to the event loop."""

    speed = 1.0

    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)

    async def sleep_until(self, t: float) -> None:
        await asyncio.sleep(0)
