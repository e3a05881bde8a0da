"""Dianchuan/Dongjun charging-board codec (golden frames from field-vectors.md FC-050,
FC-051, FC-053) and the pile driver against the pty board simulator, no mocks."""

from __future__ import annotations

import asyncio
import os
import select
import time
import tty

import pytest

from drivers.dianchuan import (
    END_REASON_CODES,
    FC051_SETTINGS,
    MIN_LEN,
    Cmd,
    CommandRejected,
    ControlDisabled,
    DianchuanPile,
    FaultReport,
    Frame,
    FrameScanner,
    GarbageError,
    LengthError,
    PayloadError,
    PortStatus,
    Settings,
    ShortFrame,
    SumError,
    TotalConsumption,
    acknowledge,
    decode_frame,
    parse_all_ports,
    parse_answer,
    parse_fault_report,
    parse_finish_report,
    parse_port_status,
    parse_set_result,
    parse_settings,
    parse_start_result,
    parse_stop_result,
    parse_total_consumption,
    request,
    request_all_ports,
    request_port_status,
    request_set_settings,
    request_settings,
    request_start,
    request_stop,
    request_total_consumption,
)
from drivers.pile import EndReason, PileSession, PortReading, PortState
from drivers.reading import DecodeError, DeviceTimeout, DriverError
from flylead.clock import SimClock
from simulators.dianchuan_board import ChargeProfile, DianchuanBoard

pytestmark = pytest.mark.timeout(60)

START = 1_700_000_000.0  # 2023-11-14T22:13:20Z
SPEED = 600.0  # ten simulated minutes per real second
IDLE, CHARGING, DISABLED = PortState.IDLE, PortState.CHARGING, PortState.DISABLED


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# -- golden frames ----------------------------------------------------------------------------

FC050_QUERY = "EE 09 01 31 32 33 34 35 36 00 0F"
FC050_ANSWER_3 = "66 0C 01 31 32 33 34 35 36 03 01 02 03 09"
FC050_ANSWER_1 = "66 0A 01 31 32 33 34 35 36 01 01 0C"

# FC-051: (T, R) of the 10-port board; R None = no answer (0x24).
FC051 = {
    "all_ports": ("EE 09 01 00 00 00 00 00 00 00 08",
                  "66 13 01 00 00 00 00 00 00 0A 01 01 01 01 01 01 01 01 01 01 18"),
    "total": ("EE 09 07 00 00 00 00 00 00 00 0E", "66 0C 07 00 00 00 00 00 00 00 00 00 00 0B"),
    "settings": ("EE 09 0C 00 00 00 00 00 00 00 05",
                 "66 11 0C 00 00 00 00 00 00 01 F4 00 00 FF 00 FF 00 FF 17"),
    "port_status": ("EE 09 06 00 00 00 00 00 00 01 0E", "66 0D 06 00 00 00 00 00 00 01 00 00 00 00 0A"),
    "all_power": ("EE 09 24 00 00 00 00 00 00 00 2D", None),
    "set_max_power": ("EE 11 08 00 00 00 00 00 00 01 F4 00 00 FF 00 FF 00 FF 13",
                      "66 09 08 00 00 00 00 00 00 01 00"),
    "start": ("EE 0D 02 00 00 00 00 00 00 01 00 00 00 03 0D", "66 0A 02 00 00 00 00 00 00 01 01 08"),
}

ALL_VECTOR_FRAMES = [FC050_QUERY, FC050_ANSWER_3, FC050_ANSWER_1] + [
    f for pair in FC051.values() for f in pair if f is not None
]


@pytest.mark.parametrize("text", ALL_VECTOR_FRAMES)
def test_every_vector_frame_obeys_len_and_sum_rule(text: str) -> None:
    # field-vectors.md says "LEN and SUM ok" for all of them, FC-051's 0x08 answer
    # (66 09 08 ... 01 00, SUM 0x00 = 09^08^01) included; decode_frame checks both.
    raw = h(text)
    frame = decode_frame(raw)
    assert raw[1] == len(raw) - 2 == MIN_LEN + len(frame.data)
    assert frame.encode() == raw


