"""Modbus RTU: golden frames (field-vectors.md section B), malformed frames, the reply
scanner, and RtuBus against simulators over a pty and over TCP, with wire faults.

Expected values: the frames' decodes as field-vectors.md gives them; the simulators'
values below through each profile's wire type (float32 for the meters, scaled integers,
BCD and bit fields for the pile and the fire detector, docs/profiles.md).
"""

from __future__ import annotations

import asyncio
import math
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.framer.rtu import FramerRTU

from drivers import DeviceException, DeviceSpec, DeviceTimeout, DriverError, open_bus
from drivers.modbus import RtuBus
from drivers.profile import decode_words, load_profile
from drivers.reading import DecodeError
from drivers.rtu import (
    ByteCountError,
    CrcError,
    DeviceIdError,
    EchoError,
    FunctionCodeError,
    IncompleteFrame,
    ReplyScanner,
    RtuFrameError,
    RtuRequest,
    RtuResponse,
    TcpLink,
    crc16,
    decode_request,
    decode_response,
    encode_exception,
    encode_request,
    encode_response,
    frame_gap_s,
    request_length,
)
from flylead.clock import SimClock
from simulators.meter import MeterServer, constant_values
from simulators.rtu_pty import GARBAGE, RtuSim

pytestmark = pytest.mark.timeout(60)

START = 1_700_000_000.0


def f32(value: float) -> float:
    return struct.unpack(">f", struct.pack(">f", value))[0]


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# -- the devices the simulators serve, and what a read must give -----------------------------

METER_VALUES = {
    "voltage": 230.0, "current": 1.5, "active_power": 300.0, "apparent_power": 345.0,
    "reactive_power": 170.0, "power_factor": 0.87, "frequency": 50.0,
    "energy_import": 12.5, "energy_export": 0.25, "energy_total": 12.75,
}
SDM120_EXPECTED = {**METER_VALUES, "power_factor": f32(0.87)}
DDSU666_EXPECTED = {  # kW and kvar on the wire (FC-046); no apparent power or total energy
    "voltage": 230.0, "current": 1.5, "active_power": f32(0.3) * 1000.0,
    "reactive_power": f32(0.17) * 1000.0, "power_factor": f32(0.87), "frequency": 50.0,
    "energy_import": 12.5, "energy_export": 0.25,
}

FIRE_VALUES = {
    "residual_current": 35, "cable_temperature.1": 41.5, "cable_temperature.2": -3.2,
    "cable_temperature.3": math.nan, "cable_temperature.4": math.nan,  # not fitted
    "alarm_cable_temperature.1": 1, "fault_temperature_sensor.3": 1,
    "residual_current_setting": 300, "temperature_setting": 85,
    "model": "FD-R1T4", "serial_number": 12345678,
}
FIRE_EXPECTED = {
    "residual_current": 35.0, "cable_temperature.1": 41.5, "cable_temperature.2": -3.2,
    "alarm_residual_current": 0.0, "alarm_cable_temperature.1": 1.0,
    "alarm_cable_temperature.2": 0.0, "alarm_cable_temperature.3": 0.0,
    "alarm_cable_temperature.4": 0.0, "fault_residual_sensor": 0.0,
    "fault_temperature_sensor.1": 0.0, "fault_temperature_sensor.2": 0.0,
    "fault_temperature_sensor.3": 1.0, "fault_temperature_sensor.4": 0.0,
    "fault_internal": 0.0, "residual_current_setting": 300.0, "temperature_setting": 85.0,
}

PILE_VALUES: dict[str, float | str] = {
    "voltage": 226.5, "frequency": 50.01, "active_power": 300.0, "energy_import": 123.45,
    "fault_supply": 0.0, "model": "EP-10",
}
for _port in range(1, 11):
    PILE_VALUES.update({f"port_state.{_port}": 1.0, f"voltage.{_port}": 0.0, f"current.{_port}": 0.0,
                        f"active_power.{_port}": 0.0, f"energy_import.{_port}": float(_port)})
