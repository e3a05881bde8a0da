"""ModbusTcpBus against real pymodbus servers (MeterServer) over TCP on 127.0.0.1, no mocks.

Expected values are the float32 of the trace's values (the wire type of both meter
profiles), domain-facts.md §5; DDSU666 power travels in kW (FC-046); the pile and the
fire detector's values are those of tests/test_rtu.py through their reference maps.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time

import numpy as np
import pytest

from drivers import (
    DecodeError,
    DeviceException,
    DeviceSpec,
    DeviceTimeout,
    DriverError,
    ModbusTcpBus,
    open_bus,
    scan_bus,
)
from flylead.clock import SimClock
from simulators.meter import MeterServer, constant_values
from simulators.trace import LoadTrace
from tests.test_rtu import DEVICES, FIRE_EXPECTED, PILE_EXPECTED, SDM120_EXPECTED

pytestmark = pytest.mark.timeout(30)

START = 1_700_000_000.0  # 2023-11-14T22:13:20Z
SPEED = 3600.0  # one simulated hour per real second
P_W, V_V, PF = 1234.5, 230.0, 0.9


def f32(value: float) -> float:
    return struct.unpack(">f", struct.pack(">f", value))[0]


def constant_trace(household: str = "h01", power: float = P_W) -> LoadTrace:
    n = 2 * 1440  # two days of minutes
    return LoadTrace(
        household,
        START,
        60.0,
        np.full(n, power),
        voltage_v=np.full(n, V_V),
        power_factor=np.full(n, PF),
    )


def run(coro):
    return asyncio.run(coro)


async def serve(meters, profile="sdm120"):
    clock = SimClock(START, speed=SPEED)
    server = MeterServer(meters, profile=profile, clock=clock)
    await server.start()
    bus = ModbusTcpBus("127.0.0.1", server.port, clock=clock, name="test-bus")
    return clock, server, bus


def assert_energy_bracketed(reading, trace, clock):
    """The meter computed energy at some clock time in [t, t + latency]: bracket it."""
    lo = trace.at(reading.t)["energy_import"]
    hi = trace.at(reading.t + reading.latency_s * clock.speed)["energy_import"]
    eps = 1e-6 * max(1.0, hi)  # float32 relative precision, generously
    assert lo - eps <= reading.values["energy_import"] <= hi + eps


# -- values ---------------------------------------------------------------------------------


def test_read_sdm120_exact_values_and_energy_integrates():
    trace = constant_trace()

    async def main():
        clock, server, bus = await serve({1: trace})
        try:
            device = DeviceSpec("meter-h01", "sdm120", device_id=1)
            first = await bus.read(device)
            await asyncio.sleep(0.25)
            second = await bus.read(device)
            return clock, server, first, second
        finally:
            await bus.close()
            await server.stop()

    clock, server, first, second = run(main())
    s = P_W / PF
    q = (s * s - P_W * P_W) ** 0.5
    v = first.values
    assert v["voltage"] == 230.0
    assert v["active_power"] == 1234.5
    assert v["power_factor"] == f32(0.9)
    assert v["frequency"] == 50.0
    assert v["current"] == f32(s / V_V)
    assert v["apparent_power"] == f32(s)
    assert v["reactive_power"] == f32(q)
    assert v["energy_export"] == 0.0
    assert set(v) == {
        "voltage", "current", "active_power", "apparent_power", "reactive_power",
        "power_factor", "frequency", "energy_import", "energy_export", "energy_total",
    }
    assert first.device == "meter-h01"
    assert START <= first.t < second.t
    assert 0 < first.latency_s < 0.25
    # energy: integrated from the trace at the clock's time of each answer
    for reading in (first, second):
        assert_energy_bracketed(reading, trace, clock)
    expected = P_W * (second.t - first.t) / 3.6e6
    slack = P_W * (first.latency_s + second.latency_s) * SPEED / 3.6e6 + 1e-6
    gained = second.values["energy_import"] - first.values["energy_import"]
    assert gained == pytest.approx(expected, abs=slack)
    assert gained > 0.07  # >= 0.25 real s at 3600x: >= 0.0857 kWh at 1234.5 W
    assert server.requests == {1: 4}  # two planned reads per SDM120 poll


def test_read_ddsu666_kw_to_w():
    trace = constant_trace()

    async def main():
        clock, server, bus = await serve({7: trace}, profile="ddsu666")
        try:
            return clock, server, await bus.read(DeviceSpec("meter-h07", "ddsu666", device_id=7))
        finally:
            await bus.close()
            await server.stop()

    clock, server, reading = run(main())
    s = P_W / PF
    q = (s * s - P_W * P_W) ** 0.5
    v = reading.values
    assert v["active_power"] == f32(P_W / 1000.0) * 1000.0  # kW on the wire
    assert v["active_power"] == pytest.approx(1234.5, abs=1e-3)
    assert v["reactive_power"] == f32(q / 1000.0) * 1000.0
    assert v["voltage"] == 230.0
    assert v["current"] == f32(s / V_V)
    assert v["power_factor"] == f32(0.9)
    assert v["frequency"] == 50.0
    assert v["energy_export"] == 0.0
    assert "apparent_power" not in v and "energy_total" not in v  # not in the DDSU666 map
    assert_energy_bracketed(reading, trace, clock)
    assert server.requests == {7: 5}


# -- faults ---------------------------------------------------------------------------------


def test_silent_device_times_out_without_hidden_retries():
    async def main():
        clock, server, bus = await serve({3: constant_trace()})
        server.set_fault(3, "silent")
        try:
            await bus.connect()
            t0 = time.monotonic()
            with pytest.raises(DeviceTimeout) as info:
                await bus.read(DeviceSpec("meter-h03", "sdm120", device_id=3, timeout_s=0.3))
            return time.monotonic() - t0, info.value, dict(server.requests), bus.port
        finally:
            await bus.close()
            await server.stop()

    elapsed, error, requests, port = run(main())
    assert 0.3 <= elapsed < 0.3 + 2.0  # one timeout (one request, below); slack for a loaded machine
    assert str(error).startswith(
        f"meter-h03 (device id 3 at 127.0.0.1:{port}): no answer in 0.3 s"
    )
    assert "0x0000" in str(error)
    assert requests == {3: 1}  # one attempt: pymodbus did not retry behind our back


def test_retries_cost_one_timeout_each():
    async def main():
        clock, server, bus = await serve({3: constant_trace()})
        server.set_fault(3, "silent")
        try:
            t0 = time.monotonic()
            with pytest.raises(DeviceTimeout):
                await bus.read(
                    DeviceSpec("meter-h03", "sdm120", device_id=3, timeout_s=0.2, retries=2)
                )
            return time.monotonic() - t0, dict(server.requests)
        finally:
            await bus.close()
            await server.stop()

    elapsed, requests = run(main())
    assert requests == {3: 3}
    assert 0.6 <= elapsed < 0.6 + 2.0  # three timeouts, three requests; slack for a loaded machine


def test_exception_response_is_device_exception_code_4():
    async def main():
        clock, server, bus = await serve({2: constant_trace()})
        server.set_fault(2, "exception")
        try:
            with pytest.raises(DeviceException) as info:
                await bus.read(DeviceSpec("meter-h02", "sdm120", device_id=2))
            return info.value
        finally:
            await bus.close()
            await server.stop()

    error = run(main())
    assert error.code == 4
    assert "meter-h02 (device id 2 at 127.0.0.1:" in str(error)
    assert "exception 4 (server device failure)" in str(error)


def test_unknown_device_id_is_gateway_exception_11():
    async def main():
        clock, server, bus = await serve({1: constant_trace()})
        try:
            with pytest.raises(DeviceException) as info:
                await bus.read(DeviceSpec("meter-h09", "sdm120", device_id=9))
            return info.value
        finally:
            await bus.close()
            await server.stop()

    assert run(main()).code == 11


def test_wrong_profile_for_device_is_an_error_not_values():
    # a DDSU666 profile aimed at an SDM120: nothing at 0x2000, illegal data address
    async def main():
        clock, server, bus = await serve({1: constant_trace()})
        try:
            with pytest.raises(DeviceException) as info:
                await bus.read(DeviceSpec("meter-h01", "ddsu666", device_id=1))
            return info.value
        finally:
            await bus.close()
            await server.stop()

    assert run(main()).code == 2


def test_silent_device_does_not_stall_the_bus_and_recovers():
    traces = {i: constant_trace(f"h0{i}", power=100.0 * i) for i in (1, 2, 3)}
    timeout = 0.5

    async def main():
        clock, server, bus = await serve(traces)
        devices = [
            DeviceSpec(f"meter-h0{i}", "sdm120", device_id=i, timeout_s=timeout) for i in (1, 2, 3)
        ]
        try:
            await bus.connect()
            # normal cycle time, for the bound
            t0 = time.monotonic()
            for device in devices:
                await bus.read(device)
            normal = time.monotonic() - t0

            server.set_fault(2, "silent")
            results = {}
            t0 = time.monotonic()
            for device in devices:
                try:
                    results[device.device_id] = await bus.read(device)
                except DeviceTimeout as exc:
                    results[device.device_id] = exc
            faulty = time.monotonic() - t0

            server.set_fault(2, None)
            recovered = await bus.read(devices[1])
            return normal, faulty, results, recovered
        finally:
            await bus.close()
            await server.stop()

    normal, faulty, results, recovered = run(main())
    assert results[1].values["active_power"] == 100.0
    assert isinstance(results[2], DeviceTimeout)
    assert "meter-h02 (device id 2" in str(results[2])
    assert results[3].values["active_power"] == 300.0
    assert faulty < timeout + normal + 0.3
    assert recovered.values["active_power"] == 200.0


async def raw_gateway(answer):
    """A hand-written Modbus TCP server (asyncio streams, no pymodbus) for misbehaving
    gateways.  ``answer(n, count)`` gets the request's number across all connections
    (1-based) and register count, and returns (delay in s, registers to send)."""
    served = 0

    async def handle(reader, writer):
        nonlocal served
        try:
            while True:
                tid, _pid, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                fc, _addr, count = struct.unpack(">BHH", await reader.readexactly(length - 1))
                served += 1
                delay, regs = answer(served, count)
                await asyncio.sleep(delay)
                body = struct.pack(f">BB{len(regs)}H", fc, 2 * len(regs), *regs)
                writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_late_reply_is_not_taken_for_the_next_answer():
    """A gateway answers request 1 (value 111) after the client gave up on it, while
    request 2 is outstanding: the answer to request 2 (value 222) must be the one used."""

    def answer(n, count):
        value = 111.0 if n == 1 else 222.0
        delay = 0.4 if n == 1 else 0.0  # beyond the client's 0.2 s timeout
        return delay, list(struct.unpack(">2H", struct.pack(">f", value))) * (count // 2)

    async def main():
        gateway = await raw_gateway(answer)
        port = gateway.sockets[0].getsockname()[1]
        bus = ModbusTcpBus("127.0.0.1", port, clock=SimClock(START, speed=SPEED))
        try:
            with pytest.raises(DeviceTimeout):
                await bus.read(DeviceSpec("meter-h01", "sdm120", timeout_s=0.2))
            return await bus.read(DeviceSpec("meter-h01", "sdm120", timeout_s=1.0))
        finally:
            await bus.close()
            gateway.close()
            await gateway.wait_closed()

    reading = run(main())
    assert reading.values["voltage"] == 222.0
    assert set(reading.values.values()) == {222.0}


def test_short_answer_is_decode_error():
    """A gateway that returns two registers fewer than asked for."""

    async def main():
        gateway = await raw_gateway(lambda n, count: (0.0, [0] * (count - 2)))
        port = gateway.sockets[0].getsockname()[1]
        bus = ModbusTcpBus("127.0.0.1", port, clock=SimClock(START, speed=SPEED))
        try:
            with pytest.raises(DecodeError) as info:
                await bus.read(DeviceSpec("meter-h01", "sdm120", timeout_s=1.0))
            return info.value
        finally:
            await bus.close()
            gateway.close()
            await gateway.wait_closed()

    message = str(run(main()))
    assert "meter-h01 (device id 1 at 127.0.0.1:" in message
    assert "0x0000 count 76 answered 74 registers" in message


# -- connection -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connect_refused_names_host_and_port():
    port = free_port()

    async def main():
        bus = ModbusTcpBus("127.0.0.1", port, clock=SimClock(START, speed=SPEED))
        with pytest.raises(DriverError) as info:
            await bus.connect()
        with pytest.raises(DriverError) as info2:
            await bus.read(DeviceSpec("meter-h01", "sdm120"))
        await bus.close()
        return info.value, info2.value

    error, error2 = run(main())
    assert f"127.0.0.1:{port}" in str(error)
    assert not isinstance(error, DeviceTimeout)
    assert str(error2).startswith(f"meter-h01 (device id 1 at 127.0.0.1:{port})")


def test_reconnects_after_the_server_restarts():
    trace = constant_trace()

    async def main():
        clock, server, bus = await serve({1: trace})
        device = DeviceSpec("meter-h01", "sdm120", timeout_s=0.5)
        try:
            before = await bus.read(device)
            port = server.port
            await server.stop()
            await asyncio.sleep(0.05)
            server = MeterServer({1: trace}, clock=clock, port=port)
            await server.start()
            after = await bus.read(device)
            return before, after
        finally:
            await bus.close()
            await server.stop()

    before, after = run(main())
    assert before.values["active_power"] == after.values["active_power"] == 1234.5


def test_pause_between_requests():
    async def main():
        clock = SimClock(START, speed=SPEED)
        server = MeterServer({1: constant_trace()}, clock=clock)
        await server.start()
        bus = ModbusTcpBus("127.0.0.1", server.port, clock=clock, pause_s=0.1)
        try:
            await bus.connect()
            t0 = time.monotonic()
            reading = await bus.read(DeviceSpec("meter-h01", "sdm120"))
            await bus.read(DeviceSpec("meter-h01", "sdm120"))
            return reading, time.monotonic() - t0
        finally:
            await bus.close()
            await server.stop()

    reading, elapsed = run(main())
    assert reading.latency_s >= 0.1  # two planned reads, 0.1 s apart
    assert elapsed >= 0.4  # after connect, then 3 more gaps


def test_device_spec_validation():
    with pytest.raises(ValueError):
        DeviceSpec("m", "sdm120", device_id=0)
    with pytest.raises(ValueError):
        DeviceSpec("m", "sdm120", device_id=248)
    with pytest.raises(ValueError):
        DeviceSpec("m", "sdm120", timeout_s=0)
    with pytest.raises(ValueError):
        DeviceSpec("m", "sdm120", retries=-1)


def test_meter_server_rejects_bad_faults():
    server = MeterServer({1: constant_trace()}, clock=SimClock(START, speed=SPEED))
    with pytest.raises(ValueError):
        server.set_fault(1, "smoke")
    with pytest.raises(ValueError):
        server.set_fault(2, "silent")


# -- every profile over Modbus TCP, health, scan ---------------------------------------------


async def serve_all(ids=(1, 2, 3, 4)):
    clock = SimClock(START, speed=1.0)
    server = MeterServer(
        {i: constant_values(DEVICES[i][1]) for i in ids},
        profile={i: DEVICES[i][0] for i in ids},
        clock=clock,
        delay_s=0.4,
    )
    await server.start()
    return clock, server, open_bus("tcp", f"127.0.0.1:{server.port}", clock=clock)


def test_every_profile_over_modbus_tcp():
    async def main():
        clock, server, bus = await serve_all()
        try:
            async with bus:
                values = {i: (await bus.read(DeviceSpec(f"dev{i}", DEVICES[i][0], i))).values for i in DEVICES}
                fire_info = await bus.read_info(DeviceSpec("dev4", "fire_detector", 4))
            return values, fire_info, dict(server.requests)
        finally:
            await server.stop()

    values, fire_info, requests = run(main())
    for device_id, (_profile, _values, expected) in DEVICES.items():
        assert values[device_id] == expected, device_id
    assert fire_info == {"model": "FD-R1T4", "serial_number": 12345678}
    assert requests == {1: 2, 2: 5, 3: 2, 4: 3}  # planned reads (+1 identification read)


def test_health_counts_per_device_over_tcp():
    async def main():
        clock, server, bus = await serve_all(ids=(1, 4))
        try:
            async with bus:
                meter, fire = DeviceSpec("meter", "sdm120", 1), DeviceSpec("fire", "fire_detector", 4, 0.2)
                await bus.read(meter)
                await bus.read(fire)
                server.set_fault(4, "exception")
                with pytest.raises(DeviceException):
                    await bus.read(fire)
                server.set_fault(4, "slow")
                with pytest.raises(DeviceTimeout):
                    await bus.read(fire)
                server.set_fault(4, None)
                return bus.health()
        finally:
            await server.stop()

    health = run(main())
    assert set(health) == {"meter", "fire"}
    assert set(health["fire"]) == {
        "requests", "responses", "exceptions", "timeouts", "crc_errors", "frame_errors",
        "discarded_bytes", "latency_mean_s", "latency_max_s", "consecutive_failures",
    }
    meter, fire = health["meter"], health["fire"]
    assert (meter["requests"], meter["responses"], meter["timeouts"]) == (2.0, 2.0, 0.0)
    assert (fire["requests"], fire["responses"], fire["exceptions"], fire["timeouts"]) == (4.0, 2.0, 1.0, 1.0)
    assert fire["consecutive_failures"] == 2.0
    assert 0 < meter["latency_mean_s"] <= meter["latency_max_s"] < 0.2


def test_scan_finds_each_profile_over_tcp():
    async def main():
        clock, server, bus = await serve_all()
        try:
            async with bus:
                return await scan_bus(bus, range(1, 7), timeout_s=0.2)
        finally:
            await server.stop()

    hits = run(main())
    # ids 5 and 6: the gateway answers exception 11 (no such device): absent
    assert [(h.device_id, h.best) for h in hits] == [
        (1, "sdm120"), (2, "ddsu666"), (3, "ebike_pile"), (4, "fire_detector"),
    ]
    sdm = {m.profile: m for m in hits[0].matches}
    assert sdm["sdm120"].values == SDM120_EXPECTED and sdm["sdm120"].checked == 10
    assert not sdm["ddsu666"].plausible and "exception 2 (illegal data address)" in sdm["ddsu666"].reason
    assert {m.profile: m.plausible for m in hits[2].matches}["ebike_pile"]
    assert {m.profile: m.values for m in hits[2].matches}["ebike_pile"] == PILE_EXPECTED
    assert {m.profile: m.values for m in hits[3].matches}["fire_detector"] == FIRE_EXPECTED


def test_scan_rejects_zeros_and_nonsense(tmp_path):
    """FC-031: an SDM answers a probe of a foreign map with zeros; C-06: a swapped word
    order gives nonsense.  Neither is a plausible match."""
    from drivers.modbus import _check_plausible

    assert _check_plausible({"voltage": 0.0, "frequency": 0.0})[1] == "voltage = 0 outside 80..300"
    assert _check_plausible({"voltage": 2.418e-41})[1].startswith("voltage = 2.418e-41 outside")
    assert _check_plausible({"voltage": 230.0, "voltage.3": 0.0, "port_state.3": 2.0}) == (2, "")
    assert _check_plausible({"port_state.3": 7.0})[1] == "port_state.3 = 7 outside 1..4"
    assert _check_plausible({"alarm_x": 1.0}) == (0, "no value to check")


# -- devices that close the connection -------------------------------------------------------

#: What :class:`ClosingServer` serves: float32 ``100 + address`` in every register pair.
CLOSING_EXPECTED = {
    "voltage": 100.0, "current": 106.0, "active_power": 112.0, "apparent_power": 118.0,
    "reactive_power": 124.0, "power_factor": 130.0, "frequency": 170.0,
    "energy_import": 172.0, "energy_export": 174.0, "energy_total": 442.0,
}


class ClosingServer:
    """A raw-socket Modbus TCP device (a thread, no pymodbus) that answers ``answers``
    requests on each connection and then closes it, ``close_delay_s`` later (a request
    arriving meanwhile is never answered).  Registers: float32 ``100 + address`` per pair."""

    def __init__(self, *, answers: int = 1, close_delay_s: float = 0.0) -> None:
        self.answers, self.close_delay_s = answers, close_delay_s
        self.connections = self.answered = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop = True
        self._thread.join(10)
        self._listener.close()

    def __enter__(self) -> ClosingServer:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(5.0)
                try:
                    for _ in range(self.answers):
                        if not self._answer(conn):
                            break
                    time.sleep(self.close_delay_s)
                except OSError:
                    pass

    def _answer(self, conn: socket.socket) -> bool:
        header = self._recv(conn, 7)
        if header is None:
            return False
        tid, _pid, length, unit = struct.unpack(">HHHB", header)
        pdu = self._recv(conn, length - 1)
        if pdu is None:
            return False
        fc, address, count = struct.unpack(">BHH", pdu)
        regs = []
        for a in range(address, address + count, 2):
            regs += struct.unpack(">2H", struct.pack(">f", 100.0 + a))
        body = struct.pack(f">BB{count}H", fc, 2 * count, *regs[:count])
        conn.sendall(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
        self.answered += 1
        return True

    @staticmethod
    def _recv(conn: socket.socket, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data


@pytest.mark.parametrize("close_delay_s", [0.0, 0.05])
def test_device_closing_the_connection_after_each_reply_is_read_every_poll(close_delay_s):
    """The SDM120 plan has two requests; the device closes the connection after each
    reply (at once, or 50 ms later, while the next request is already on its way).  The
    second request goes again on a new connection instead of waiting out the timeout."""

    async def main(server):
        bus = ModbusTcpBus("127.0.0.1", server.port, clock=SimClock(START, speed=SPEED))
        device = DeviceSpec("meter-h01", "sdm120", timeout_s=5.0)
        try:
            return [await bus.read(device) for _ in range(3)], bus.health()["meter-h01"]
        finally:
            await bus.close()

    with ClosingServer(close_delay_s=close_delay_s) as server:
        readings, health = run(main(server))
        answered = server.answered
    assert [r.values for r in readings] == [CLOSING_EXPECTED] * 3
    assert answered == 6  # both requests of each of the three polls
    assert (health["requests"], health["responses"], health["timeouts"]) == (6.0, 6.0, 0.0)


def test_device_closing_without_an_answer_is_reported_as_such_not_as_a_timeout():
    async def main(server):
        bus = ModbusTcpBus("127.0.0.1", server.port, clock=SimClock(START, speed=SPEED))
        try:
            with pytest.raises(DriverError) as info:
                await bus.read(DeviceSpec("meter-h01", "sdm120", timeout_s=5.0))
            return info.value, bus.health()["meter-h01"]
        finally:
            await bus.close()

    with ClosingServer(answers=0) as server:
        error, health = run(main(server))
        connections = server.connections
    assert type(error) is DriverError
    assert str(error) == (
        f"meter-h01 (device id 1 at 127.0.0.1:{server.port}): connection closed by the device "
        "during function 4 read of 0x0000 count 76 (no answer on a new connection either)"
    )
    # the request went once more on a new connection, no further: 2 connections, or 3 when
    # the device closed a fresh connection before the request was even sent (the bus then
    # opens one before sending; seen once in a loaded CI run)
    assert connections in (2, 3)
    assert health["timeouts"] == 0.0


def test_cli_read_of_a_device_closing_after_each_reply():
    from typer.testing import CliRunner

    from flylead.cli import app

    with ClosingServer(close_delay_s=0.05) as server:
        result = CliRunner().invoke(app, ["read", "--profile", "sdm120", "--tcp",
                                          f"127.0.0.1:{server.port}", "--timeout", "5", "--json"])
    assert result.exit_code == 0, result.stderr
    values = json.loads(result.stdout)["values"]
    assert {k: v["value"] for k, v in values.items()} == CLOSING_EXPECTED


@pytest.mark.parametrize("kind", ["tcp", "rtu-tcp"])
def test_unresolvable_host_is_named_as_such_not_refused(kind):
    """RFC 6761: names under .invalid never resolve."""

    async def main():
        bus = open_bus(kind, "no-such-meter.invalid:502", clock=SimClock(START, speed=SPEED))
        try:
            with pytest.raises(DriverError) as info:
                await bus.read(DeviceSpec("meter-h01", "sdm120", timeout_s=0.5))
            return info.value
        finally:
            await bus.close()

    error = run(main())
    assert type(error) is DriverError
    message = str(error)
    assert message.startswith("meter-h01 (device id 1 at ")
    assert "host name 'no-such-meter.invalid'" in message
    assert "does not resolve" in message or "could not be looked up" in message
    assert "refused" not in message