def test_fc050_published_examples() -> None:
    query = decode_frame(h(FC050_QUERY))
    assert (query.sop, query.cmd, query.session_id, query.data) == (0xEE, 0x01, b"123456", b"\x00")
    assert request_all_ports(session_id=b"123456").encode() == h(FC050_QUERY)
    assert parse_all_ports(decode_frame(h(FC050_ANSWER_3))) == [IDLE, CHARGING, DISABLED]
    assert parse_all_ports(decode_frame(h(FC050_ANSWER_1))) == [IDLE]
    assert decode_frame(h(FC050_ANSWER_3)).session_id == b"123456"  # the answer echoes it


def test_fc051_encoders_reproduce_the_gateway_frames_byte_for_byte() -> None:
    assert request_all_ports().encode() == h(FC051["all_ports"][0])
    assert request_total_consumption().encode() == h(FC051["total"][0])
    assert request_settings().encode() == h(FC051["settings"][0])
    assert request_port_status(1).encode() == h(FC051["port_status"][0])
    assert request(Cmd.ALL_PORT_POWER).encode() == h(FC051["all_power"][0])
    assert request_set_settings(Settings().with_max_power(500)).encode() == h(FC051["set_max_power"][0])
    assert request_start(1, 3).encode() == h(FC051["start"][0])


def test_fc051_answers_decode_to_the_vector_values() -> None:
    def answer(name: str) -> Frame:
        frame = decode_frame(h(FC051[name][1]))
        assert frame.is_answer and frame.session_id == bytes(6)
        return frame

    assert parse_all_ports(answer("all_ports")) == [IDLE] * 10
    assert parse_total_consumption(answer("total")) == TotalConsumption(0.0, 0.0)
    settings = parse_settings(answer("settings"))
    assert settings.max_power_w == 500 and settings.raw == FC051_SETTINGS
    assert parse_port_status(answer("port_status")) == PortStatus(port=1, remaining_s=0.0, power_w=0.0)
    assert parse_set_result(answer("set_max_power")) is True
    assert parse_start_result(answer("start")) == (1, True)
    # the 0x08 command writes back exactly the block 0x0C reads (FC-051)
    assert decode_frame(h(FC051["set_max_power"][0])).data == settings.raw


def test_fc051_stray_characters_after_a_frame_are_garbage() -> None:
    scanner = FrameScanner()
    frames = scanner.feed(h(FC051["port_status"][0]) + b"0 2a")
    assert frames == [request_port_status(1)]
    assert scanner.garbage_bytes == 4 and scanner.pending == 0


def test_scanner_finds_every_vector_frame_in_noise_fed_byte_by_byte() -> None:
    noise = [b"", b"0 2a", b"\xee\x30", b"\x66\x03\xff", b"\x00\x12", b"\xee"]
    stream = b"".join(noise[i % len(noise)] + h(f) for i, f in enumerate(ALL_VECTOR_FRAMES))
    scanner = FrameScanner()
    frames = [f for i in range(len(stream)) for f in scanner.feed(stream[i : i + 1])]
    frames += scanner.feed(h(FC051["total"][1]))  # lets a trailing false start byte go
    assert [f.encode() for f in frames] == [h(f) for f in ALL_VECTOR_FRAMES] + [h(FC051["total"][1])]
    assert scanner.garbage_bytes == sum(len(noise[i % len(noise)]) for i in range(len(ALL_VECTOR_FRAMES)))
    assert scanner.length_errors >= 1


# -- codec errors -----------------------------------------------------------------------------


def test_bad_sum_is_rejected_naming_computed_and_received() -> None:
    raw = bytearray(h(FC051["start"][1]))
    raw[-1] ^= 0x5A
    with pytest.raises(SumError) as info:
        decode_frame(raw)
    assert (info.value.computed, info.value.received, info.value.offset) == (0x08, 0x52, 11)
    assert "computed 0x08" in str(info.value) and "received 0x52" in str(info.value)
    assert isinstance(info.value, DecodeError)


@pytest.mark.parametrize("text", ALL_VECTOR_FRAMES)
def test_every_truncation_is_a_short_frame(text: str) -> None:
    raw = h(text)
    for cut in range(len(raw)):
        with pytest.raises(ShortFrame) as info:
            decode_frame(raw[:cut])
        assert info.value.got == cut
        assert info.value.needed == (len(raw) if cut >= 2 else 2)