PILE_VALUES.update({"port_state.3": 2.0, "voltage.3": 226.1, "current.3": 0.659, "active_power.3": 149.5,
                    "energy_import.3": 12.345, "fault_over_power.3": 1.0,
                    "port_state.7": 2.0, "voltage.7": 225.9, "current.7": 0.667, "active_power.7": 150.5,
                    "port_state.10": 4.0, "fault_relay.10": 1.0})
PILE_EXPECTED = {k: float(v) for k, v in PILE_VALUES.items() if k != "model"}
PILE_EXPECTED.update({"fault_over_temperature": 0.0, "fault_meter": 0.0})
for _port in range(1, 11):
    for _flag in ("fault_over_current", "fault_over_power", "fault_over_temperature", "fault_relay"):
        PILE_EXPECTED.setdefault(f"{_flag}.{_port}", 0.0)

DEVICES = {  # device id -> (profile, values, expected)
    1: ("sdm120", METER_VALUES, SDM120_EXPECTED),
    2: ("ddsu666", METER_VALUES, DDSU666_EXPECTED),
    3: ("ebike_pile", PILE_VALUES, PILE_EXPECTED),
    4: ("fire_detector", FIRE_VALUES, FIRE_EXPECTED),
}


def line_sim(transport: str, ids=(1, 2, 3, 4), **kwargs) -> RtuSim:
    return RtuSim(
        {i: constant_values(DEVICES[i][1]) for i in ids},
        profile={i: DEVICES[i][0] for i in ids},
        clock=SimClock(START, speed=1.0),
        transport=transport,
        **kwargs,
    )


def bus_for(sim: RtuSim, **kwargs) -> RtuBus:
    clock = SimClock(START, speed=1.0)
    if sim.transport == "pty":
        return open_bus("serial", sim.path, clock=clock, **kwargs)
    return open_bus("rtu-tcp", f"127.0.0.1:{sim.port}", clock=clock, **kwargs)


def spec(device_id: int, timeout_s: float = 0.5, **kwargs) -> DeviceSpec:
    return DeviceSpec(f"dev{device_id}", DEVICES[device_id][0], device_id, timeout_s, **kwargs)


# -- golden frames (field-vectors.md section B) -------------------------------------------------


def test_fc030_request_and_reply():
    request = h("01 04 00 00 00 02 71 CB")
    assert encode_request(1, 4, 0x0000, 2) == request
    assert decode_request(request) == RtuRequest(1, 4, 0x0000, 2)
    reply = decode_response(h("01 04 04 43 60 25 88 F4 E8"))
    assert reply == RtuResponse(1, 4, (0x4360, 0x2588))
    values = load_profile("sdm120").decode({0x0000: list(reply.registers)})
    assert values["voltage"] == pytest.approx(224.1466, abs=1e-4)
    assert encode_response(1, 4, [0x4360, 0x2588]) == h("01 04 04 43 60 25 88 F4 E8")


@pytest.mark.parametrize(
    ("request_hex", "reply_hex", "registers"),
    [  # FC-031, a clean scan of two SDM meters through a transparent gateway
        ("01 03 4A 38 00 02 53 DE", "01 03 04 00 00 00 00 FA 33", (0, 0)),
        ("01 04 00 08 00 02 F0 09", "01 04 04 40 88 FA 31 ED 1A", (0x4088, 0xFA31)),
        ("01 03 00 23 00 01 75 C0", "01 03 02 00 00 B8 44", (0,)),
        ("01 04 00 00 00 02 71 CB", "01 04 04 43 67 AF 55 E2 10", (0x4367, 0xAF55)),
        ("02 03 4A 38 00 02 53 ED", "02 03 04 00 00 00 00 C9 33", (0, 0)),
        ("02 04 00 08 00 02 F0 3A", "02 04 04 40 8B 6A 89 42 68", (0x408B, 0x6A89)),
        ("02 03 00 23 00 01 75 F3", "02 03 02 00 00 FC 44", (0,)),
    ],
)
def test_fc031_bus_scan_frames(request_hex, reply_hex, registers):
    request = decode_request(h(request_hex))
    assert encode_request(*vars_of(request)) == h(request_hex)
    reply = decode_response(h(reply_hex))
    assert (reply.device_id, reply.function_code, reply.registers) == (
        request.device_id, request.function_code, registers)
    assert encode_response(reply.device_id, reply.function_code, list(registers)) == h(reply_hex)
    scanner = ReplyScanner(request)
    assert scanner.feed(h(reply_hex)) == reply


