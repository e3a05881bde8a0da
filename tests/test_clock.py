import asyncio
import time
from datetime import UTC, datetime

import pytest

from flylead.clock import SimClock, WallClock, iso, parse_iso

START = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)


def test_simclock_runs_speed_times_faster():
    clock = SimClock(START, speed=3600.0)
    t_real = time.monotonic()
    time.sleep(0.05)
    elapsed_sim = clock.now() - START.timestamp()
    elapsed_real = time.monotonic() - t_real
    # one real second is one simulated hour
    assert elapsed_sim == pytest.approx(elapsed_real * 3600.0, rel=0.05)


def test_simclock_sleep_until_scales_to_real_time():
    clock = SimClock(START.timestamp(), speed=36_000.0)
    target = clock.now() + 1800.0  # half a simulated hour = 0.05 real s

    async def go():
        t0 = time.monotonic()
        await clock.sleep_until(target)
        return time.monotonic() - t0

    real = asyncio.run(go())
    assert clock.now() >= target
    assert 0.04 <= real < 0.5


def test_simclock_restart_and_bad_arguments():
    clock = SimClock(1_800_000_000.0, speed=1e6)
    time.sleep(0.01)
    assert clock.now() > 1_800_000_000.0 + 1000
    clock.restart()
    assert clock.now() - 1_800_000_000.0 < 1000
    with pytest.raises(ValueError, match="speed"):
        SimClock(START, speed=0)
    with pytest.raises(ValueError, match="timezone-aware"):
        SimClock(datetime(2026, 1, 1), speed=1)


def test_wallclock_is_wall_time():
    assert abs(WallClock().now() - time.time()) < 0.1


def test_iso_round_trip():
    assert iso(1_795_824_000.0) == "2026-11-28T00:00:00Z"
    assert parse_iso("2026-11-28T00:00:00Z") == 1_795_824_000.0
    assert parse_iso("2026-11-28T08:00:00+08:00") == 1_795_824_000.0
    assert parse_iso("2026-11-28T00:00:00") == 1_795_824_000.0  # no offset: UTC