def test_garbage_and_bad_len_are_rejected_with_specific_errors() -> None:
    with pytest.raises(GarbageError) as info:
        decode_frame(b"0 2a" + h(FC051["total"][1]))
    assert info.value.offset == 0 and "0x30" in str(info.value)
    with pytest.raises(LengthError) as info:
        decode_frame(h("EE 03 01 02 03"))
    assert info.value.offset == 1 and "LEN 0x03" in str(info.value)
    with pytest.raises(LengthError) as info:
        decode_frame(h(FC051["total"][1]) + b"\x00")
    assert info.value.offset == 14


def test_scanner_skips_and_counts_bad_frames() -> None:
    bad = bytearray(h(FC051["settings"][1]))
    bad[10] ^= 0x01  # one DATA bit flipped: the SUM no longer matches
    scanner = FrameScanner()
    good = h(FC051["start"][1])
    assert scanner.feed(bytes(bad) + good) == [decode_frame(good)]
    assert scanner.sum_errors == 1 and scanner.garbage_bytes == len(bad)
    assert isinstance(scanner.errors[-1], SumError) and scanner.errors[-1].offset == len(bad) - 1


def test_scanner_does_not_wait_behind_a_false_start_byte() -> None:
    # EE 30 claims a 50-byte frame; the real answer right after it must not wait for it
    scanner = FrameScanner()
    answer = h(FC051["set_max_power"][1])
    assert scanner.feed(b"\xee\x30" + answer) == [decode_frame(answer)]
    assert scanner.garbage_bytes == 2 and scanner.pending == 0
    # a genuinely incomplete frame is kept until its last byte
    assert scanner.feed(answer[:-1]) == [] and scanner.pending == len(answer) - 1
    assert scanner.feed(answer[-1:]) == [decode_frame(answer)]


def test_payload_errors_name_command_port_and_offset() -> None:
    with pytest.raises(PayloadError) as info:
        parse_all_ports(Frame.answer(0x01, bytes([3, 1, 9, 1])))
    assert "port 2" in str(info.value) and "0x09" in str(info.value) and info.value.offset == 11
    with pytest.raises(PayloadError, match="PORT_NUM 10 needs 11"):
        parse_all_ports(Frame.answer(0x01, bytes([10, 1, 1])))
    with pytest.raises(PayloadError, match="DATA is 4 bytes, expected 5"):
        parse_port_status(Frame.answer(0x06, bytes(4)))
    with pytest.raises(PayloadError, match="expected answer 0x06"):
        parse_port_status(Frame.command(0x06, bytes(5)))
    with pytest.raises(PayloadError, match="port 0"):
        parse_start_result(Frame.answer(0x02, b"\x00\x01"))


def test_assumed_layouts_reports_and_acknowledgement() -> None:
    # assumption A1-A3: port 3, 95 min left, 1234.5 W (0.1 W units)
    status = parse_port_status(Frame.answer(0x06, h("03 00 5F 30 39")))
    assert status == PortStatus(3, 95 * 60.0, pytest.approx(1234.5))
    assert parse_stop_result(Frame.answer(0x0B, h("03 01 E0"))) == (3, 480 * 60.0)  # A7
    assert request_stop(3).encode() == Frame.command(0x0B, b"\x03").encode()  # A6
    report = Frame.command(0x05, h("03 00 00 02") + h("01020304 01 0055"), b"\x00\x00\x00\x00\x00\x07")
    finished = parse_finish_report(report)  # A8, A9 (card fields ignored)
    assert (finished.port, finished.remaining_s, finished.end_reason) == (3, 0.0, EndReason.FULL)
    assert parse_finish_report(Frame.command(0x05, h("01 FF FF 09"))).remaining_s is None
    assert parse_finish_report(Frame.command(0x05, h("01 00 00 09"))).end_reason is EndReason.UNKNOWN
    assert {END_REASON_CODES[c] for c in range(5)} == {
        EndReason.TIME_USED, EndReason.USER_STOP, EndReason.FULL, EndReason.PORT_FAULT,
        EndReason.OVER_POWER}
    assert parse_fault_report(Frame.command(0x0D, h("FF 03"))) == FaultReport(None, 3, "power supply fault")
    ack = acknowledge(report)  # A11: an answer echoing CMD and session id, DATA 01
    assert ack.encode() == Frame.answer(0x05, b"\x01", report.session_id).encode()
    assert ack.encode()[0] == 0x66
    assert parse_answer(report) == finished and parse_answer(Frame.answer(0x33, b"")).cmd == 0x33