def vars_of(request: RtuRequest) -> tuple[int, int, int, int]:
    return request.device_id, request.function_code, request.address, request.count


def test_fc031_decoded_values():
    sdm = load_profile("sdm120")
    assert round(sdm.decode({0: [0x4367, 0xAF55]})["voltage"], 2) == 231.68
    assert decode_words([0x4088, 0xFA31], "float32") == pytest.approx(4.2805, abs=5e-5)
    assert decode_words([0x408B, 0x6A89], "float32") == pytest.approx(4.3568, abs=5e-5)


def test_fc033_request():
    assert encode_request(3, 4, 0x0000, 0x50) == h("03 04 00 00 00 50 F1 D4")


def test_fc036_exception_illegal_data_address():
    assert encode_request(1, 3, 0, 4) == h("01 03 00 00 00 04 44 09")
    assert decode_response(h("01 83 02 C0 F1")) == RtuResponse(1, 3, exception_code=2)
    assert encode_exception(1, 3, 2) == h("01 83 02 C0 F1")
    # the normal form the reporter expected, also CRC ok
    assert decode_response(h("01 03 08 00 00 00 00 00 00 00 00 95 D7")).registers == (0, 0, 0, 0)
    scanner = ReplyScanner(RtuRequest(1, 3, 0, 4))
    assert scanner.feed(h("01 83 02 C0 F1")).exception_code == 2


def test_fc038_exception_illegal_data_value():
    assert decode_response(h("01 86 03 02 61")) == RtuResponse(1, 6, exception_code=3)


def test_fc041_scaled_integers(tmp_path):
    first = decode_response(h("01 03 02 08 D9 7E 1E"))
    second = decode_response(h("01 03 04 00 00 05 8D 39 06"))
    path = tmp_path / "sun2000.toml"
    path.write_text(
        '[device]\nmodel = "SUN2000"\nmanufacturer = "Huawei"\nfunction_code = 3\nsource = "FC-041"\n'
        '[[register]]\nquantity = "voltage"\naddress = 0\ntype = "uint16"\nscale = 0.1\nunit = "V"\n'
        '[[register]]\nquantity = "energy_import"\naddress = 1\ntype = "uint32"\nscale = 0.01\nunit = "kWh"\n'
    )
    profile = load_profile(path)
    values = profile.decode({0: list(first.registers), 1: list(second.registers)})
    assert values == {"voltage": 226.5, "energy_import": 14.21}
    assert encode_response(1, 3, profile.encode(values)[(3, 0)]) == h("01 03 02 08 D9 7E 1E")
    assert encode_response(1, 3, profile.encode(values)[(3, 1)]) == h("01 03 04 00 00 05 8D 39 06")


def test_fc042_float32_frequency_round_trip():
    for words, hz in (([0x426F, 0xFC67], 59.9965), ([0x426F, 0xF642], 59.9905)):
        frame = encode_response(1, 3, words)
        assert crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")
        registers = list(decode_response(frame).registers)
        assert round(decode_words(registers, "float32"), 4) == hz


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=300))
def test_crc_agrees_with_pymodbus(data):
    # pymodbus keeps the CRC as the two bytes read big-endian; the wire is low byte first
    assert FramerRTU.compute_CRC(data) == int.from_bytes(crc16(data).to_bytes(2, "little"), "big")


