"""Planned Modbus reads against one request per value, over TCP and over a paced serial line.

For an Eastron SDM120 and the fire detector (reference map), one poll cycle reads every
value of the profile:

* ``per-value``: each register its own request, as several peers do (the baseline);
* ``planned, no gap fill``: :meth:`Profile.plan` with ``max_gap=0`` (adjacent registers
  merged only);
* ``planned``: the profile's plan (SDM120: gaps up to 38 registers read through, FC-033).

Transports: Modbus TCP to the pymodbus simulator on loopback, and Modbus RTU on a pty at
9600 baud with 11 bits per byte (8N2; a pty refuses parity), the simulator pacing every
byte at 11/9600 s = 1.146 ms, taking a request as complete (len + 3.5) byte times after
it arrives, with no device turnaround; the bus keeps 3.5 characters (4.0 ms) between
frames.  Time per cycle is the median over the cycles (real ms), measured in this
process; ratios are to the per-value baseline on the same transport.

Run: ``.venv/bin/python bench/bench_modbus.py`` (about 15 s); prints a table and writes
``bench/results/modbus.json``.
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.modbus import DeviceSpec, ModbusBus, open_bus  # noqa: E402
from drivers.profile import ReadRequest, load_profile  # noqa: E402
from flylead.clock import SimClock  # noqa: E402
from simulators.meter import MeterServer, constant_values  # noqa: E402
from simulators.rtu_pty import RtuSim  # noqa: E402

BAUD = 9600
BITS_PER_BYTE = 11  # Modbus RTU character: start, 8 data, parity or second stop, stop
BYTE_S = BITS_PER_BYTE / BAUD
CYCLES = {"tcp": 60, "pty 9600": 6}
RESULTS = Path(__file__).resolve().parent / "results" / "modbus.json"

DEVICES = {
    "sdm120": {
        "voltage": 230.0, "current": 1.5, "active_power": 300.0, "apparent_power": 345.0,
        "reactive_power": 170.0, "power_factor": 0.87, "frequency": 50.0,
        "energy_import": 12.5, "energy_export": 0.25, "energy_total": 12.75,
    },
    "fire_detector": {
        "residual_current": 35, "cable_temperature.1": 41.5, "cable_temperature.2": 38.0,
        "cable_temperature.3": 36.5, "cable_temperature.4": 35.0,
        "residual_current_setting": 300, "temperature_setting": 85,
    },
}


def per_value_requests(profile_name: str) -> list[ReadRequest]:
    return [ReadRequest(r.function_code, r.address, r.width) for r in load_profile(profile_name).registers]


def line_bytes(requests: list[ReadRequest]) -> int:
    """RTU bytes on the line per cycle: 8 per request, 5 + 2 x count per reply."""
    return sum(8 + 5 + 2 * r.count for r in requests)


async def cycle(bus: ModbusBus, device: DeviceSpec, requests: list[ReadRequest] | None) -> None:
    if requests is None:
        await bus.read(device)
        return
    profile = load_profile(device.profile)
    blocks = {}
    for r in requests:
        blocks[(r.function_code, r.address)] = await bus.read_registers(device, r.function_code, r.address, r.count)
    profile.decode(blocks, device=device.name)


async def measure(bus: ModbusBus, profile_name: str, mode: str, cycles: int) -> dict[str, float]:
    profile = load_profile(profile_name)
    if mode == "per-value":
        requests, explicit = per_value_requests(profile_name), per_value_requests(profile_name)
        device = DeviceSpec(f"{profile_name}-{mode}", profile_name, 1, timeout_s=2.0)
    else:
        gap = 0 if mode == "planned, no gap fill" else None
        requests, explicit = profile.plan(max_gap=gap), None
        device = DeviceSpec(f"{profile_name}-{mode}", profile_name, 1, timeout_s=2.0, max_gap=gap)
    await cycle(bus, device, explicit)  # warm-up: connect, plan
    before = bus.health()[device.name]["requests"]
    times = []
    for _ in range(cycles):
        t0 = time.perf_counter()
        await cycle(bus, device, explicit)
        times.append(time.perf_counter() - t0)
    sent = bus.health()[device.name]["requests"] - before
    return {
        "transactions_per_cycle": sent / cycles,
        "line_bytes_per_cycle": line_bytes(requests),
        "ms_per_cycle": 1000 * statistics.median(times),
        "cycles": cycles,
    }


MODES = ("per-value", "planned, no gap fill", "planned")


async def run_tcp(profile_name: str) -> dict[str, dict[str, float]]:
    clock = SimClock(1_700_000_000.0, speed=1.0)
    server = MeterServer({1: constant_values(DEVICES[profile_name])}, profile=profile_name, clock=clock)
    await server.start()
    try:
        async with open_bus("tcp", f"127.0.0.1:{server.port}", clock=clock) as bus:
            return {mode: await measure(bus, profile_name, mode, CYCLES["tcp"]) for mode in MODES}
    finally:
        await server.stop()


async def run_pty(profile_name: str) -> dict[str, dict[str, float]]:
    clock = SimClock(1_700_000_000.0, speed=1.0)
    sim = RtuSim({1: constant_values(DEVICES[profile_name])}, profile=profile_name, clock=clock,
                 byte_time_s=BYTE_S)
    with sim:
        bus = open_bus("serial", sim.path, clock=clock, baudrate=BAUD, parity="N", stopbits=2)
        async with bus:
            return {mode: await measure(bus, profile_name, mode, CYCLES["pty 9600"]) for mode in MODES}


def main() -> None:
    rows = []
    for profile_name in DEVICES:
        for transport, runner in (("tcp", run_tcp), ("pty 9600", run_pty)):
            measured = asyncio.run(runner(profile_name))
            base = measured["per-value"]
            for mode in MODES:
                m = measured[mode]
                rows.append({
                    "device": profile_name,
                    "transport": transport,
                    "mode": mode,
                    **m,
                    "transactions_ratio": m["transactions_per_cycle"] / base["transactions_per_cycle"],
                    "time_ratio": m["ms_per_cycle"] / base["ms_per_cycle"],
                })
    header = f"{'device':<14} {'transport':<9} {'mode':<21} {'req/cycle':>9} {'bytes':>6} {'ms/cycle':>9} {'req ratio':>9} {'time ratio':>10}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['device']:<14} {r['transport']:<9} {r['mode']:<21} {r['transactions_per_cycle']:>9.0f} "
            f"{r['line_bytes_per_cycle']:>6} {r['ms_per_cycle']:>9.2f} {r['transactions_ratio']:>9.2f} "
            f"{r['time_ratio']:>10.2f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "pymodbus": metadata.version("pymodbus"),
        "serial_line": {"baud": BAUD, "bits_per_byte": BITS_PER_BYTE, "byte_time_ms": 1000 * BYTE_S,
                        "device_turnaround_ms": 0.0},
        "note": "ms_per_cycle is the median over `cycles`; ratios are to per-value on the same transport",
        "results": rows,
    }, indent=2) + "\n")
    print(f"\nwritten to {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    main()