# -- pile data model --------------------------------------------------------------------------


def test_pile_model_validates() -> None:
    reading = PortReading(1, "charging", 180.0, 600.0, 0.25)
    assert reading.state is CHARGING
    session = PileSession("pile-1", 2, START, START + 3600, 0.18, "full")
    assert session.end_reason is EndReason.FULL and session.duration_s == 3600
    assert PileSession("pile-1", 2, None, START, None, EndReason.UNKNOWN).duration_s is None
    for bad in (lambda: PortReading(0, IDLE, 0.0, 0.0), lambda: PortReading(1, IDLE, -1.0, 0.0),
                lambda: PortReading(1, "boiling", 0.0, 0.0),
                lambda: PileSession("pile-1", 1, START + 1, START, None, EndReason.FULL),
                lambda: PileSession("pile-1", 1, None, START, float("nan"), EndReason.FULL)):
        with pytest.raises(ValueError):
            bad()


# -- driver against the simulated board -------------------------------------------------------

PROFILE = ChargeProfile(bulk_w=180.0, bulk_s=600.0, taper_s=300.0, floor_w=30.0)


def on_board(test, *, control: bool = True, timeout_s: float = 1.0, **board_args):
    """Run ``await test(board, pile, clock)`` against a fresh board on a pty."""
    clock = SimClock(START, speed=SPEED)
    board_args.setdefault("resend_s", 0.2)

    async def main():
        with DianchuanBoard(clock=clock, **board_args) as board:
            async with DianchuanPile(board.path, device="pile-t1", clock=clock,
                                     timeout_s=timeout_s, control_enabled=control) as pile:
                return await test(board, pile, clock)

    return asyncio.run(main())


async def poll_until_session(pile: DianchuanPile, *, within_s: float = 15.0,
                             readings: list | None = None) -> list[PileSession]:
    """Poll like an agent (ports, then reports) until a session arrives."""
    sessions: list[PileSession] = []
    deadline = time.monotonic() + within_s
    while not sessions and time.monotonic() < deadline:
        ports = await pile.read_ports()
        if readings is not None:
            readings.append(ports)
        sessions += await pile.poll_reports()
        await asyncio.sleep(0.03)
    return sessions


async def quiet_poll(pile: DianchuanPile, board: DianchuanBoard) -> list[PileSession]:
    """Sessions that still arrive over three resend periods (there should be none)."""
    more: list[PileSession] = []
    for _ in range(6):
        await asyncio.sleep(0.1)
        more += await pile.poll_reports()
    return more


def test_full_session_start_charge_finish_report_acknowledgement() -> None:
    async def test(board, pile, clock):
        board.plan(3, profile=PROFILE)
        await pile.start_port(3, 20)
        readings: list[list[PortReading]] = []
        sessions = await poll_until_session(pile, readings=readings)
        sessions += await quiet_poll(pile, board)
        return board, sessions, readings

    board, sessions, readings = on_board(test)
    assert len(sessions) == 1, sessions
    session, truth = sessions[0], board.sessions[0]
    assert (session.pile, session.port, session.end_reason) == ("pile-t1", 3, EndReason.TIME_USED)
    assert (truth.port, truth.end_reason, truth.minutes, truth.source) == (3, EndReason.TIME_USED, 20, "gateway")
    assert truth.end - truth.start == 20 * 60
    assert session.start == pytest.approx(truth.start, abs=0.25 * SPEED)
    assert truth.end <= session.end <= truth.end + 1.5 * SPEED
    assert session.energy_kwh == pytest.approx(truth.energy_kwh, rel=0.08)
    assert truth.energy_kwh == pytest.approx(PROFILE.energy_kwh(1200.0))
    # while charging, port 3 read as charging with the profile's power and time left
    charging = [r[2] for r in readings if r[2].state is CHARGING]
    assert len(charging) >= 5
    bad = [r for r in charging if not (30.0 <= r.power_w <= 180.0 and 0 < r.remaining_s <= 1200)]
    assert not bad
    assert charging[0].power_w == pytest.approx(180.0)
    assert all(r[0].state is IDLE for r in readings)
    # the report was acknowledged and the board stopped resending it
    assert board.acks == 1 and board.pending_reports == 0
    acks = [f for f in board.received if f.cmd == Cmd.CHARGE_FINISHED]
    assert acks and all(f.is_answer and f.data == b"\x01" for f in acks)