# -- malformed frames: each kind has its error ----------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "error", "pattern"),
    [
        ("01 04", IncompleteFrame, "2 bytes, a reply has at least 5"),
        ("01 04 04 43 60 25", IncompleteFrame, "6 bytes, byte count 4 needs 9"),
        ("01 04 04 43 60 25 88 F4 E9", CrcError, "CRC E9F4H received, E8F4H computed"),
        ("01 04 03 43 60 25 88 F4", ByteCountError, "byte count 3"),
        ("01 04 00 F4 E8", ByteCountError, "byte count 0"),
        ("01 04 FC 00 00", ByteCountError, "byte count 252"),
        ("01 04 04 43 60 25 88 F4 E8 00", ByteCountError, "10 bytes, byte count 4 gives 9"),
        ("01 83 02 C0 F1 00", ByteCountError, "exception reply of 6 bytes"),
        ("01 83 02 C0 F0", CrcError, "CRC F0C0H received"),
        ("01 05 00 00 FF 00 8C 3A", FunctionCodeError, "function code 5 is not a read reply"),
        ("00 04 04 43 60 25 88 F4 E8", DeviceIdError, "device id 0"),
        ("F8 04 04 43 60 25 88 F4 E8", DeviceIdError, "device id 248"),
    ],
)
def test_malformed_replies(frame, error, pattern):
    with pytest.raises(error, match=pattern) as info:
        decode_response(h(frame))
    assert isinstance(info.value, RtuFrameError) and isinstance(info.value, DecodeError)


def test_crc_error_carries_both_values():
    with pytest.raises(CrcError) as info:
        decode_response(h("01 04 04 43 60 25 88 F4 E9"))
    assert (info.value.computed, info.value.received, info.value.offset) == (0xE8F4, 0xE9F4, 7)


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("01 04 00 00 00", IncompleteFrame),
        ("01 04 00 00 00 02 71 CC", CrcError),
        ("01 04 00 00 00 02 71 CB 00", ByteCountError),
        ("01 10 00 00 00 01 02 00 00 00 00", FunctionCodeError),
    ],
)
def test_malformed_requests(frame, error):
    with pytest.raises(error):
        decode_request(h(frame))


def test_request_length():
    assert request_length(h("01")) is None
    assert request_length(h("01 04")) == 8
    assert request_length(h("01 10 00 00 00 02")) is None
    assert request_length(h("01 10 00 00 00 02 04")) == 13
    with pytest.raises(FunctionCodeError):
        request_length(h("01 2B"))


# -- the reply scanner ----------------------------------------------------------------------------

REQ = RtuRequest(1, 4, 0x0000, 2)
REPLY = h("01 04 04 43 60 25 88 F4 E8")
LATE_OTHER = h("02 04 04 40 8B 6A 89 42 68")  # FC-031: device 2's answer, late


def test_scanner_byte_by_byte_with_noise():
    scanner = ReplyScanner(REQ)
    for byte in h("00 FF 01 04 FB 55") + REPLY:
        reply = scanner.feed(bytes([byte]))
    assert reply == RtuResponse(1, 4, (0x4360, 0x2588))
    assert scanner.noise == 6 and scanner.errors == []


def test_scanner_splits_two_frames_by_length_and_crc():
    # C-08: a late reply of another device and ours glued together in one read
    scanner = ReplyScanner(REQ)
    assert scanner.feed(LATE_OTHER + REPLY).registers == (0x4360, 0x2588)
    assert scanner.noise == len(LATE_OTHER)