@pytest.mark.parametrize("reason", [EndReason.FULL, EndReason.USER_STOP, EndReason.PORT_FAULT,
                                    EndReason.OVER_POWER, EndReason.NO_CHARGER])
def test_every_end_reason_reaches_the_pile_session(reason: EndReason) -> None:
    async def test(board, pile, clock):
        board.plan(5, reason=reason, after_s=300.0, profile=PROFILE)
        await pile.start_port(5, 60)
        sessions = await poll_until_session(pile)
        sessions += await quiet_poll(pile, board)
        return board, sessions, await pile.read_ports(), list(pile.faults)

    board, sessions, ports, faults = on_board(test)
    assert [(s.port, s.end_reason) for s in sessions] == [(5, reason)]
    assert board.sessions[0].end - board.sessions[0].start == 300.0
    assert sessions[0].energy_kwh == pytest.approx(board.sessions[0].energy_kwh, rel=0.15)
    if reason is EndReason.PORT_FAULT:
        assert ports[4].state is PortState.FAULT
        assert [(f.port, f.code, f.description) for f in faults] == [(5, 1, "port output fault")]
    else:
        assert ports[4].state is IDLE and not faults
    assert board.pending_reports == 0


def test_over_power_after_lowering_max_power() -> None:
    async def test(board, pile, clock):
        await pile.set_max_power(100)
        settings = await pile.read_settings()
        await pile.start_port(2, 30)  # the default charger draws 180 W
        sessions = await poll_until_session(pile)
        return board, settings, sessions

    board, settings, sessions = on_board(test)
    assert settings.max_power_w == 100 == board.max_power_w
    assert settings.raw[2:] == FC051_SETTINGS[2:]  # the other settings written back unchanged
    assert [(s.port, s.end_reason) for s in sessions] == [(2, EndReason.OVER_POWER)]


def test_remote_stop_yields_one_session() -> None:
    async def test(board, pile, clock):
        await pile.start_port(7, 120)
        for _ in range(5):
            await pile.read_ports()
            await asyncio.sleep(0.05)
        await pile.stop_port(7)
        sessions = await pile.poll_reports()
        sessions += await quiet_poll(pile, board)  # the board's own stop report is dropped
        return board, sessions

    board, sessions = on_board(test)
    assert [(s.port, s.end_reason) for s in sessions] == [(7, EndReason.REMOTE_STOP)]
    assert board.sessions[0].end_reason is EndReason.REMOTE_STOP
    assert sessions[0].energy_kwh == pytest.approx(board.sessions[0].energy_kwh, rel=0.15)
    assert board.acks == 1 and board.pending_reports == 0


def test_resent_reports_give_one_session_and_an_unseen_start_is_none() -> None:
    async def test(board, pile, clock):
        board.plug_in(4, 1)  # a one-minute coin session the gateway never sees running
        await asyncio.sleep(0.1 + 3 * 0.2)  # it ends after 0.1 s; three resends pile up
        sessions = await pile.poll_reports()
        sessions += await quiet_poll(pile, board)
        return board, sessions

    board, sessions = on_board(test)
    assert board.reports_sent >= 3
    assert len(sessions) == 1
    session = sessions[0]
    assert (session.port, session.start, session.energy_kwh, session.end_reason) == (
        4, None, None, EndReason.TIME_USED)
    assert board.sessions[0].source == "local"
    assert board.pending_reports == 0


def test_local_session_observed_by_polling_starts_at_first_sight() -> None:
    async def test(board, pile, clock):
        board.plug_in(1, 10, profile=PROFILE)
        return board, await poll_until_session(pile)

    board, sessions = on_board(test)
    truth = board.sessions[0]
    assert [(s.port, s.end_reason) for s in sessions] == [(1, EndReason.TIME_USED)]
    assert truth.start <= sessions[0].start <= truth.start + 0.5 * SPEED
    assert sessions[0].energy_kwh == pytest.approx(truth.energy_kwh, rel=0.15)


def test_port_states_and_fault_report() -> None:
    async def test(board, pile, clock):
        board.set_port(2, PortState.DISABLED)
        board.set_port(9, PortState.FAULT)
        ports = await pile.read_ports()
        board.report_fault(None, 3)
        sessions = await pile.poll_reports(wait_s=2.0)
        await asyncio.sleep(0.5)
        sessions += await pile.poll_reports()
        return board, ports, sessions, list(pile.faults)

    board, ports, sessions, faults = on_board(test, control=False)
    assert [r.state for r in ports] == [IDLE, DISABLED] + [IDLE] * 6 + [PortState.FAULT, IDLE]
    assert all(r.power_w == 0 and r.remaining_s == 0 and r.energy_kwh is None for r in ports)
    assert sessions == []
    assert [(f.port, f.code, f.description) for f in faults] == [(None, 3, "power supply fault")]
    assert faults[0].received is not None
    assert board.acks == 1 and board.pending_reports == 0


@pytest.mark.parametrize("cmd", range(0x24, 0x2B))
def test_ignored_commands_time_out_cleanly(cmd: int) -> None:
    timeout_s = 0.3

    async def test(board, pile, clock):
        started = time.monotonic()
        with pytest.raises(DeviceTimeout) as info:
            await pile.request(cmd)
        elapsed = time.monotonic() - started
        ports = await pile.read_ports()  # the driver still works afterwards
        return info.value, elapsed, ports

    error, elapsed, ports = on_board(test, timeout_s=timeout_s)
    assert timeout_s <= elapsed < timeout_s + 2.0  # its timeout once (slack for a loaded machine)
    assert f"0x{cmd:02X}" in str(error) and "pile-t1" in str(error) and "0.3 s" in str(error)
    assert len(ports) == 10


def test_control_disabled_sends_nothing() -> None:
    async def test(board, pile, clock):
        calls = [pile.start_port(1, 3), pile.stop_port(1), pile.set_max_power(300),
                 pile.request(0x26), pile.request(Cmd.START, h("01 00 00 00 03"))]
        errors = []
        for call in calls:
            with pytest.raises(ControlDisabled) as info:
                await call
            errors.append(str(info.value))
        await pile.read_ports()  # reads are allowed
        await pile.request(Cmd.READ_SETTINGS)
        await asyncio.sleep(0.05)
        return board, errors

    board, errors = on_board(test, control=False)
    assert all("pile-t1" in e and "control is not enabled" in e for e in errors)
    assert "start port 1" in errors[0] and "0x26" in errors[3]
    assert [f.cmd for f in board.received] == [0x01, 0x0C]
    assert isinstance(ControlDisabled("x"), DriverError)


def test_injected_faults() -> None:
    async def test(board, pile, clock):
        board.set_fault("bad_sum", count=1)
        with pytest.raises(DeviceTimeout) as bad_sum:
            await pile.total_consumption()
        board.set_fault("garbage", count=3)
        settings = await pile.read_settings()
        ports = await pile.read_ports()
        board.set_fault("silent")
        with pytest.raises(DeviceTimeout) as silent:
            await pile.read_ports()
        board.set_fault(None)
        return bad_sum.value, settings, ports, silent.value

    bad_sum, settings, ports, silent = on_board(test, timeout_s=0.3)
    assert "bad SUM" in str(bad_sum) and "computed 0x0B, received 0xF4" in str(bad_sum)
    assert settings.max_power_w == 500 and len(ports) == 10
    assert "0x01 (all-port status)" in str(silent)


def test_busy_port_start_is_rejected() -> None:
    async def test(board, pile, clock):
        await pile.start_port(6, 30)
        with pytest.raises(CommandRejected, match="start port 6 for 5 min rejected"):
            await pile.start_port(6, 5)
        with pytest.raises(ValueError):
            await pile.start_port(6, 0)

    on_board(test)


def test_unopenable_serial_port_is_a_driver_error() -> None:
    async def main():
        pile = DianchuanPile("/dev/nonexistent-tty", device="pile-x", clock=SimClock(START))
        with pytest.raises(DriverError, match="pile-x .*cannot open serial port"):
            await pile.read_ports()

    asyncio.run(main())