def test_scanner_keeps_crc_error_and_finds_a_later_good_frame():
    scanner = ReplyScanner(REQ)
    assert scanner.feed(REPLY[:-1] + b"\x00") is None
    assert [type(e) for e in scanner.errors] == [CrcError]
    assert scanner.feed(REPLY) == RtuResponse(1, 4, (0x4360, 0x2588))


def test_scanner_wrong_register_count_is_a_byte_count_error():
    scanner = ReplyScanner(RtuRequest(1, 4, 0x0000, 4))
    assert scanner.feed(REPLY) is None
    assert isinstance(scanner.errors[0], ByteCountError)
    assert "byte count 4 (2 registers) to a read of 4 registers" in str(scanner.errors[0])


def test_scanner_echo():
    request = encode_request(1, 4, 0, 2)
    scanner = ReplyScanner(REQ, echo=request)
    assert scanner.feed(request[:3]) is None
    assert scanner.feed(request[3:] + REPLY) is not None
    assert scanner.noise == 0 and scanner.echo_error is None
    # an adapter that does not echo after all: recorded, and the reply is still found
    scanner = ReplyScanner(REQ, echo=request)
    assert scanner.feed(REPLY) is not None
    assert isinstance(scanner.echo_error, EchoError)


def test_frame_gap():
    assert frame_gap_s(9600, 11) == pytest.approx(3.5 * 11 / 9600)  # 4.01 ms
    assert frame_gap_s(2400, 11) == pytest.approx(0.016041666)
    assert frame_gap_s(38400, 11) == 0.00175  # fixed above 19200 baud


# -- every profile over every RTU transport ---------------------------------------------------------


async def read_all(bus, ids=(1, 2, 3, 4)):
    async with bus:
        return {i: (await bus.read(spec(i))).values for i in ids}


@pytest.mark.parametrize("transport", ["pty", "tcp"])
def test_every_profile_over_rtu(transport):
    with line_sim(transport) as sim:
        values = asyncio.run(read_all(bus_for(sim)))
    for device_id, (_profile, _values, expected) in DEVICES.items():
        assert values[device_id] == expected, device_id
    assert sim.requests == {1: 2, 2: 5, 3: 2, 4: 2}  # the planned reads, once each


def test_every_profile_over_rtu_to_pymodbus():
    """The same reads against pymodbus's own RTU framer (a TCP server with RTU framing):
    the codec is not only checked against its own simulator."""

    async def main():
        server = MeterServer(
            {i: constant_values(DEVICES[i][1]) for i in DEVICES},
            profile={i: DEVICES[i][0] for i in DEVICES},
            clock=SimClock(START, speed=1.0),
            framer="rtu",
        )
        await server.start()
        try:
            bus = open_bus("rtu-tcp", f"127.0.0.1:{server.port}", clock=SimClock(START, speed=1.0))
            values = await read_all(bus)
            async with bus:  # an id nobody has: silence on an RTU line
                with pytest.raises(DeviceTimeout):
                    await bus.read(DeviceSpec("nobody", "sdm120", 9, timeout_s=0.2))
            return values
        finally:
            await server.stop()

    values = asyncio.run(main())
    for device_id, (_profile, _values, expected) in DEVICES.items():
        assert values[device_id] == expected, device_id


def test_identification_over_pty():
    async def main(sim):
        async with bus_for(sim) as bus:
            return await bus.read_info(spec(4)), await bus.read_info(spec(3)), await bus.read_info(spec(1))

    with line_sim("pty") as sim:
        fire, pile, meter = asyncio.run(main(sim))
    assert fire == {"model": "FD-R1T4", "serial_number": 12345678}
    assert pile == {"model": "EP-10"}
    assert meter == {}