class _TcpToSerial:
    """A transparent RS-485 gateway: one TCP client on loopback, its bytes relayed both ways
    to a serial port (here the board's pty), in a thread."""

    def __init__(self, serial_path: str) -> None:
        import socket
        import threading

        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        self._tty = os.open(serial_path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self._tty)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._srv.settimeout(0.1)
        conn = None
        while not self._stop.is_set():
            if conn is None:
                try:
                    conn, _ = self._srv.accept()
                except OSError:
                    continue
            ready, _, _ = select.select([conn, self._tty], [], [], 0.05)
            if conn in ready:
                data = conn.recv(4096)
                if not data:
                    conn.close()
                    conn = None
                    continue
                os.write(self._tty, data)
            if self._tty in ready:
                data = os.read(self._tty, 4096)
                if conn is not None:
                    conn.sendall(data)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._srv.close()
        os.close(self._tty)


def test_board_behind_a_tcp_to_rs485_gateway() -> None:
    """The pile reached as ``socket://host:port`` (a bus with ``rtu_tcp``): the same frames
    through a transparent gateway; a gateway that refuses is named as a connection error."""
    clock = SimClock(START, speed=SPEED)

    async def main():
        with DianchuanBoard(clock=clock, resend_s=0.2) as board:
            relay = _TcpToSerial(board.path)
            try:
                async with DianchuanPile(f"socket://127.0.0.1:{relay.port}", device="pile-gw", clock=clock,
                                         timeout_s=1.0) as pile:
                    return (await pile.read_settings()).max_power_w, len(await pile.read_ports())
            finally:
                relay.close()

    assert asyncio.run(main()) == (500, 10)

    async def refused():
        pile = DianchuanPile("socket://127.0.0.1:1", device="pile-gw", clock=clock, timeout_s=0.3)
        with pytest.raises(DriverError, match="pile-gw .*cannot connect to socket://127.0.0.1:1"):
            await pile.read_ports()

    asyncio.run(refused())


def test_reports_with_sop_66_are_taken_and_echoed_acks_ignored() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    report = Frame(0x66, Cmd.CHARGE_FINISHED, b"\x00\x00\x00\x00\x00\x09", h("02 00 00 02"))
    echoed_ack = acknowledge(Frame.command(0x05, h("02 00 00 02"), bytes(6)))  # 66 05 ... 01

    async def main():
        async with DianchuanPile(os.ttyname(slave), device="pile-raw", clock=SimClock(START)) as pile:
            assert await pile.poll_reports() == []  # opens the port (which flushes its input)
            os.write(master, echoed_ack.encode() + report.encode() + report.encode())
            await asyncio.sleep(0.05)
            return await pile.poll_reports(wait_s=0.5)

    try:
        sessions = asyncio.run(main())
        written = b""
        while select.select([master], [], [], 0.2)[0]:
            written += os.read(master, 4096)
    finally:
        os.close(master)
        os.close(slave)
    assert [(s.port, s.start, s.end_reason) for s in sessions] == [(2, None, EndReason.FULL)]
    assert written == acknowledge(report).encode() * 2  # each copy acknowledged, no ack of the echo


def test_board_gone_mid_run_is_a_driver_error_naming_the_port():
    """The RS-485 adapter unplugged (here: the board's pty closed under an open pile):
    a DriverError naming the port, and the next read tries to open it again."""
    clock = SimClock(START, speed=SPEED)
    board = DianchuanBoard(clock=clock).start()
    path = board.path

    async def main():
        pile = DianchuanPile(path, device="pile-t1", clock=clock, timeout_s=1.0)
        try:
            before = await pile.read_ports()
            board.stop()
            errors = []
            for _ in range(2):
                try:
                    await pile.read_ports()
                except Exception as exc:  # noqa: BLE001 - what comes out is the point
                    errors.append(exc)
            return before, errors
        finally:
            await pile.close()

    before, errors = asyncio.run(main())
    assert [r.state for r in before] == [PortState.IDLE] * 10
    assert [type(e) for e in errors] == [DriverError, DriverError]
    assert str(errors[0]).startswith(f"pile-t1 ({path}): serial ")
    assert str(errors[1]).startswith(f"pile-t1 ({path}): cannot open serial port {path} (")