# -- faults -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["pty", "tcp"])
@pytest.mark.parametrize(
    ("fault", "error", "pattern", "counter"),
    [
        ("silent", DeviceTimeout, r"no answer in 0.2 s to function 4 read of 0x0000 count 7$", "timeouts"),
        ("bad_crc", CrcError, r"function 4 read of 0x0000 count 7: CRC [0-9A-F]{4}H received", "crc_errors"),
        ("exception", DeviceException, r"exception 4 \(server device failure\) to function 4 read of 0x0000 count 7", "exceptions"),
        ("short", ByteCountError, r"reply with byte count 12 \(6 registers\) to a read of 7 registers", "frame_errors"),
        ("other_id", DeviceTimeout, r"no answer in 0.2 s .* \(19 bytes of noise\)", "timeouts"),
        ("garbage", None, None, "responses"),
    ],
)
def test_faults(transport, fault, error, pattern, counter):
    # a corrupt reply must fail as soon as the line is quiet, not after the timeout: with a
    # 5 s timeout, any wait for it shows whatever the machine's load (no tight time bound)
    timeout = 0.2 if error in (None, DeviceTimeout) else 5.0

    async def main(sim):
        async with bus_for(sim) as bus:
            sim.set_fault(4, fault)
            t0 = time.monotonic()
            if error is None:
                result = (await bus.read(spec(4, timeout))).values
            else:
                with pytest.raises(error, match=pattern) as info:
                    await bus.read(spec(4, timeout))
                result = info.value
            elapsed = time.monotonic() - t0
            sim.set_fault(4, None)
            healed = (await bus.read(spec(4, 0.2))).values
            return result, elapsed, healed, bus.health()["dev4"]

    with line_sim(transport, ids=(4,)) as sim:
        result, elapsed, healed, health = asyncio.run(main(sim))
    where = "serial /dev/pts/" if transport == "pty" else "RTU over TCP 127.0.0.1:"
    if error is None:
        assert result == FIRE_EXPECTED
        assert health["discarded_bytes"] == 2 * len(GARBAGE)  # before each of the 2 replies
    else:
        assert str(result).startswith(f"dev4 (device id 4 at {where}")
        assert health[counter] == 1.0
        assert health["consecutive_failures"] == 0.0  # the healed read reset it
        if error is DeviceException:
            assert result.code == 4
    assert healed == FIRE_EXPECTED
    if error is DeviceTimeout:
        assert elapsed >= 0.2  # it waited its timeout
    elif error is not None:
        assert elapsed < timeout / 2  # failed at the quiet line, long before the timeout


def test_retry_after_crc_error_costs_one_more_request():
    async def main(sim):
        async with bus_for(sim) as bus:
            sim.set_fault(4, "bad_crc")
            with pytest.raises(CrcError):
                await bus.read(spec(4, 0.2, retries=2))
            return bus.health()["dev4"]

    with line_sim("pty", ids=(4,)) as sim:
        health = asyncio.run(main(sim))
    assert sim.requests == {4: 3}
    assert (health["requests"], health["crc_errors"], health["responses"]) == (3.0, 3.0, 0.0)


def test_late_reply_never_reaches_the_next_device():
    """Device 4 answers 0.35 s late, after the bus gave up at 0.2 s and asked device 3:
    its reply arrives during device 3's transaction and is skipped (another device id);
    device 3 and device 1 read their own values, and the slow device costs the others no
    more than its own timeout."""

    async def main(sim):
        async with bus_for(sim) as bus:
            devices = [spec(1), spec(4, 0.2), spec(3)]
            t0 = time.monotonic()
            for device in devices:
                await bus.read(device)
            normal = time.monotonic() - t0
            sim.set_fault(4, "slow")
            results = {}
            t0 = time.monotonic()
            for device in devices:
                try:
                    results[device.device_id] = (await bus.read(device)).values
                except DeviceTimeout as exc:
                    results[device.device_id] = exc
            faulty = time.monotonic() - t0
            return results, normal, faulty, bus.health()

    with line_sim("pty", ids=(1, 3, 4), delay_s=0.35) as sim:
        results, normal, faulty, health = asyncio.run(main(sim))
    assert results[1] == SDM120_EXPECTED
    assert isinstance(results[4], DeviceTimeout)
    assert results[3] == PILE_EXPECTED
    assert health["dev3"]["discarded_bytes"] == 5 + 14  # device 4's late 7-register reply
    assert health["dev4"]["timeouts"] == 1.0
    assert faulty < normal + 0.2 + 0.2 + 0.1  # the slow device's timeout, its late bytes


@pytest.mark.parametrize("bus_echo", [True, False])
def test_echoing_adapter(bus_echo):
    async def main(sim):
        async with bus_for(sim, echo=bus_echo) as bus:
            return (await bus.read(spec(1))).values, bus.health()["dev1"]

    with line_sim("pty", ids=(1,), echo=True) as sim:
        values, health = asyncio.run(main(sim))
    assert values == SDM120_EXPECTED
    # echo handling drops exactly the request bytes; without it they are hunted past
    assert health["discarded_bytes"] == (0.0 if bus_echo else 2 * 8.0)


def test_paced_line_at_9600_baud():
    """Bytes paced at 11 bits per byte, 9600 baud: an SDM120 read (two requests of 8
    bytes, replies of 157 and 9 bytes) cannot take less than the bytes' time on the line."""
    byte_s = 11 / 9600

    async def main(sim):
        bus = open_bus("serial", sim.path, clock=SimClock(START, speed=1.0), parity="E")
        async with bus:
            return await bus.read(spec(1))

    with line_sim("pty", ids=(1,), byte_time_s=byte_s) as sim:
        reading = asyncio.run(main(sim))
    assert reading.values == SDM120_EXPECTED
    on_line = (8 + 3.5 + 157 + 8 + 3.5 + 9) * byte_s + frame_gap_s(9600, 11)
    assert on_line <= reading.latency_s < on_line + 0.5


def test_gateway_restart_reconnects():
    async def main():
        sim = line_sim("tcp", ids=(1,))
        sim.start()
        bus = bus_for(sim)
        async with bus:
            before = (await bus.read(spec(1))).values
            port = sim.port
            sim.stop()
            await asyncio.sleep(0.05)
            sim = line_sim("tcp", ids=(1,), port=port)
            sim.start()
            try:
                after = (await bus.read(spec(1))).values
            finally:
                sim.stop()
        return before, after

    before, after = asyncio.run(main())
    assert before == after == SDM120_EXPECTED


def test_unopenable_port_and_refused_gateway():
    async def main():
        clock = SimClock(START, speed=1.0)
        serial_bus = open_bus("serial", "/nonexistent/ttyUSB9", clock=clock)
        with pytest.raises(DriverError, match=r"dev1 \(device id 1 at serial /nonexistent/ttyUSB9 \(9600 8N1\)\): .*cannot open"):
            await serial_bus.read(spec(1))
        link = TcpLink("127.0.0.1", 1, connect_timeout_s=1.0)
        with pytest.raises(DriverError, match=r"dev1 \(device id 1 at RTU over TCP 127.0.0.1:1\): .*refused"):
            await RtuBus(link, clock=clock).read(spec(1))

    asyncio.run(main())


def test_open_bus_rejects_bad_arguments():
    clock = SimClock(START, speed=1.0)
    with pytest.raises(ValueError, match="bus kind"):
        open_bus("udp", "127.0.0.1:502", clock=clock)
    with pytest.raises(ValueError, match="HOST:PORT"):
        open_bus("rtu-tcp", "127.0.0.1", clock=clock)
    with pytest.raises(ValueError, match="parity"):
        open_bus("serial", "/dev/ttyUSB0", clock=clock, parity="X")


def test_rtu_sim_rejects_bad_faults():
    sim = line_sim("pty", ids=(1,))
    try:
        with pytest.raises(ValueError):
            sim.set_fault(1, "smoke")
        with pytest.raises(ValueError):
            sim.set_fault(2, "silent")
    finally:
        sim.stop()
